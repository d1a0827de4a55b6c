"""The default retrieval embedder: a small CLIP-style image-text dual encoder.

It needs no downloaded weights: `train_embedder` trains it contrastively
(symmetric InfoNCE) on any stream of (image, caption) batches, minutes on CPU
on ShapesWorld (`shapes_world_pairs`), and saves it under a workdir that
`load_embedder` rebuilds it from. Both towers end in an `EMBED_DIM`
projection with L2-normalised rows, so cosine similarity is an inner product.

    params = train_embedder(functools.partial(shapes_world_pairs, seed=0),
                            default_config(), "/tmp/embedder")
    embedder = load_embedder("/tmp/embedder")
    image_vectors = embedder.embed_images(batches_of_uint8_images)  # [N, 128]
    text_vectors = embedder.embed_texts(["a red striped circle"])   # [1, 128]

Embeddings computed by any other model enter as `PrecomputedEmbeddings`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from imagen_jax import checkpointing
from imagen_jax.data import shapes_world
from imagen_jax.models import layers
from imagen_jax.models.t5 import pooled
from imagen_jax.text.tokenizers import Tokenizer, get_tokenizer

Dtype = Any
# One training batch: (images uint8 [B, H, W, 3], B captions).
Batch = tuple[np.ndarray, Sequence[str]]

EMBED_DIM = 128
# Files of a saved embedder, beside `checkpoints/` (params).
SPEC_FILE = "embedder.json"
VOCAB_FILE = "tokenizer.model"
# CLIP's initial temperature 0.07, and its cap on the logit scale (100).
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def default_config() -> ml_collections.ConfigDict:
    """The embedder's config: model, tokenizer, optimiser and budget."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    # Width of the shared embedding space (both towers project to it).
    c.model.embed_dim = EMBED_DIM
    # Image tower: one stage per width, each halving the resolution.
    c.model.image_widths = (16, 32, 64)
    # Text tower: a 1-D conv over token ids, max-pooled by `text_patch`, then
    # pre-norm transformer layers.
    c.model.text_width = 64
    c.model.text_layers = 1
    c.model.text_heads = 2
    # Tokens pooled into one transformer position (must divide text.max_len).
    c.model.text_patch = 4
    # Compute dtype: "float32" or "bfloat16" (params and the loss stay float32).
    c.model.dtype = "float32"

    c.text = ml_collections.ConfigDict()
    # Tokenizer: "byte" (no vocabulary file) or "sentencepiece" (`vocab_path`).
    c.text.tokenizer = "byte"
    c.text.vocab_path = ""
    # Tokens per caption, EOS included; longer captions are cut.
    c.text.max_len = 128

    c.optim = ml_collections.ConfigDict()
    # AdamW, linear warm-up then cosine decay to zero at `steps`.
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 1.0

    # Pairs per contrastive batch (each pair's negatives are the others).
    c.batch_size = 64
    # Training stops at `steps` or after `minutes` of wall time, first reached
    # (the learning-rate schedule spans `steps`).
    c.steps = 2000
    c.minutes = 10.0
    # A progress line (loss, image->text accuracy, steps/s) every so many steps.
    c.log_every = 50
    c.seed = 0
    return c


# --------------------------------------------------------------------------
# Model.


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
    """LayerNorm with float32 statistics and output, axes on its params."""
    return nn.LayerNorm(
        dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(
            nn.initializers.ones_init(), ("embed",)
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("embed",)
        ),
        name=name,
    )


