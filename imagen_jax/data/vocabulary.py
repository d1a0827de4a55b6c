"""A word-piece vocabulary of a task world, for the small text encoder.

The CPU world's instructions average about 90 bytes; as bytes, the 2-layer
text encoder trained with the UNet has to compose every word from its letters
and the longest instruction (156 bytes) needs 157 positions. A sentencepiece
model trained on the world's training texts (instructions and their plain
forms, seen phrasings only) turns the same text into about 16 pieces, most of
them whole words; `byte_fallback` spells anything else (an unseen phrasing's
new word) as bytes, so no text is unknown. The `[ref#k]` markers are left out:
the tokenizer adds them as pieces of their own (`tokenizers.MARKERS`).

    python -m launch.build_data --dataset vocabulary --variant simple \
        --data_dir data/vocab
"""

from __future__ import annotations

import os
import re

from imagen_jax.data import tasks

# Examples of every training task read per text form (instruction, plain).
EXAMPLES_PER_TASK = 400
# Pieces of the model: 256 byte-fallback pieces, pad/eos/unk and the words.
VOCAB_SIZE = 512
_MARKER = re.compile(r"\[ref#\d+\]")


def world_texts(
    world: str, per_task: int = EXAMPLES_PER_TASK, seed: int = 0
) -> list[str]:
    """The training texts of `world`'s training tasks, markers removed: each
    task's first `per_task` examples of `seed` as instructions and as plain
    texts. Zero-shot tasks and unseen phrasings are not read."""
    texts = []
    for name in tasks.TRAIN_TASKS:
        for plain in (False, True):
            for index in range(per_task):
                example = tasks.make_example(
                    name, index, seed, world=world, plain=plain
                )
                text = " ".join(_MARKER.sub(" ", example.instruction.text).split())
                if text:
                    texts.append(text)
    return texts


def path_for(data_dir: str, world: str) -> str:
    """Where `build` writes the vocabulary of `world` under `data_dir`."""
    return os.path.join(data_dir, f"shapes_{world}.model")


def build(
    data_dir: str,
    world: str,
    vocab_size: int = VOCAB_SIZE,
    per_task: int = EXAMPLES_PER_TASK,
) -> str:
    """Trains the world's sentencepiece model (T5 ids: pad 0, eos 1, unk 2) on
    `world_texts(world, per_task)`; returns its path. Deterministic: one
    thread, the same texts every time."""
    import sentencepiece  # Optional dependency, only needed here.

    os.makedirs(data_dir, exist_ok=True)
    path = path_for(data_dir, world)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(world_texts(world, per_task)),
        model_prefix=path.removesuffix(".model"),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return path


_WORD = re.compile(r"[A-Za-z]+")
_FIELD_OR_MARKER = re.compile(r"\{[^{}]*\}|\[ref#\d+\]")


def unread_words(
    world: str, per_task: int = EXAMPLES_PER_TASK
) -> dict[tuple[str, str], list[str]]:
    """(task, unseen template) -> the template's words that no training text of
    `world` has (`world_texts`), lower-cased; fields and markers left out.

    A text encoder trained from nothing has never seen these words (docs/
    results.md, session 23: all but two of the pairs have some).
    """
    known = {w.lower() for t in world_texts(world, per_task) for w in _WORD.findall(t)}
    out = {}
    for name in tasks.TASKS:
        for template in tasks.get_task(name).unseen_templates:
            words = _WORD.findall(_FIELD_OR_MARKER.sub(" ", template))
            out[name, template] = sorted({w.lower() for w in words} - known)
    return out


if __name__ == "__main__":  # python -m imagen_jax.data.vocabulary
    pairs = unread_words("simple")
    for (name, template), words in pairs.items():
        print(f"{name:18s} {', '.join(words) or '-':36s} {template}")
    unread = sum(map(bool, pairs.values()))
    print(f"{unread} of {len(pairs)} (task, unseen template) pairs have a new word")
