"""grain input pipeline: a random-access source -> fixed-shape numpy batches.

Each host reads its own slice of the source; the trainer assembles the global
batch with `jax.make_array_from_process_local_data`. Batches hold no Python
objects: `image [B,H,W,3] uint8`, `text_tokens [B,L] int32`,
`text_mask [B,L] bool`; instruction datasets add `ctx_images [B,K,H,W,3]`,
`ctx_tokens [B,K,Lc]`, `ctx_text_mask [B,K,Lc]`, `ctx_mask [B,K]`,
`cond_image [B,H,W,3]` and `cond_image_mask [B]`. With
`config.text.precomputed` (captions encoded once by a frozen T5,
`data.text_cache`) text-to-image batches add `text_embeddings [B,L,D]`
(float16 or bfloat16, as stored), joined by record index.

Your own image-text data (`own_data`: a folder or a tfds dataset, built by
`launch.build_data`, `data.tfds.own_data`) gives records as ShapesWorld does.

Stage 1 (`shapes_world_retrieval`) joins each example with its neighbours
from a neighbour table mined beforehand (`retrieval.mining`): no index lookup
happens while training.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from imagen_jax.data import shapes_world, text_cache
from imagen_jax.data.tasks import TaskExample
from imagen_jax.retrieval import mining
from imagen_jax.text.tokenizers import Tokenizer


def _shapes_world_source(cfg: ml_collections.ConfigDict, split: str):
    # Imported here: tfds pulls in TensorFlow, which only data loading needs.
    from imagen_jax.data.tfds import shapes_world as shapes_world_tfds

    return shapes_world_tfds.load_source(
        cfg.data_dir, split, resolution=cfg.resolution, variant=cfg.variant
    )


def _own_data_source(cfg: ml_collections.ConfigDict, split: str):
    """Dataset `cfg.dataset` built by `launch.build_data --dataset folder|tfds`."""
    from imagen_jax.data.tfds import own_data

    return own_data.load_source(
        cfg.data_dir, cfg.get("dataset", ""), split, resolution=cfg.resolution
    )


class TaskSource:
    """Random access to the ShapesWorld task mixture (procedural, no files).

    Example `i` draws its task from the mixture with a seed of its own, so the
    stream is deterministic and any host can read any index.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, split: str):
        from imagen_jax.data import tasks

        self._tasks = tasks
        weights = dict(cfg.mixture) if cfg.get("mixture") else dict(tasks.MIXTURE)
        unknown = sorted(set(weights) - set(tasks.TASKS))
        if unknown:
            raise ValueError(
                f"config.data.mixture names unknown tasks {unknown}; "
                f"known: {sorted(tasks.TASKS)}"
            )
        # A zero-shot combination trained beside other tasks would still be
        # scored and averaged as zero-shot; alone it is an oracle probe.
        held_out = sorted(n for n in weights if tasks.TASKS[n].zero_shot)
        if split == "train" and held_out and len(held_out) < len(weights):
            raise ValueError(
                f"config.data.mixture trains the zero-shot combinations {held_out} "
                "beside other tasks, so their scores would not be zero-shot; leave "
                "them out, or train them alone (an oracle, option task=NAME)"
            )
        self._names = sorted(weights)
        # A named task the mixture leaves out has no examples to move (a
        # specialist of another task keeps the recipe's fields).
        for field in (
            "low_snr_tasks",
            "object_weight_tasks",
            "background_weight_tasks",
        ):
            unknown = sorted(set(cfg.get(field, ())) - set(tasks.TASKS))
            if unknown:
                raise ValueError(
                    f"config.data.{field} names unknown tasks {unknown}; "
                    f"known: {sorted(tasks.TASKS)}"
                )
        p = np.array([weights[n] for n in self._names], np.float64)
        self._p = p / p.sum()
        self._seed = cfg.seed + (0 if split == "train" else 1)
        self._resolution = cfg.resolution
        tasks.get_world(cfg.variant, cfg.resolution)  # fail early on a bad name
        self._world = cfg.variant
        self._plain = bool(cfg.get("plain_text", False))
        self._plain_items = bool(cfg.get("plain_items", False))
        self._word_noise = (
            float(cfg.get("word_noise", 0.0)) if split == "train" else 0.0
        )
        if not 0.0 <= self._word_noise < 1.0:
            raise ValueError(
                f"config.data.word_noise must be in [0, 1), got {self._word_noise}"
            )
        self._query_objects = int(cfg.get("query_objects", 0))
        self._answers = self._tasks.answer_names(cfg.get("answers", ""))
        self._size = cfg.num_examples

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self._seed, int(index)))
        name = self._names[rng.choice(len(self._names), p=self._p)]
        return self._tasks.make_example(
            name,
            int(index),
            self._seed,
            self._resolution,
            world=self._world,
            plain=self._plain,
            plain_items=self._plain_items,
            word_noise=self._word_noise,
            query_objects=self._query_objects,
            answers=self._answers,
        )


