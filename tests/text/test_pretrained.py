"""A Hugging Face T5 directory as the frozen text encoder of a training run."""

import json
import os
import pathlib
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from experiments import t2i_shapes
from imagen_jax import inference, optim, train, train_state
from imagen_jax.models.imagen import build_model
from imagen_jax.text import pretrained, t5_import
from imagen_jax.text.tokenizers import make_tokenizer
from tests.text.conftest import HF_FIELDS


def test_library_never_imports_the_test_only_packages():
    package = pathlib.Path(train.__file__).parent
    pattern = re.compile(r"^\s*(import|from)\s+(torch|transformers|safetensors)\b")
    offenders = [
        f"{path.relative_to(package)}:{n}"
        for path in sorted(package.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.match(line)
    ]
    assert not offenders


def _config(smoke_world, hf_dir, steps=3):
    cfg = t2i_shapes.get_config("smoke")
    cfg.data.data_dir = smoke_world
    cfg.mesh.shape = (2, 2, 2)
    cfg.train.num_steps = steps
    cfg.train.checkpoint_every = steps
    cfg.text.pretrained = hf_dir
    return cfg


def test_resolve_fills_the_text_section(hf_dir):
    cfg = t2i_shapes.get_config("smoke")
    assert pretrained.resolve(cfg) is cfg  # no pretrained encoder: unchanged
    cfg.text.pretrained = hf_dir
    text = pretrained.resolve(cfg).text
    assert {k: text[k] for k in HF_FIELDS} == HF_FIELDS
    assert text.feed_forward_proj == "gated-gelu" and text.frozen
    assert text.tokenizer == "sentencepiece"
    assert text.vocab_path == os.path.join(hf_dir, "spiece.model")


def test_missing_spiece_model_is_one_line(hf_dir, tmp_path):
    copy = shutil.copytree(hf_dir, tmp_path / "copy")
    os.remove(copy / "spiece.model")
    cfg = t2i_shapes.get_config("smoke")
    cfg.text.pretrained = str(copy)
    with pytest.raises(FileNotFoundError, match=r"copy has no spiece.model \(the"):
        train.train_and_evaluate(cfg, str(tmp_path / "run"))


def test_tokenizer_beyond_the_embedding_table_is_named(hf_dir):
    cfg = pretrained.resolve(_config("unused", hf_dir))
    cfg.text.vocab_size = 40  # fewer rows than the pieces and markers
    tokenizer = make_tokenizer(cfg)
    with pytest.raises(ValueError, match=f"tokenizer has {tokenizer.vocab_size} ids"):
        build_model(cfg, tokenizer.vocab_size)


def _init_params(cfg):
    """The params training starts from before the pretrained encoder is loaded."""
    cfg = pretrained.resolve(cfg)
    model = build_model(cfg, make_tokenizer(cfg).vocab_size)
    return jax.jit(lambda: nn.unbox(train_state.init_params(model, cfg)))()


def test_training_keeps_the_pretrained_encoder_frozen(smoke_world, hf_dir, tmp_path):
    cfg = _config(smoke_world, hf_dir)
    workdir = str(tmp_path / "run")
    state = train.train_and_evaluate(cfg, workdir)
    assert int(state.step) == 3

    _, want = t5_import.load_hf_t5_encoder(hf_dir)
    init = _init_params(cfg)
    # The loaded encoder is not the random init (else "unchanged" says nothing).
    assert not np.allclose(
        init["text_encoder"]["token_embedder"]["embedding"],
        want["token_embedder"]["embedding"],
    )
    for tree in (state.params, state.ema_params):
        jax.tree.map(np.testing.assert_array_equal, tree["text_encoder"], want)
    changed = jax.tree.leaves(
        jax.tree.map(
            lambda a, b: not np.array_equal(a, b), state.params["unet"], init["unet"]
        )
    )
    # The LR is 0 at step 1 and a zero-initialised layer passes gradients on
    # only once it has moved, so after 3 steps the layers nearest the
    # UNet's output have moved (52 of 178 arrays), not all of them.
    assert sum(changed) > len(changed) // 4, f"{sum(changed)} of {len(changed)}"
    # No optimizer state for the encoder: Adam's moments cover the UNet only.
    mu = optax.tree_utils.tree_get(state.opt_state, "mu")
    assert jax.tree.leaves(mu["text_encoder"]) == []  # MaskedNodes only
    assert jax.tree.structure(mu["unet"]) == jax.tree.structure(init["unet"])

    # The run's config.json describes the network: a fresh process rebuilds
    # it, with the T5's tokenizer, without reading the T5's weights again.
    with open(os.path.join(workdir, "config.json")) as f:
        text = json.load(f)["text"]
    assert text["vocab_size"] == 128 and text["tokenizer"] == "sentencepiece"
    loaded = inference.load(workdir)
    assert loaded.tokenizer.model_path == os.path.join(hf_dir, "spiece.model")
    jax.tree.map(np.testing.assert_array_equal, loaded.params["text_encoder"], want)
    ids, _ = loaded.tokenizer.encode_batch(["a red circle at the top left"], 16)
    assert 2 not in ids[0]  # no unknown pieces: the T5's own sentencepiece model


@pytest.mark.parametrize("frozen", [False, True])
def test_frozen_leaves_are_the_text_encoder_when_frozen(frozen):
    cfg = t2i_shapes.get_config("smoke")
    cfg.text.frozen = frozen
    params = {"text_encoder": {"a": np.zeros(2)}, "unet": {"b": np.zeros(3)}}
    flags = optim.frozen_leaves(cfg, params)
    assert flags == {"text_encoder": {"a": frozen}, "unet": {"b": False}}
