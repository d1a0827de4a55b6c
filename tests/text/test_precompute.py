"""Captions encoded once by the frozen T5 (`text.precompute`, launch.encode_text)."""

import functools
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from experiments import stage2_shapes, t2i_shapes
from imagen_jax import optim, sharding, train, train_state
from imagen_jax.data import pipeline, text_cache
from imagen_jax.models.imagen import Imagen, build_model
from imagen_jax.text import precompute, pretrained, t5_import
from imagen_jax.text.tokenizers import make_tokenizer
from tests.child_env import child_env
from tests.params import perturbed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_TRAIN = 96  # the smoke world's training records


def _config(smoke_world, hf_dir, root):
    """The smoke text-to-image config on the smoke world with the tiny T5
    frozen and its cache under `root`, resolved as training resolves it."""
    cfg = t2i_shapes.get_config("smoke")
    cfg.data.data_dir = smoke_world
    cfg.mesh.shape = (2, 2, 2)
    cfg.text.pretrained = hf_dir
    cfg.text.precomputed = str(root)
    return pretrained.resolve(cfg)


@pytest.fixture(scope="module")
def caches(smoke_world, hf_dir, tmp_path_factory):
    """dtype -> the config of a cache of the smoke world's training split."""
    out = {}
    for dtype in text_cache.STORAGE_DTYPES:
        cfg = _config(smoke_world, hf_dir, tmp_path_factory.mktemp(dtype))
        # 40 does not divide the 96 records: the last batch is padded.
        precompute.encode_dataset(cfg, "unused", "train", batch_size=40, dtype=dtype)
        out[dtype] = cfg
    return out


def _online(cfg, hf_dir, tokens, mask):
    """The frozen encoder run as training runs it without a cache (float32)."""
    model = build_model(cfg, make_tokenizer(cfg).vocab_size)
    _, params = t5_import.load_hf_t5_encoder(hf_dir)
    encode = functools.partial(model.apply, method=Imagen.encode_text)
    return np.asarray(
        jax.jit(encode)({"params": {"text_encoder": params}}, tokens, mask)
    )


def _rounding_bound(stored, online):
    """How far stored values may be from the online encoder's: half an ulp of
    the storage dtype (eps/2 * |x|, half the smallest subnormal below the
    normal range), plus a few float32 ulps of the example's largest value
    (the encoder is compiled once for the cache's mesh and batch, once here).
    """
    low, f32 = ml_dtypes.finfo(stored.dtype), np.finfo(np.float32)
    scale = np.abs(online).max(axis=(1, 2), keepdims=True)
    return (
        float(low.eps) / 2 * np.abs(online)
        + float(low.smallest_subnormal) / 2
        + 8 * float(f32.eps) * scale
    )


@pytest.mark.parametrize("dtype", sorted(text_cache.STORAGE_DTYPES))
def test_stored_embeddings_are_the_encoders_rounded(caches, hf_dir, dtype):
    cfg = caches[dtype]
    cache = text_cache.open_cache(cfg.text.precomputed, cfg, "train", NUM_TRAIN)
    assert cache.embeddings.dtype == text_cache.STORAGE_DTYPES[dtype]
    assert cache.embeddings.shape == (NUM_TRAIN, cfg.data.max_text_len, 32)
    # Tokenized as the pipeline tokenizes each record (EOS, padding, length).
    source = pipeline.get_source(cfg.data, "train")
    records = [source[i] for i in range(NUM_TRAIN)]
    tokens, mask = pipeline.tokenize_captions(
        make_tokenizer(cfg), records, cfg.data.max_text_len
    )
    np.testing.assert_array_equal(cache.tokens, tokens)
    np.testing.assert_array_equal(cache.mask, mask)
    online = _online(cfg, hf_dir, tokens, mask)
    stored = np.asarray(cache.embeddings)
    error = np.abs(stored.astype(np.float32) - online)
    assert (error <= _rounding_bound(stored, online)).all()
    # Nearly every value is exactly the online one rounded to nearest.
    assert np.mean(stored == online.astype(stored.dtype)) > 0.99