class RetrievalSource:
    """Stage 1: records of a split with their mined neighbours as context.

    Example i is record i of `examples`; its instruction is the caption with
    the database records of row i of the neighbour table as context items
    (`mining.neighbour_instruction`: all under one marker, best first, at most
    `max_context`). A row without neighbours gives the caption alone.

    Renaming (`rename` > 0): in a world of a few dozen names every name is
    seen often enough to be drawn from the text alone, so the neighbours
    teach nothing; the web's long tail, which makes the paper's stage 1 work,
    is missing. With probability `rename` an example's subject name (its
    record's "name") is replaced, in its caption and its neighbours'
    captions, by a made-up word (`new_name`), so the identity can come only
    from the context images - as with a retrieval-only name at inference.
    The choice and the word depend on (`seed`, index) alone.

    Redrawing (`redraw` > 0): with that probability a renamed example's
    subject also gets a fresh appearance in the target and every neighbour
    (`redraw_subject`: (rng, scene JSONs) -> (scene JSONs, images)), so that
    what the made-up name looks like - fill included - is read from the
    references, not recalled from the training identities.
    """

    def __init__(
        self,
        examples: Sequence[dict],
        database: Sequence[dict],
        table: np.ndarray,
        max_context: int,
        *,
        rename: float = 0.0,
        new_name: Callable[[np.random.Generator], str] | None = None,
        seed: int = 0,
        redraw: float = 0.0,
        redraw_subject: Callable[
            [np.random.Generator, Sequence[str]], tuple[list[str], list[np.ndarray]]
        ]
        | None = None,
    ):
        """Records are dicts with "image" (uint8 [R, R, 3]), "caption" and
        "scene" (str or bytes), and "name" (the subject's, may be empty) when
        `rename` > 0; `table` is int [len(examples), C], -1 padded, indexing
        `database`."""
        if table.ndim != 2 or len(table) != len(examples):
            raise ValueError(
                f"the neighbour table has shape {table.shape}; expected "
                f"[{len(examples)}, num_context], one row per example"
            )
        if max_context < 1:
            raise ValueError(f"max_context must be >= 1, got {max_context}")
        self._examples, self._database = examples, database
        self._table, self._max_context = table, max_context
        if not 0.0 <= rename <= 1.0:
            raise ValueError(f"rename must be in [0, 1], got {rename}")
        if rename and new_name is None:
            raise ValueError("rename > 0 needs new_name, a made-up word maker")
        self._rename, self._new_name, self._seed = rename, new_name, seed
        if not 0.0 <= redraw <= 1.0:
            raise ValueError(f"redraw must be in [0, 1], got {redraw}")
        if redraw and redraw_subject is None:
            raise ValueError("redraw > 0 needs redraw_subject, a scene redrawer")
        self._redraw, self._redraw_subject = redraw, redraw_subject

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> TaskExample:
        record = self._examples[int(index)]
        ids = [int(j) for j in self._table[int(index)] if j >= 0]
        ids = ids[: self._max_context]
        found = [self._database[j] for j in ids]
        caption = mining.as_text(record["caption"])
        captions = [mining.as_text(r["caption"]) for r in found]
        meta = {"scene": mining.as_text(record["scene"]), "neighbours": ids}
        image, images = record["image"], [r["image"] for r in found]
        name = mining.as_text(record.get("name", b"")) if self._rename else ""
        rng = np.random.default_rng((self._seed, int(index)))
        if name and rng.random() < self._rename:
            new = self._new_name(rng)
            word = re.compile(rf"\b{re.escape(name)}\b")
            caption = word.sub(new, caption)
            captions = [word.sub(new, c) for c in captions]
            meta["renamed"] = (name, new)
            if self._redraw and rng.random() < self._redraw:
                scenes = [meta["scene"]] + [mining.as_text(r["scene"]) for r in found]
                scenes, rendered = self._redraw_subject(rng, scenes)
                meta["scene"], image, images = scenes[0], rendered[0], rendered[1:]
        neighbours = list(zip(images, captions))
        instruction = mining.neighbour_instruction(caption, neighbours)
        return TaskExample("retrieval", instruction, np.asarray(image, np.uint8), meta)


