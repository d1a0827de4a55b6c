"""Tests for the byte-level and sentencepiece tokenizers."""

import numpy as np
import pytest

from imagen_jax.text import tokenizers

REFS = [f"[ref#{k}]" for k in range(1, 9)]
SENTENCES = [
    "Generate an image of a zorblat sitting at the top left.",
    "a glim in the style of dotted pastel",
    "the quick brown fox jumps over the lazy dog",
    "show red if there is a cat, otherwise show blue",
    "edit the image: make the red circle blue",
    "a large green square behind a small yellow triangle",
]


def test_byte_round_trip_ascii_and_unicode():
    tok = tokenizers.ByteTokenizer()
    for text in ["hello world", "", "héllo — 東京 🐱"]:
        ids = tok.encode(text)
        assert len(ids) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_byte_ids_follow_byt5_convention():
    tok = tokenizers.ByteTokenizer()
    assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 1, 259)
    assert tok.encode("A") == [ord("A") + 3]
    assert min(tok.encode("\x00\xff")) >= 3


def test_byte_extra_tokens_map_to_single_ids():
    tok = tokenizers.ByteTokenizer(extra_tokens=REFS)
    assert tok.vocab_size == 259 + 8
    text = "Put [ref#1] left of [ref#8], like [ref#1]."
    ids = tok.encode(text)
    ref1, ref8 = tok.extra_token_id("[ref#1]"), tok.extra_token_id("[ref#8]")
    assert (ref1, ref8) == (259, 266)
    assert ids.count(ref1) == 2 and ids.count(ref8) == 1
    assert len(ids) == len(text.encode()) - 3 * (len("[ref#1]") - 1)
    assert tok.decode(ids) == text


def test_longest_extra_token_wins():
    tok = tokenizers.ByteTokenizer(extra_tokens=["[a]", "[a]b"])
    assert tok.encode("[a]b[a]") == [
        tok.extra_token_id("[a]b"),
        tok.extra_token_id("[a]"),
    ]


@pytest.mark.parametrize("bad", [["x", "x"], [""], "[ref#1]", [3]])
def test_bad_extra_tokens_raise(bad):
    with pytest.raises(ValueError):
        tokenizers.ByteTokenizer(extra_tokens=bad)


def test_encode_batch_pads_and_ends_with_eos():
    tok = tokenizers.ByteTokenizer(extra_tokens=REFS)
    ids, mask = tok.encode_batch(["ab", "[ref#2]", ""], max_len=5)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(
        ids,
        [
            [ord("a") + 3, ord("b") + 3, 1, 0, 0],
            [tok.extra_token_id("[ref#2]"), 1, 0, 0, 0],
            [1, 0, 0, 0, 0],
        ],
    )
    np.testing.assert_array_equal(mask, ids != 0)


def test_encode_batch_truncates_keeping_eos():
    tok = tokenizers.ByteTokenizer()
    ids, mask = tok.encode_batch(["abcdefgh"], max_len=4)
    np.testing.assert_array_equal(ids[0], [ord(c) + 3 for c in "abc"] + [1])
    assert mask.all()
    assert tok.decode(ids[0]) == "abc"


def test_encode_batch_rejects_bad_max_len():
    with pytest.raises(ValueError, match="max_len"):
        tokenizers.ByteTokenizer().encode_batch(["a"], max_len=0)


def test_decode_stops_at_eos_and_skips_padding():
    tok = tokenizers.ByteTokenizer()
    ids = [0, ord("h") + 3, 0, ord("i") + 3, 1, ord("x") + 3]
    assert tok.decode(ids) == "hi"
    with pytest.raises(ValueError, match="259"):
        tok.decode([259])


def test_get_tokenizer_registry():
    tok = tokenizers.get_tokenizer("byte", extra_tokens=REFS[:2])
    assert isinstance(tok, tokenizers.ByteTokenizer) and tok.vocab_size == 261
    with pytest.raises(ValueError, match="byte.*sentencepiece"):
        tokenizers.get_tokenizer("wordpiece")


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    spm = pytest.importorskip(
        "sentencepiece", reason="sentencepiece is not installed (see requirements.txt)"
    )
    prefix = tmp_path_factory.mktemp("spm") / "tiny"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4),
        model_prefix=str(prefix),
        vocab_size=50,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return str(prefix) + ".model"


def test_sentencepiece_round_trip_and_conventions(spm_path):
    tok = tokenizers.get_tokenizer("sentencepiece", model_path=spm_path)
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    for text in SENTENCES[:3]:
        ids = tok.encode(text)
        assert ids and all(2 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    ids, mask = tok.encode_batch(SENTENCES[:2], max_len=64)
    assert ids.shape == (2, 64)
    assert [tok.decode(row) for row in ids] == SENTENCES[:2]
    np.testing.assert_array_equal(mask, ids != 0)
    assert (ids[np.arange(2), mask.sum(1) - 1] == 1).all()


def test_sentencepiece_extra_tokens(spm_path):
    base = tokenizers.SentencePieceTokenizer(spm_path)
    tok = tokenizers.SentencePieceTokenizer(spm_path, extra_tokens=REFS)
    assert tok.vocab_size == base.vocab_size + 8
    assert tok.extra_token_id("[ref#1]") == base.vocab_size
    text = "Generate an image of [ref#1] sitting, in the style of [ref#2]."
    ids = tok.encode(text)
    assert ids.count(tok.extra_token_id("[ref#1]")) == 1
    assert ids.count(tok.extra_token_id("[ref#2]")) == 1
    assert tok.decode(ids) == text


def test_sentencepiece_rejects_clashing_extra_token(spm_path):
    with pytest.raises(ValueError, match="already pieces"):
        tokenizers.SentencePieceTokenizer(spm_path, extra_tokens=["<unk>"])
