"""The task world's word-piece vocabulary (`data.vocabulary`) and the check
that says when `data.max_text_len` cuts training texts."""

import pytest
import sentencepiece

from experiments import stage2_shapes
from imagen_jax import train
from imagen_jax.data import pipeline, vocabulary
from imagen_jax.text import tokenizers


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """The simple world's vocabulary as the `words` option reads it."""
    data_dir = tmp_path_factory.mktemp("data")
    vocabulary.build(str(data_dir / "vocab"), "simple")
    return data_dir


def _words_config(data_dir):
    config = stage2_shapes.get_config("simple,words,mix=even")
    config.data.data_dir = str(data_dir)
    config.text.vocab_path = vocabulary.path_for(str(data_dir / "vocab"), "simple")
    return config


def test_build_is_deterministic_and_spells_new_words_in_bytes(tmp_path):
    first = vocabulary.build(str(tmp_path / "a"), "simple", per_task=30)
    second = vocabulary.build(str(tmp_path / "b"), "simple", per_task=30)
    pieces = []
    for path in (first, second):  # the files differ only in the path they hold
        sp = sentencepiece.SentencePieceProcessor(model_file=path)
        pieces.append([(sp.id_to_piece(i), sp.get_score(i)) for i in range(len(sp))])
    assert pieces[0] == pieces[1]
    tok = tokenizers.SentencePieceTokenizer(first, extra_tokens=("[ref#1]",))
    text = "Compose a xylophone beside [ref#1], très vite."
    ids = tok.encode(text)
    assert tokenizers.UNK_ID not in ids  # byte fallback: nothing is unknown
    assert ids.count(tok.extra_token_id("[ref#1]")) == 1
    assert tok.decode(ids) == text


def test_words_keep_every_training_text_whole_where_bytes_cut(vocab_dir):
    words = _words_config(vocab_dir)
    cut, read, longest = pipeline.cut_texts(
        words, tokenizers.make_tokenizer(words), sample=512
    )
    assert (cut, read) == (0, 512)
    assert longest <= words.data.max_text_len

    byte = stage2_shapes.get_config("simple,mix=even")
    cut, read, longest = pipeline.cut_texts(byte, tokenizers.make_tokenizer(byte))
    assert cut > 0 and longest > byte.data.max_text_len


def test_training_says_when_texts_are_cut(capsys):
    config = stage2_shapes.get_config("simple,smoke")
    config.data.max_text_len = 200  # past the longest instruction, 156 bytes
    train._warn_cut_texts(config, tokenizers.make_tokenizer(config))
    assert capsys.readouterr().out == ""
    config.data.max_text_len = 8
    train._warn_cut_texts(config, tokenizers.make_tokenizer(config))
    out = capsys.readouterr().out
    assert "data.max_text_len=8 cuts 256 of the first 256 training texts" in out


def test_a_missing_vocabulary_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="launch.build_data --dataset"):
        tokenizers.SentencePieceTokenizer(str(tmp_path / "none.model"))


def test_unread_words_are_those_of_unseen_templates_no_training_text_has():
    from imagen_jax.data import tasks

    unread = vocabulary.unread_words("simple", per_task=20)
    assert {name for name, _ in unread} == set(tasks.TASKS)
    isolate = "Isolate the {object}: white where it is, black elsewhere."
    # "white" and "black" are in training texts; the field is left out.
    assert unread["segmentation", isolate] == ["elsewhere", "isolate"]
    assert not any("object" in words for words in unread.values())
