"""Fixtures of the text tests: a tiny Hugging Face T5 directory made here."""

import pytest

# The tiny encoder's config.json fields; vocab_size covers the tokenizer's
# pieces plus the [ref#k] markers appended to them.
HF_FIELDS = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def _captions():
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
    shapes = ["circle", "square", "triangle", "star", "heart"]
    places = ["top left", "top right", "bottom left", "bottom right", "centre"]
    return [f"a {c} {s} at the {p}" for c in colours for s in shapes for p in places]


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A Flan-T5-like directory: a random seq2seq T5 saved by transformers in
    several safetensors shards, and a sentencepiece model trained here."""
    import sentencepiece

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("flan_t5_tiny")
    torch.manual_seed(0)
    config = transformers.T5Config(
        **HF_FIELDS,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(
        directory, max_shard_size="40KB"
    )
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 2
    # The T5 convention the tokenizer checks: pad 0, eos 1, unk 2, no bos.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_captions()),
        model_prefix=str(directory / "spiece"),
        vocab_size=60,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return str(directory)