def _live(params):
    """`params` with every all-zero array (the zero-initialised output layers)
    drawn at random: at init the text does not reach the loss at all."""
    return perturbed(params, scale=0.1, only_zero=True)


def _train_step_fixture(cfg):
    """(loss of a batch, the first batch of the training pipeline) at the
    state training starts from, the pretrained encoder loaded."""
    tokenizer = make_tokenizer(cfg)
    model = build_model(cfg, tokenizer.vocab_size)
    mesh = sharding.make_mesh(cfg.mesh.shape, cfg.mesh.axes)
    rules = train_state.mesh_rules(cfg)
    tx, _ = optim.build_optimizer(cfg)
    state, _ = train_state.init_state(model, tx, cfg, mesh, rules)
    state = pretrained.with_pretrained_text(state, cfg)
    state = state.replace(params={**state.params, "unet": _live(state.params["unet"])})
    step = functools.partial(train.train_step, model=model, tx=tx, config=cfg)

    def loss(batch, embeddings=None):
        if embeddings is not None:
            batch = {**batch, "text_embeddings": embeddings}
        with mesh, nn.logical_axis_rules(rules):
            return step(state, batch)[1]["loss"]

    batch = next(iter(pipeline.train_dataset(cfg, tokenizer)))
    return loss, batch


def test_a_train_step_on_stored_embeddings_gives_the_same_loss(caches):
    cfg = caches["float16"]
    loss, batch = _train_step_fixture(cfg)
    stored = batch["text_embeddings"]  # [B, L, D] as stored
    assert stored.dtype == np.float16 and stored.shape == (8, 32, 32)
    step_loss = jax.jit(loss)
    online = float(
        step_loss({k: v for k, v in batch.items() if k != "text_embeddings"})
    )
    cached = float(step_loss(batch))
    # To first order the rounding (|dx| <= eps/2 |x|) moves the loss by at
    # most eps/2 * sum |x dL/dx|; plus float32 noise of the two programs.
    x = stored.astype(np.float32)
    grad = jax.jit(jax.grad(lambda x: loss(batch, x)))(x)
    eps16, eps32 = float(np.finfo(np.float16).eps), float(np.finfo(np.float32).eps)
    bound = eps16 / 2 * float(np.sum(np.abs(x * grad))) + 8 * eps32 * abs(online)
    assert abs(cached - online) <= bound
    # The step reads the stored rows: another example's text moves the loss.
    swapped = float(step_loss({**batch, "text_embeddings": stored[::-1]}))
    assert abs(swapped - cached) > 10 * bound


@pytest.mark.slow  # the loss test above covers the step; this, the loop
def test_training_runs_on_stored_embeddings(caches, tmp_path):
    cfg = _copy(caches["float16"], train__num_steps=2, train__checkpoint_every=2)
    state = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert int(state.step) == 2
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")


def _copy(cfg, **changes):
    out = ml_collections.ConfigDict(cfg.to_dict())
    for dotted, value in changes.items():
        group, field = dotted.split("__")
        out[group][field] = value
    return out


def _other_encoder(hf_dir, directory):
    """A copy of the tiny T5 with one encoder weight changed."""
    from safetensors import numpy as st

    shutil.copytree(hf_dir, directory)
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        shard = json.load(f)["weight_map"]["encoder.final_layer_norm.weight"]
    path = os.path.join(directory, shard)
    tensors = st.load_file(path)
    tensors["encoder.final_layer_norm.weight"] *= 1.5
    st.save_file(tensors, path, metadata={"format": "pt"})
    return str(directory)