def _normalise(x: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class ImageTower(nn.Module):
    """uint8 [B, H, W, 3] -> conv stages -> mean and max pool -> [B, embed_dim]."""

    embed_dim: int
    widths: tuple[int, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = (images.astype(jnp.float32) / 127.5 - 1.0).astype(self.dtype)
        x = layers.conv(self.widths[0], name="stem", **kw)(x)
        for i, width in enumerate(self.widths):
            for j, strides in enumerate((2, 1)):
                x = layers.conv(width, strides=strides, name=f"conv{i}_{j}", **kw)(x)
                # A per-pixel norm: GroupNorm's per-image statistics would
                # erase the global colour that identifies an object.
                x = _layer_norm()(x)
                x = layers.constrain_image(nn.silu(x).astype(self.dtype))
        # Max- beside mean-pooling: a small object is a few percent of the
        # pixels, and the mean alone drowns it in the background.
        x = x.astype(jnp.float32)
        features = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], -1)
        return layers.dense(self.embed_dim, ("embed", "mlp"), name="proj", **kw)(
            features.astype(self.dtype)  # [B, 2C]
        )


class TextBlock(nn.Module):
    """Pre-norm self-attention (key mask) and a GELU MLP, both residual."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, length, width = x.shape
        h = _layer_norm()(x).astype(self.dtype)
        q, k, v = (
            layers.dense(width, ("embed", "heads"), name=n, use_bias=False, **kw)(h)
            for n in ("query", "key", "value")
        )
        split = lambda t: t.reshape(b, length, self.num_heads, -1)  # noqa: E731
        h = layers.attention(split(q), split(k), split(v), mask).reshape(x.shape)
        x = x + layers.dense(width, ("heads", "embed"), name="out", **kw)(h)
        h = _layer_norm()(x).astype(self.dtype)
        h = nn.gelu(layers.dense(4 * width, ("embed", "mlp"), name="mlp_in", **kw)(h))
        x = x + layers.dense(width, ("mlp", "embed"), name="mlp_out", **kw)(h)
        return nn.with_logical_constraint(x, layers.TOKEN_AXES)


def _windows(x: jax.Array, size: int) -> jax.Array:
    """[B, L, C] -> [B, L, size * C]: each position with its neighbours (zero
    padded), so a dense layer on the result is a 1-D convolution."""
    left = (size - 1) // 2
    padded = jnp.pad(x, ((0, 0), (left, size - 1 - left), (0, 0)))
    return jnp.concatenate([padded[:, i : i + x.shape[1]] for i in range(size)], -1)


class TextTower(nn.Module):
    """ids [B, L] + mask -> byte conv -> pool by `patch` -> transformer ->
    masked mean -> [B, embed_dim].

    The convolution reads a few tokens around each (word pieces out of bytes);
    max-pooling `patch` positions into one shortens the transformer's
    sequence `patch`-fold, which is most of the tower's cost.
    """

    embed_dim: int
    vocab_size: int
    max_len: int
    width: int
    num_layers: int
    num_heads: int
    patch: int
    kernel_size: int = 5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")
            ),
            name="token_embed",
            **kw,
        )(ids)
        positions = self.param(
            "pos_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (self.max_len, self.width),
            self.param_dtype,
        )
        x = (x + positions[: ids.shape[1]].astype(self.dtype)) * mask[..., None]
        x = layers.dense(self.width, ("conv_in", "conv_out"), name="conv", **kw)(
            _windows(x, self.kernel_size)
        )
        x, mask = self._pool(nn.gelu(x), mask)  # [B, L / patch, W]
        for i in range(self.num_layers):
            x = TextBlock(self.num_heads, name=f"block{i}", **kw)(x, mask)
        x = _layer_norm("final_norm")(x)
        return layers.dense(self.embed_dim, ("embed", "mlp"), name="proj", **kw)(
            pooled(x, mask).astype(self.dtype)
        )

    def _pool(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Max over each `patch` positions' real tokens; a patch of padding is 0."""
        b, _, c = x.shape
        x = jnp.where(mask[..., None], x, -jnp.inf).reshape(b, -1, self.patch, c)
        mask = mask.reshape(b, -1, self.patch).any(axis=-1)
        return jnp.where(mask[..., None], x.max(axis=2), 0).astype(self.dtype), mask