def _shapes_world_retrieval_source(
    cfg: ml_collections.ConfigDict, split: str
) -> RetrievalSource:
    """The retrieval world's `split`, its neighbour table and the database.

    The table is `cfg.neighbours_dir`/<split>.npy, or beside the dataset
    (`mining.neighbours_dir`) when that field is empty.
    """
    from imagen_jax.data.tfds import shapes_world as shapes_world_tfds

    variant = shapes_world_tfds.retrieval_variant(cfg.variant)
    examples = shapes_world_tfds.load_source(
        cfg.data_dir, split, resolution=cfg.resolution, variant=variant
    )
    database = shapes_world_tfds.load_source(
        cfg.data_dir, "database", resolution=cfg.resolution, variant=variant
    )
    directory = cfg.get("neighbours_dir") or mining.neighbours_dir(
        shapes_world_tfds.dataset_dir(cfg.data_dir, cfg.resolution, variant)
    )
    table, _ = mining.load_table(
        directory, split, num_rows=len(examples), num_database=len(database)
    )
    return RetrievalSource(
        examples,
        database,
        table,
        cfg.max_context,
        rename=cfg.get("rename", 0.0) if split == "train" else 0.0,
        new_name=shapes_world.unused_name,
        seed=cfg.get("rename_seed", 0),
        redraw=cfg.get("redraw", 0.0) if split == "train" else 0.0,
        redraw_subject=functools.partial(
            shapes_world.redraw_subject, resolution=cfg.resolution
        ),
    )


@dataclasses.dataclass(frozen=True)
class _Source:
    """A dataset the pipeline reads.

    Attributes:
      make: (data config, split) -> random-access source.
      instructions: its elements are `tasks.TaskExample`s (-> the
        `InstructionArrays` transform), else records with "image" and
        "caption" (-> `Tokenize`).
    """

    make: Callable
    instructions: bool


_SOURCES: dict[str, _Source] = {
    "shapes_world": _Source(_shapes_world_source, instructions=False),
    "own_data": _Source(_own_data_source, instructions=False),
    "shapes_world_tasks": _Source(TaskSource, instructions=True),
    "shapes_world_retrieval": _Source(
        _shapes_world_retrieval_source, instructions=True
    ),
}


def _lookup(name: str) -> _Source:
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(_SOURCES)}")
    return _SOURCES[name]


def source_names() -> tuple[str, ...]:
    """The datasets `config.data.name` may name."""
    return tuple(sorted(_SOURCES))


def get_source(data_config: ml_collections.ConfigDict, split: str):
    """The random-access source named by `data_config.name`."""
    return _lookup(data_config.name).make(data_config, split)