def test_a_cache_made_for_another_config_is_refused(caches, hf_dir, tmp_path):
    cfg = caches["float16"]
    root = cfg.text.precomputed
    shorter = _copy(cfg, data__max_text_len=16)
    with pytest.raises(ValueError, match=r"max_text_len 32 \(cache\) != 16 \(config\)"):
        pipeline.train_dataset(shorter, make_tokenizer(shorter))
    other = _copy(cfg, text__pretrained=_other_encoder(hf_dir, tmp_path / "other"))
    differs = r"encoder\.checksum [0-9a-f]{12}\.\.\. \(cache\) != [0-9a-f]{12}"
    with pytest.raises(ValueError, match=differs):
        text_cache.open_cache(root, other, "train", NUM_TRAIN)
    with pytest.raises(ValueError, match=r"num_records 96 \(cache\) != 95 \(config\)"):
        text_cache.open_cache(root, cfg, "train", NUM_TRAIN - 1)
    with pytest.raises(FileNotFoundError, match="no text embeddings of split 'test'"):
        text_cache.open_cache(root, cfg, "test", 8)


def test_a_caption_changed_since_the_encoding_is_named(caches):
    cfg = caches["float16"]
    source = pipeline.get_source(cfg.data, "train")

    class Recaptioned:
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            return {**source[i], "caption": b"a caption written later"}

    tokenizer = make_tokenizer(cfg)
    cached = pipeline.cached_text(source, cfg, "train", tokenizer)
    assert cached[5]["text_embeddings"].shape == (cfg.data.max_text_len, 32)
    changed = pipeline.cached_text(Recaptioned(), cfg, "train", tokenizer)
    with pytest.raises(ValueError, match="the caption of record 5 does not give"):
        changed[5]


@pytest.mark.parametrize(
    "name",
    sorted(set(pipeline.source_names()) - set(pipeline.fixed_caption_sources())),
)
def test_datasets_that_make_their_text_on_the_fly_are_refused(name, hf_dir):
    cfg = stage2_shapes.get_config("smoke")
    cfg.data.name = name
    cfg.text.pretrained = hf_dir
    with pytest.raises(ValueError, match=f"{name!r} makes its text on the fly"):
        pipeline.check_cacheable(cfg)


def test_an_interrupted_encoding_leaves_no_cache(
    smoke_world, hf_dir, tmp_path, monkeypatch
):
    cfg = _config(smoke_world, hf_dir, tmp_path / "cache")
    stale = tmp_path / "cache" / ".train.partial"  # what a killed run leaves
    stale.mkdir(parents=True)
    (stale / "embeddings.npy").write_bytes(b"half written")
    tokenize, seen = pipeline.tokenize_captions, []

    def killed_at_the_second_batch(*args):
        seen.append(len(os.listdir(tmp_path / "cache" / ".train.partial")))
        if len(seen) == 2:
            # A kill now leaves this: files half written, and no cache.
            with pytest.raises(FileNotFoundError, match="no text embeddings"):
                text_cache.open_cache(cfg.text.precomputed, cfg, "train", NUM_TRAIN)
            raise KeyboardInterrupt
        return tokenize(*args)

    monkeypatch.setattr(pipeline, "tokenize_captions", killed_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        precompute.encode_dataset(cfg, "unused", batch_size=40)
    assert seen == [3, 3]  # the stale files were replaced by the new arrays
    assert os.listdir(tmp_path / "cache") == []
    monkeypatch.undo()
    directory = precompute.encode_dataset(cfg, "unused", batch_size=40)
    assert sorted(os.listdir(tmp_path / "cache")) == ["train"]
    assert text_cache.open_cache(cfg.text.precomputed, cfg, "train", NUM_TRAIN)
    assert directory == str(tmp_path / "cache" / "train")


def _encode_text(*args):
    env = child_env(TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "launch.encode_text", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_runs():
    out = _encode_text("--help")
    text = out.stdout + out.stderr
    assert out.returncode in (0, 1), text[-2000:]  # absl's --help exits with 1
    assert "Traceback" not in text
    assert "--split" in text and "--dtype" in text


def test_a_trained_encoder_is_refused_in_one_line(tmp_path):
    out = _encode_text(
        "--config", "experiments/t2i_shapes.py:smoke", "--workdir", str(tmp_path)
    )
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.text.pretrained is empty: a text encoder")
    assert "Traceback" not in out.stderr