class DualEncoder(nn.Module):
    """Image and text towers into one unit-norm space, plus CLIP's logit scale."""

    embed_dim: int
    image_widths: tuple[int, ...]
    vocab_size: int
    max_len: int
    text_width: int
    text_layers: int
    text_heads: int
    text_patch: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.image_tower = ImageTower(self.embed_dim, self.image_widths, **kw)
        self.text_tower = TextTower(
            self.embed_dim,
            self.vocab_size,
            self.max_len,
            self.text_width,
            self.text_layers,
            self.text_heads,
            self.text_patch,
            **kw,
        )
        self.logit_scale = self.param(
            "logit_scale",
            nn.with_logical_partitioning(
                nn.initializers.constant(INIT_LOGIT_SCALE), ()
            ),
            (),
            jnp.float32,
        )

    def encode_images(self, images: jax.Array) -> jax.Array:
        """uint8 [B, H, W, 3] -> float32 [B, D], unit rows."""
        return _normalise(self.image_tower(images))

    def encode_texts(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """int32 ids [B, L], bool mask [B, L] -> float32 [B, D], unit rows."""
        return _normalise(self.text_tower(ids, mask))

    def __call__(self, images, ids, mask) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(image embeddings, text embeddings, logit scale <= log 100)."""
        scale = jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE)
        return self.encode_images(images), self.encode_texts(ids, mask), scale


def make_model(cfg: ml_collections.ConfigDict, vocab_size: int) -> DualEncoder:
    """The `DualEncoder` of `cfg` for a tokenizer of `vocab_size` ids."""
    m = cfg.model
    if m.text_width % m.text_heads or cfg.text.max_len % m.text_patch:
        raise ValueError(
            f"need text_width ({m.text_width}) divisible by text_heads "
            f"({m.text_heads}) and max_len ({cfg.text.max_len}) by text_patch "
            f"({m.text_patch})"
        )
    return DualEncoder(
        embed_dim=m.embed_dim,
        image_widths=tuple(m.image_widths),
        vocab_size=vocab_size,
        max_len=cfg.text.max_len,
        text_width=m.text_width,
        text_layers=m.text_layers,
        text_heads=m.text_heads,
        text_patch=m.text_patch,
        dtype=jnp.dtype(m.dtype),
    )


def make_tokenizer(cfg: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer named in `cfg.text` (no extra tokens: captions have none)."""
    kwargs = {"model_path": cfg.text.vocab_path} if cfg.text.vocab_path else {}
    return get_tokenizer(cfg.text.tokenizer, **kwargs)


def init_params(model: DualEncoder, image_size: int, seed: int) -> Any:
    """Boxed params (each carries its logical axis names)."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.uint8)
    ids = jnp.zeros((1, model.max_len), jnp.int32)
    return model.init(jax.random.key(seed), images, ids, ids > 0)["params"]


# --------------------------------------------------------------------------
# Loss and train step.


def contrastive_loss(
    image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, same: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE over a batch; (loss, image->text top-1 accuracy).

    Args:
      image_emb: unit rows [B, D].
      text_emb: unit rows [B, D]; pair i is (image i, text i).
      logit_scale: log of the softmax inverse temperature.
      same: bool [B, B], pairs whose captions are identical. Each such caption
        is a positive for the other's image (the target spreads over them), so
        a batch with repeated captions does not push equal things apart.

    Returns:
      (loss, accuracy), float32 scalars. A hit is the best-scoring caption
      being one of the image's positives.
    """
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T  # [B images, B texts]
    targets = same.astype(jnp.float32)
    targets = targets / targets.sum(axis=1, keepdims=True)
    image_to_text = optax.softmax_cross_entropy(logits, targets).mean()
    text_to_image = optax.softmax_cross_entropy(logits.T, targets).mean()
    hits = jnp.take_along_axis(same, jnp.argmax(logits, axis=1)[:, None], axis=1)
    return (image_to_text + text_to_image) / 2, hits.mean(dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class EmbedderState:
    """What a train step carries: step, params and AdamW state."""

    step: jax.Array
    params: Any
    opt_state: Any


jax.tree_util.register_dataclass(
    EmbedderState, data_fields=["step", "params", "opt_state"], meta_fields=[]
)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clipped AdamW with warm-up + cosine; no decay on biases, norms, scale."""
    o = cfg.optim
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, min(o.warmup_steps, cfg.steps - 1), max(cfg.steps, 1)
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(schedule, weight_decay=o.weight_decay, mask=decay_mask),
    )


def train_step(
    state: EmbedderState, batch: dict, *, model: DualEncoder, tx
) -> tuple[EmbedderState, dict]:
    """One AdamW step on the symmetric InfoNCE loss of `batch`.

    `batch`: images uint8 [B, H, W, 3], ids int32 [B, L], mask bool [B, L].
    """
    ids, mask = batch["ids"], batch["mask"]
    same = jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)  # [B, B]

    def loss_fn(params):
        image_emb, text_emb, scale = model.apply(
            {"params": params}, batch["images"], ids, mask
        )
        loss, accuracy = contrastive_loss(image_emb, text_emb, scale, same)
        return loss, (accuracy, scale)

    (loss, (accuracy, scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": accuracy, "temperature": jnp.exp(-scale)}
    return EmbedderState(state.step + 1, params, opt_state), metrics


# --------------------------------------------------------------------------
# Training.


def _say(line: str) -> None:
    """A progress line in one write (no interleaving with other threads)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _check_batch(images: Any, captions: Any) -> tuple[np.ndarray, list[str]]:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "pairs must yield images as uint8 [B, H, W, 3], got "
            f"{images.dtype} {images.shape}"
        )
    if isinstance(captions, str) or len(captions) != len(images):
        raise ValueError(
            f"pairs must yield one caption per image: {len(images)} images, "
            f"captions {captions!r:.80}"
        )
    if len(images) < 2:
        raise ValueError(f"a contrastive batch needs >= 2 pairs, got {len(images)}")
    return images, list(captions)


def _epochs(pairs: Callable[[int], Iterable[Batch]], batch_size: int) -> Iterator:
    """Batches of `pairs(batch_size)`, calling it again whenever it ends."""
    while True:
        empty = True
        for images, captions in pairs(batch_size):
            empty = False
            yield _check_batch(images, captions)
        if empty:
            raise ValueError("the pairs source yielded no batch")


def _check_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (negatives), got {cfg.batch_size}")
    if cfg.steps < 1 or cfg.minutes <= 0:
        raise ValueError(
            f"need steps >= 1 and minutes > 0, got {cfg.steps} and {cfg.minutes}"
        )
    for name in (SPEC_FILE, "checkpoints"):
        if os.path.exists(os.path.join(workdir, name)):
            raise ValueError(
                f"{workdir} already holds an embedder ({name}); train into a new "
                "workdir"
            )


def train_embedder(
    pairs: Callable[[int], Iterable[Batch]],
    cfg: ml_collections.ConfigDict,
    workdir: str,
) -> Any:
    """Trains the dual encoder contrastively and saves it under `workdir`.

    Args:
      pairs: called as `pairs(cfg.batch_size)`, returns an iterable of
        (images uint8 [B, H, W, 3], captions: B strings) batches, normally of
        `cfg.batch_size` pairs (a different B costs one more compilation); it
        is called again each time the iterable ends (epochs of a finite
        dataset). All images share one size, which the saved embedder expects.
        E.g. `functools.partial(shapes_world_pairs, seed=0)`.
      cfg: `default_config()` or a variant of it.
      workdir: where to save; must not already hold an embedder.

    Returns:
      The trained params (unboxed).

    Raises:
      ValueError: a bad config, an occupied workdir or malformed batches.
      FloatingPointError: the loss became NaN or infinite.
    """
    _check_config(cfg, workdir)
    tokenizer = make_tokenizer(cfg)
    model = make_model(cfg, tokenizer.vocab_size)
    batches = _epochs(pairs, cfg.batch_size)
    first = next(batches)
    image_size = _square_side(first[0])
    tx = make_optimizer(cfg)
    params = nn.unbox(init_params(model, image_size, cfg.seed))
    state = EmbedderState(jnp.zeros((), jnp.int32), params, tx.init(params))
    step_fn = jax.jit(
        functools.partial(train_step, model=model, tx=tx), donate_argnums=0
    )
    num_params = sum(p.size for p in jax.tree.leaves(params))
    _say(f"embedder: {num_params:,} params, {image_size}px images, to {workdir}")
    batches = itertools.chain([first], batches)
    state, summary = _train_loop(step_fn, state, batches, tokenizer, cfg, image_size)
    save_embedder(workdir, state.params, cfg, image_size, summary)
    return state.params


def _square_side(images: np.ndarray) -> int:
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square, got {images.shape[1:3]}")
    return images.shape[1]


def _train_loop(step_fn, state, batches, tokenizer, cfg, image_size):
    """Steps until `cfg.steps` or the time budget; returns (state, summary)."""
    start = time.time()
    deadline = start + 60.0 * cfg.minutes
    window, window_start, step = [], start, 0
    while True:
        images, captions = next(batches)
        if images.shape[1:3] != (image_size, image_size):
            raise ValueError(
                f"batch {step} has {images.shape[1:3]} images, the first had "
                f"{image_size}x{image_size}: pairs must yield one size"
            )
        ids, mask = tokenizer.encode_batch(captions, cfg.text.max_len)
        state, metrics = step_fn(state, {"images": images, "ids": ids, "mask": mask})
        window.append(metrics)
        step += 1
        done = step >= cfg.steps or time.time() >= deadline
        if step % cfg.log_every == 0 or done:
            means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            if not math.isfinite(means["loss"]):
                raise FloatingPointError(
                    f"embedder loss {means['loss']} at step {step}"
                )
            rate = len(window) / max(time.time() - window_start, 1e-9)
            _say(
                f"embedder step {step}/{cfg.steps}: loss {means['loss']:.4f} "
                f"i2t acc {means['accuracy']:.3f} temp {means['temperature']:.4f} "
                f"{rate:.2f} steps/s"
            )
            window, window_start = [], time.time()
        if done:
            summary = {"steps": step, "seconds": round(time.time() - start, 1)}
            return state, {**summary, **means}


# --------------------------------------------------------------------------
# Saving and loading.


def save_embedder(
    workdir: str,
    params: Any,
    cfg: ml_collections.ConfigDict,
    image_size: int,
    trained: dict | None = None,
) -> None:
    """Writes params (orbax, `checkpoints/`), then `embedder.json` last.

    `embedder.json` holds the config, the image size and the training summary;
    a sentencepiece vocabulary is copied in (`tokenizer.model`) so the workdir
    alone rebuilds the embedder.
    """
    os.makedirs(workdir, exist_ok=True)
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if cfg.text.vocab_path:
        shutil.copyfile(cfg.text.vocab_path, os.path.join(workdir, VOCAB_FILE))
        cfg.text.vocab_path = VOCAB_FILE
    step = int((trained or {}).get("steps", 0))
    mngr = checkpointing.manager(os.path.join(workdir, "checkpoints"), keep=1)
    checkpointing.save(mngr, step, {"params": params}, None)
    mngr.wait_until_finished()
    mngr.close()
    spec = {
        "config": json.loads(cfg.to_json()),
        "image_size": int(image_size),
        "trained": trained or {},
    }
    # Written whole or not at all: its presence marks a complete save.
    tmp = os.path.join(workdir, SPEC_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(spec, f, indent=2)
    os.replace(tmp, os.path.join(workdir, SPEC_FILE))


def _read_spec(workdir: str) -> tuple[ml_collections.ConfigDict, int]:
    """(config, image size) of a saved embedder; ValueError naming the problem."""
    # The path as given, so that a message (and the rows that carry it) names
    # no directory of the machine it ran on.
    path = os.path.join(workdir, SPEC_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: is {workdir} an embedder's workdir?")
    try:
        with open(path) as f:
            spec = json.load(f)
        cfg = ml_collections.ConfigDict(spec["config"])
        image_size = int(spec["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a valid embedder spec: {type(e).__name__}: {e}"
        ) from e
    missing = sorted(_keys(default_config()) - _keys(cfg))
    if missing:
        raise ValueError(f"{path} is not a valid embedder spec: lacks {missing}")
    if cfg.text.vocab_path:
        cfg.text.vocab_path = os.path.join(os.path.dirname(path), cfg.text.vocab_path)
    return cfg, image_size


def _keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    """Dotted names of the leaves of `cfg`."""
    keys = set()
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys |= _keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def load_embedder(workdir: str, batch_size: int = 256) -> Embedder:
    """Rebuilds the embedder saved under `workdir` (no config needed).

    Args:
      workdir: the `train_embedder` (or `save_embedder`) directory.
      batch_size: rows per jitted call when embedding.

    Raises:
      ValueError: `workdir` is missing, or its spec or params are missing or
        damaged (a `checkpointing.CheckpointError` for the params); the
        message names the path.
    """
    cfg, image_size = _read_spec(workdir)
    tokenizer = make_tokenizer(cfg)
    model = make_model(cfg, tokenizer.vocab_size)
    like = jax.eval_shape(lambda: nn.unbox(init_params(model, image_size, 0)))
    params, _ = checkpointing.restore_params(workdir, like, use_ema=False)
    return Embedder(model, params, tokenizer, image_size, batch_size)


# --------------------------------------------------------------------------
# Embedding.


def _bucket(n: int, batch_size: int) -> int:
    """Rows a chunk of n <= batch_size rows is padded to: `batch_size` or a
    power of two (>= 8), so a few compiled shapes serve every input length."""
    return min(batch_size, max(8, 1 << (n - 1).bit_length()))


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    pad = [(0, size - len(rows))] + [(0, 0)] * (rows.ndim - 1)
    return np.pad(rows, pad)


class _Progress:
    """A line every `every` seconds while a long input is embedded."""

    def __init__(self, what: str, total: int | None, every: float = 10.0):
        self.what, self.total, self.every = what, total, every
        self.start = self.last = time.time()
        self.done, self.spoke = 0, False

    def update(self, n: int) -> None:
        self.done += n
        now = time.time()
        if now - self.last >= self.every:
            self.last, self.spoke = now, True
            of = f"/{self.total}" if self.total else ""
            rate = self.done / (now - self.start)
            _say(f"embedded {self.done}{of} {self.what} ({rate:.0f}/s)")

    def close(self) -> None:
        if self.spoke:
            seconds = time.time() - self.start
            _say(f"embedded {self.done} {self.what} in {seconds:.1f} s")


class Embedder:
    """A trained dual encoder: images and texts -> float32 unit rows [N, D]."""

    def __init__(
        self,
        model: DualEncoder,
        params: Any,
        tokenizer: Tokenizer,
        image_size: int,
        batch_size: int = 256,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.image_size, self.batch_size = image_size, batch_size
        self._images = jax.jit(
            lambda p, x: model.apply({"params": p}, x, method="encode_images")
        )
        self._texts = jax.jit(
            lambda p, i, m: model.apply({"params": p}, i, m, method="encode_texts")
        )

    @property
    def dim(self) -> int:
        return self.model.embed_dim

    def _check_images(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        want = (self.image_size, self.image_size, 3)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(
                f"expected uint8 image batches [B, {want[0]}, {want[1]}, 3] (the "
                f"size the embedder was trained on), got {images.dtype} {images.shape}"
            )
        return images

    def _chunks(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Regroups the batches into `batch_size` rows (the last one shorter),
        holding fewer than 2 x `batch_size` images (a large batch, even a
        memory-mapped one, is read a slice at a time)."""
        buffer, held = [], 0
        for batch in batches:
            batch = self._check_images(batch)
            for begin in range(0, len(batch), self.batch_size):
                buffer.append(batch[begin : begin + self.batch_size])
                held += len(buffer[-1])
                if held >= self.batch_size:
                    rows = np.concatenate(buffer)
                    yield rows[: self.batch_size]
                    buffer, held = [rows[self.batch_size :]], held - self.batch_size
        if held:
            yield np.concatenate(buffer)

    def embed_images(
        self,
        batches: Iterable[np.ndarray] | np.ndarray,
        *,
        out: np.ndarray | None = None,
        total: int | None = None,
    ) -> np.ndarray:
        """Embeds a stream of uint8 [B, H, W, 3] batches.

        Memory holds at most 2 x `batch_size` images at a time besides the
        result; pass `out` (e.g. an `np.memmap` [N, D]) to write the result
        there instead of an in-memory array.

        Args:
          batches: an iterable of image batches, or one [N, H, W, 3] array.
          out: optional float32 [N, D] destination, N the number of images.
          total: number of images, for the progress lines (optional).

        Returns:
          float32 [N, D] unit rows (`out` if given).
        """
        if isinstance(batches, np.ndarray):
            batches = [batches]
        if total is None and out is not None:
            total = len(out)
        progress, parts, done = _Progress("images", total), [], 0
        for chunk in self._chunks(batches):
            n = len(chunk)
            size = _bucket(n, self.batch_size)
            emb = np.asarray(self._images(self.params, _pad(chunk, size)))[:n]
            if out is None:
                parts.append(emb)
            else:
                if done + n > len(out):
                    raise ValueError(f"more than len(out) = {len(out)} images")
                out[done : done + n] = emb
            done += n
            progress.update(n)
        progress.close()
        if out is not None:
            if done != len(out):
                raise ValueError(f"got {done} images for an out of {len(out)} rows")
            return out
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def embed_texts(
        self, texts: Sequence[str], batch_size: int | None = None
    ) -> np.ndarray:
        """float32 [N, D] unit rows of `texts` (cut at the trained max_len)."""
        if isinstance(texts, str):
            raise ValueError(f"embed_texts expects a list of strings, got {texts!r}")
        batch_size = batch_size or self.batch_size
        progress, parts = _Progress("texts", len(texts)), []
        for begin in range(0, len(texts), batch_size):
            chunk = list(texts[begin : begin + batch_size])
            ids, mask = self.tokenizer.encode_batch(chunk, self.model.max_len)
            size = _bucket(len(chunk), batch_size)
            emb = self._texts(self.params, _pad(ids, size), _pad(mask, size))
            parts.append(np.asarray(emb)[: len(chunk)])
            progress.update(len(chunk))
        progress.close()
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


class PrecomputedEmbeddings:
    """Embeddings from any model, read from a `.npy` file of shape [N, D].

    The array must be 2-D and floating point. The file is memory-mapped and its
    row norms are checked in chunks. float32 rows of unit L2 norm (within
    1e-3) stay memory-mapped (never read whole); other rows are L2-normalised
    into an in-memory float32 copy, so `vectors` always holds unit rows and
    inner product is cosine similarity.

    Attributes:
      vectors: float32 [N, D], unit rows.

    Raises:
      ValueError: the file is missing or not a .npy array, the array is not
        2-D floating point, or a row is zero or not finite (naming the path).
    """

    def __init__(self, path: str, chunk_rows: int = 65536):
        self.path = str(path)
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read embeddings {self.path}: {e}") from e
        if not isinstance(array, np.ndarray) or array.ndim != 2:
            raise ValueError(
                f"embeddings {self.path} must be a 2-D array [N, D], got shape "
                f"{getattr(array, 'shape', None)}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"embeddings {self.path} must be floating point, got {array.dtype}"
            )
        unit = self._check_rows(array, chunk_rows)
        if unit and array.dtype == np.float32:
            self.vectors = array
        else:
            self.vectors = np.empty(array.shape, np.float32)
            for begin in range(0, len(array), chunk_rows):
                rows = np.asarray(array[begin : begin + chunk_rows], np.float32)
                norms = np.linalg.norm(rows, axis=1, keepdims=True)
                self.vectors[begin : begin + chunk_rows] = rows / norms

    def _check_rows(self, array: np.ndarray, chunk_rows: int) -> bool:
        """Whether every row has unit norm; ValueError on zero or bad rows."""
        unit = True
        for begin in range(0, len(array), chunk_rows):
            norms = np.linalg.norm(
                np.asarray(array[begin : begin + chunk_rows], np.float64), axis=1
            )
            bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
            if bad.size:
                raise ValueError(
                    f"embeddings {self.path}: row {begin + bad[0]} is zero or not "
                    "finite, it cannot be normalised"
                )
            unit = unit and bool(np.all(np.abs(norms - 1.0) <= 1e-3))
        return unit

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.vectors)


# --------------------------------------------------------------------------
# ShapesWorld pairs.


def cpu_world_scene(rng: np.random.Generator) -> shapes_world.Scene:
    """A scene of the CPU world (`tasks.WORLDS["simple"]`): one object, any
    fill and background, avoiding the held-out (shape, colour, position)s."""
    return shapes_world.sample_scene(
        rng, min_objects=1, max_objects=1, exclude=shapes_world.held_out_triples()
    )


def scene_caption(scene: shapes_world.Scene, rng: np.random.Generator) -> str:
    """The whole scene in the CPU world's "varied" grammar."""
    return shapes_world.describe(scene, rng, "varied")[0]


def subject_caption(scene: shapes_world.Scene, rng: np.random.Generator) -> str:
    """The (first) object's identity only, e.g. "a purple dotted circle"."""
    del rng  # one canonical phrase per identity
    obj = scene.objects[0]
    fill = "" if obj.pattern == "solid" else f" {obj.pattern}"
    return f"{'an' if obj.colour[0] in 'aeiou' else 'a'} {obj.colour}{fill} {obj.shape}"


# What the training captions name is what the image embedding keeps. Scene
# captions make an image's nearest neighbours the ones with its background and
# position (most of its pixels), whatever the object; subject captions make
# them the ones with its (shape, colour, fill), the neighbours stage-1 mining
# wants.
CAPTIONS: dict[str, Callable[[shapes_world.Scene, np.random.Generator], str]] = {
    "scene": scene_caption,
    "subject": subject_caption,
}


def shapes_world_pairs(
    batch_size: int,
    *,
    seed: int = 0,
    resolution: int = 32,
    caption: str | Callable[[shapes_world.Scene, np.random.Generator], str] = (
        "subject"
    ),
    sample_scene: Callable[[np.random.Generator], shapes_world.Scene] = (
        cpu_world_scene
    ),
    num_batches: int | None = None,
) -> Iterator[Batch]:
    """Procedural (image, caption) batches from ShapesWorld.

    Args:
      batch_size: pairs per batch.
      seed: the stream is a pure function of the arguments.
      resolution: image side, a positive multiple of 16.
      caption: a `CAPTIONS` name ("subject": the object's identity only;
        "scene": the varied caption of the whole scene) or a function
        (scene, rng) -> str, e.g. one naming subjects.
      sample_scene: rng -> Scene; default the CPU world's scenes.
      num_batches: stop after so many batches (None: never stop).

    Yields:
      (images uint8 [batch_size, R, R, 3], captions: batch_size strings).
    """
    if isinstance(caption, str):
        if caption not in CAPTIONS:
            raise ValueError(f"unknown caption {caption!r}; known: {sorted(CAPTIONS)}")
        caption = CAPTIONS[caption]
    rng = np.random.default_rng(seed)
    count = itertools.count() if num_batches is None else range(num_batches)
    for _ in count:
        scenes = [sample_scene(rng) for _ in range(batch_size)]
        images = np.stack([shapes_world.render(s, resolution) for s in scenes])
        yield images, [caption(s, rng) for s in scenes]