def fixed_caption_sources() -> tuple[str, ...]:
    """The datasets whose records carry a caption fixed per record, the whole
    text the model reads, so a frozen encoder's output can be stored
    (`text.precompute`, read by `cached_text`); instruction datasets make
    their text on the fly."""
    return tuple(sorted(n for n, s in _SOURCES.items() if not s.instructions))


def check_cacheable(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError unless the config's text embeddings can be stored."""
    if not config.text.get("pretrained"):
        raise ValueError(
            "config.text.pretrained is empty: a text encoder trained with the "
            "UNet changes at every step, so its embeddings cannot be stored; "
            "only a frozen pretrained T5 (--config.text.pretrained=DIR) can be"
        )
    fixed = fixed_caption_sources()
    if config.data.name not in fixed:
        raise ValueError(
            f"config.data.name={config.data.name!r} makes its text on the fly "
            "(instruction templates, renamed subjects), so no caption is fixed "
            f"per record to encode once; stored text embeddings need one of {fixed}"
        )


def _text_of(element) -> str:
    """The text the model reads of a source element (an instruction's or a
    record's caption)."""
    if isinstance(element, TaskExample):
        return element.instruction.text
    return mining.as_text(element["caption"])


def cut_texts(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, sample: int = 256
) -> tuple[int, int, int]:
    """How many of the first `sample` training texts `data.max_text_len` cuts:
    (cut, read, longest), lengths in tokens with the EOS. The tokenizer keeps
    the first `max_text_len - 1` tokens of a text without a word of warning,
    so a length set for one tokenizer or world can silently cut through an
    instruction's `[ref#k]` marker under another."""
    source = get_source(config.data, "train")
    read = min(sample, len(source))
    lengths = [len(tokenizer.encode(_text_of(source[i]))) + 1 for i in range(read)]
    limit = config.data.max_text_len
    return sum(n > limit for n in lengths), read, max(lengths, default=0)


def cached_text(
    source: Any, config: ml_collections.ConfigDict, split: str, tokenizer: Tokenizer
) -> text_cache.CachedText:
    """`source` (`split` of `config.data`) joined with the stored embeddings of
    `config.text.precomputed`; raises as `check_cacheable` and
    `text_cache.open_cache`."""
    check_cacheable(config)
    cache = text_cache.open_cache(config.text.precomputed, config, split, len(source))
    length = config.data.max_text_len
    return text_cache.CachedText(
        source, cache, lambda r: tokenize_captions(tokenizer, [r], length)[0][0]
    )


def tokenize_captions(
    tokenizer: Tokenizer, records: Sequence[dict], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens int32 [N, max_len] and mask bool [N, max_len] of the records'
    captions: how the pipeline tokenizes every caption it reads."""
    captions = [mining.as_text(r["caption"]) for r in records]
    return tokenizer.encode_batch(captions, max_len)


class Tokenize(grain.transforms.Map):
    """Keeps the image as uint8 and turns the caption into padded tokens
    (stored text embeddings, when the source joined them, pass through)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int, resolution: int):
        self._tokenizer = tokenizer
        self._max_len = max_len
        self._resolution = resolution

    def map(self, element: dict) -> dict:
        image = np.asarray(element["image"], np.uint8)
        if image.shape != (self._resolution, self._resolution, 3):
            raise ValueError(
                f"dataset image has shape {image.shape}; the config expects "
                f"({self._resolution}, {self._resolution}, 3)"
            )
        ids, mask = tokenize_captions(self._tokenizer, [element], self._max_len)
        out = {"image": image, "text_tokens": ids[0], "text_mask": mask[0]}
        if "text_embeddings" in element:
            out["text_embeddings"] = element["text_embeddings"]
        return out


class InstructionArrays(grain.transforms.Map):
    """A TaskExample -> fixed-shape arrays (DESIGN §3); the target is `image`."""

    def __init__(self, tokenizer: Tokenizer, d: ml_collections.ConfigDict):
        self._tokenizer, self._d = tokenizer, d

    def map(self, example) -> dict:
        from imagen_jax import instructions

        d = self._d
        arrays = instructions.to_arrays(
            example.instruction,
            self._tokenizer,
            max_context=d.max_context,
            text_len=d.max_text_len,
            ctx_text_len=d.ctx_text_len,
            resolution=d.resolution,
        )
        out = {"image": np.asarray(example.target, np.uint8), **arrays}
        if d.get("object_weight", 0.0):
            weighted = d.get("object_weight_tasks", ())
            if not weighted or example.task in weighted:
                mask = target_position_mask(example, d.resolution)
                if example.task in d.get("background_weight_tasks", ()):
                    mask = 1 - mask  # what the reference decides: the background
                out["position_mask"] = mask
            else:  # every pixel weighs alike (data.object_weight_tasks)
                out["position_mask"] = np.zeros((d.resolution,) * 2, np.uint8)
        if d.get("low_snr_tasks"):  # the examples diffusion.low_snr_share moves
            out["low_snr"] = np.uint8(example.task in d.low_snr_tasks)
        return out


def target_position_mask(example, resolution: int) -> np.ndarray:
    """uint8 [R, R]: 1 in the boxes at the positions of the example's objects.

    The scene is `meta["scene"]` (a `shapes_world.Scene` or its JSON), the
    target's for generation tasks and stage 1, the input's for vision tasks.
    The boxes are a large object's at each position (`position_mask`), so the
    weight follows where the text puts the objects, not what is drawn there:
    a weight read from the target's own pixels would reward drawing objects
    everywhere (an extra or swollen object costs background weight only).
    """
    scene = example.meta.get("scene")
    if scene is None:
        raise ValueError(
            f"data.object_weight > 0 needs the scene of each target, and a "
            f"{example.task!r} example has none (meta['scene'])"
        )
    if not isinstance(scene, shapes_world.Scene):
        scene = shapes_world.Scene.from_json(scene)
    return shapes_world.position_mask(scene, resolution).astype(np.uint8)


def element_transform(d: ml_collections.ConfigDict, tokenizer: Tokenizer):
    """The per-element transform for the dataset named by `d.name`."""
    if _lookup(d.name).instructions:
        return InstructionArrays(tokenizer, d)
    if d.get("object_weight", 0.0):
        raise ValueError(
            f"data.object_weight needs the scenes of an instruction dataset; "
            f"{d.name!r} gives images and captions only"
        )
    return Tokenize(tokenizer, d.max_text_len, d.resolution)


def train_dataset(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Per-host batches of `batch_size // process_count`, the host's rows of
    the global batch.

    The global batches do not depend on the number of hosts: batch s is
    elements [s*B, (s+1)*B) of one shuffled, repeated stream, and host p
    reads rows [p*b, (p+1)*b) of it (b = B / process_count), the rows its
    devices hold. The iterator's state counts steps, so a checkpoint restores
    on any number of hosts and the run goes on with the same batches.
    """
    d = config.data
    if d.batch_size % process_count:
        raise ValueError(
            f"data.batch_size {d.batch_size} is not divisible by the "
            f"{process_count} processes"
        )
    source = get_source(d, "train")
    if config.text.get("precomputed"):
        source = cached_text(source, config, "train", tokenizer)
    ds = grain.MapDataset.source(source)
    ds = ds.seed(config.seed).shuffle().repeat()
    ds = ds.map(element_transform(d, tokenizer))
    # Chunk c is rows [c*b, (c+1)*b) of the stream; global batch s is chunks
    # s*P ... s*P + P-1, and host p reads chunk s*P + p.
    ds = ds.batch(d.batch_size // process_count, drop_remainder=True)
    ds = ds[process_index::process_count]
    options = grain.ReadOptions(
        num_threads=d.num_threads, prefetch_buffer_size=d.prefetch
    )
    return ds.to_iter_dataset(options)
