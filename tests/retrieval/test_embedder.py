"""Tests for the in-project CLIP-style retrieval embedder."""

import contextlib
import functools
import io
import json
import os
import re
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import checkpointing
from imagen_jax.data import shapes_world as sw
from imagen_jax.retrieval import embedder as emb

RESOLUTION = 16
EMBED_DIM = 24


def _tiny_config():
    cfg = emb.default_config()
    cfg.model.embed_dim = EMBED_DIM
    cfg.model.image_widths = (8, 16)
    cfg.model.text_width = 32
    cfg.model.text_layers = 1
    cfg.model.text_heads = 2
    cfg.model.text_patch = 4
    cfg.text.max_len = 32
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 3
    cfg.batch_size = 32
    cfg.steps = 30
    cfg.log_every = 5
    return cfg


def _easy_scene(rng):
    """One large solid object in the centre: 24 identities a tiny model can
    tell apart at 16 px within 30 steps."""
    shape = sw.SHAPES[rng.integers(len(sw.SHAPES))]
    colour = tuple(sw.COLOURS)[rng.integers(len(sw.COLOURS))]
    return sw.Scene((sw.Obj(shape, colour, "large", "center"),))


def _pairs(seed=0, **kwargs):
    return functools.partial(
        emb.shapes_world_pairs,
        seed=seed,
        resolution=RESOLUTION,
        caption="subject",
        sample_scene=_easy_scene,
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, params, losses logged every 5 steps), trained once."""
    workdir = str(tmp_path_factory.mktemp("embedder"))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        params = emb.train_embedder(_pairs(), _tiny_config(), workdir)
    losses = [float(x) for x in re.findall(r": loss ([0-9.]+)", log.getvalue())]
    return workdir, params, losses


@pytest.fixture(scope="module")
def loaded(trained):
    return emb.load_embedder(trained[0], batch_size=16)


def _held_out(n):
    images, captions = next(_pairs(seed=123)(n))
    return images, captions


def test_every_parameter_has_axis_names():
    model = emb.make_model(_tiny_config(), vocab_size=259)
    boxed = jax.eval_shape(lambda: emb.init_params(model, RESOLUTION, 0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim


def test_contrastive_loss_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(5, 4)) for _ in range(2))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    same = np.eye(5, dtype=bool)
    same[1, 3] = same[3, 1] = True  # pairs 1 and 3 share a caption
    scale = np.log(10.0)
    loss, _ = emb.contrastive_loss(jnp.asarray(a), jnp.asarray(b), scale, same)

    logits = np.exp(scale) * a @ b.T
    targets = same / same.sum(1, keepdims=True)

    def xent(x):
        log_p = x - np.log(np.exp(x).sum(1, keepdims=True))
        return -(targets * log_p).sum(1).mean()

    np.testing.assert_allclose(loss, (xent(logits) + xent(logits.T)) / 2, rtol=1e-5)


def test_embeddings_are_unit_rows_of_the_configured_dim(loaded):
    images, captions = _held_out(20)
    # Two uneven batches: regrouped into 16 + a padded 4.
    image_emb = loaded.embed_images([images[:7], images[7:]])
    text_emb = loaded.embed_texts(captions, batch_size=8)
    for x in (image_emb, text_emb):
        chex.assert_shape(x, (20, EMBED_DIM))
        assert x.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # Batching does not change the result.
    np.testing.assert_allclose(image_emb, loaded.embed_images(images), atol=1e-6)
    out = np.zeros((20, EMBED_DIM), np.float32)
    assert loaded.embed_images(images, out=out) is out
    np.testing.assert_allclose(out, image_emb, atol=1e-6)


def test_training_lowers_the_loss_and_retrieves_above_chance(trained, loaded):
    _, _, losses = trained
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    images, captions = _held_out(32)
    scores = loaded.embed_images(images) @ loaded.embed_texts(captions).T
    same = np.array([[a == b for b in captions] for a in captions])
    accuracy = same[np.arange(32), scores.argmax(1)].mean()
    chance = same.mean()  # a random caption is a right one this often
    assert accuracy > 3 * chance, (accuracy, chance)


def test_save_load_round_trip_is_exact(trained, loaded):
    workdir, params, _ = trained
    cfg = _tiny_config()
    tokenizer = emb.make_tokenizer(cfg)
    fresh = emb.Embedder(
        emb.make_model(cfg, tokenizer.vocab_size), params, tokenizer, RESOLUTION
    )
    images, captions = _held_out(8)
    np.testing.assert_array_equal(
        fresh.embed_images(images), loaded.embed_images(images)
    )
    np.testing.assert_array_equal(
        fresh.embed_texts(captions), loaded.embed_texts(captions)
    )
    with open(os.path.join(workdir, emb.SPEC_FILE)) as f:
        spec = json.load(f)
    assert spec["image_size"] == RESOLUTION and spec["trained"]["steps"] == 30


def test_wrong_image_size_is_refused(loaded):
    with pytest.raises(ValueError, match=r"uint8 image batches \[B, 16, 16, 3\]"):
        loaded.embed_images(np.zeros((2, 32, 32, 3), np.uint8))


def test_missing_or_corrupt_workdir_names_the_path(trained, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        emb.load_embedder(missing)

    bad_spec = str(tmp_path / "bad_spec")
    shutil.copytree(trained[0], bad_spec)
    with open(os.path.join(bad_spec, emb.SPEC_FILE), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="bad_spec.*not a valid embedder spec"):
        emb.load_embedder(bad_spec)

    old_spec = str(tmp_path / "old_spec")
    shutil.copytree(trained[0], old_spec)
    spec_path = os.path.join(old_spec, emb.SPEC_FILE)
    with open(spec_path) as f:
        spec = json.load(f)
    del spec["config"]["model"]["text_patch"]
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    with pytest.raises(ValueError, match=r"old_spec.*lacks \['model.text_patch'\]"):
        emb.load_embedder(old_spec)

    damaged = str(tmp_path / "damaged")
    shutil.copytree(trained[0], damaged)
    step_dir = os.path.join(damaged, "checkpoints", "30")
    victim = next(
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for name in names
    )
    with open(victim, "ab") as f:
        f.write(b"garbage")
    with pytest.raises(checkpointing.CheckpointError, match="damaged"):
        emb.load_embedder(damaged)


def test_training_into_an_occupied_workdir_is_refused(trained):
    with pytest.raises(ValueError, match="already holds an embedder"):
        emb.train_embedder(_pairs(), _tiny_config(), trained[0])


def test_precomputed_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(10, 6)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    path = str(tmp_path / "unit.npy")
    np.save(path, unit)
    pre = emb.PrecomputedEmbeddings(path)
    assert isinstance(pre.vectors, np.memmap) and pre.dim == 6 and len(pre) == 10
    np.testing.assert_array_equal(pre.vectors, unit)

    raw = str(tmp_path / "raw.npy")
    np.save(raw, 3.0 * unit.astype(np.float64))
    pre = emb.PrecomputedEmbeddings(raw, chunk_rows=3)
    assert pre.vectors.dtype == np.float32
    np.testing.assert_allclose(pre.vectors, unit, atol=1e-6)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((4,), np.float32), "2-D"),
        (np.ones((2, 3), np.int32), "floating point"),
        (np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), "row 1 is zero"),
        (np.array([[np.nan, 1.0]], np.float32), "row 0 is zero or not finite"),
    ],
)
def test_precomputed_embeddings_validation(tmp_path, array, message):
    path = str(tmp_path / "e.npy")
    np.save(path, array)
    with pytest.raises(ValueError, match=message):
        emb.PrecomputedEmbeddings(path)


def test_precomputed_embeddings_unreadable_file(tmp_path):
    path = tmp_path / "e.npy"
    path.write_bytes(b"not an array")
    with pytest.raises(ValueError, match="cannot read embeddings .*e.npy"):
        emb.PrecomputedEmbeddings(str(path))
    with pytest.raises(ValueError, match="missing.npy"):
        emb.PrecomputedEmbeddings(str(tmp_path / "missing.npy"))


def test_shapes_world_pairs():
    batches = list(_pairs(seed=3, num_batches=2)(4))
    assert len(batches) == 2
    images, captions = batches[0]
    chex.assert_shape(images, (4, RESOLUTION, RESOLUTION, 3))
    assert images.dtype == np.uint8 and len(captions) == 4
    again = next(_pairs(seed=3)(4))
    np.testing.assert_array_equal(again[0], images)
    assert again[1] == captions
    with pytest.raises(ValueError, match="unknown caption"):
        next(emb.shapes_world_pairs(4, caption="nope"))
