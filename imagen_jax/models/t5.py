"""T5 v1.1 encoder in Flax Linen (the frozen text encoder of Imagen).

Maths only: weight import from Hugging Face lives in `imagen_jax.text.t5_import`.

The architecture follows T5 v1.1: pre-RMSNorm blocks, self-attention without the
1/sqrt(d) logit scaling, a bucketed relative position bias computed once and
shared by every layer, a gated-GELU feed-forward network (tanh approximation)
and a final RMSNorm; the original T5's ReLU feed-forward network is an option
(`feed_forward_proj="relu"`), so its checkpoints load too. Parameter names
follow T5X (`token_embedder`, `layers_{i}`, `encoder_norm`) and every parameter
carries logical axis names from the vocabulary `vocab`, `embed`, `mlp`,
`heads`, `kv`, `relpos_buckets`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Activations are constrained with these logical names; the rules live in the config.
_ACT_AXES = ("act_batch", "act_len", "act_channels")

# (d_model, d_kv, d_ff, num_layers, num_heads) of the published t5-v1_1 checkpoints
# (their encoders), plus a tiny shape for CPU tests and smoke runs.
_PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 32, 256, 2, 4),
    "small": (512, 64, 1024, 8, 6),
    "base": (768, 64, 2048, 12, 12),
    "large": (1024, 64, 2816, 24, 16),
    "xl": (2048, 64, 5120, 24, 32),
    "xxl": (4096, 64, 10240, 24, 64),
}

# The sentencepiece vocabulary of t5-v1_1, padded to a multiple of 128.
T5_V1_1_VOCAB_SIZE = 32128

# Feed-forward networks, by their Hugging Face `feed_forward_proj` names:
# T5 v1.1 and Flan-T5 use "gated-gelu", the original T5 "relu".
FEED_FORWARD_PROJS = ("gated-gelu", "relu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shape and numerics of a T5 v1.1 encoder.

    Attributes:
      vocab_size: Number of token embeddings.
      d_model: Width of the residual stream.
      d_kv: Width of one attention head.
      d_ff: Hidden width of the gated feed-forward network.
      num_layers: Number of encoder blocks.
      num_heads: Number of attention heads.
      relative_attention_num_buckets: Buckets of the relative position bias.
      relative_attention_max_distance: Distance beyond which all relative
        positions share a bucket.
      relative_attention_init_scale: The relative position bias's initial
        standard deviation as a multiple of T5's (d_model ** -0.5). At T5's,
        attention starts nearly blind to word order, and a small encoder
        trained from scratch by a diffusion loss stays so (it reads a bag of
        words); a larger scale gives it word order from the start.
      dropout_rate: Dropout rate (active only when `deterministic=False`).
      layer_norm_epsilon: Epsilon of the RMS norms.
      feed_forward_proj: One of `FEED_FORWARD_PROJS`: "gated-gelu"
        (wo(gelu_tanh(wi_0 x) * wi_1 x), T5 v1.1) or "relu" (wo(relu(wi x)),
        the original T5).
      dtype: Compute dtype (e.g. jnp.bfloat16 on accelerators).
      param_dtype: Storage dtype of the parameters.
    """

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    relative_attention_init_scale: float = 1.0
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for field in (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_heads",
        ):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(
                    f"T5Config.{field} must be a positive int, got {value!r}"
                )
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                "T5Config.relative_attention_num_buckets must be >= 4, got "
                f"{self.relative_attention_num_buckets}"
            )
        if not self.relative_attention_init_scale >= 0.0:
            raise ValueError(
                "T5Config.relative_attention_init_scale must be >= 0, got "
                f"{self.relative_attention_init_scale}"
            )
        if self.feed_forward_proj not in FEED_FORWARD_PROJS:
            raise ValueError(
                f"T5Config.feed_forward_proj={self.feed_forward_proj!r} is not one "
                f"of {FEED_FORWARD_PROJS}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}"
            )

    @classmethod
    def preset(
        cls, name: str, vocab_size: int = T5_V1_1_VOCAB_SIZE, **overrides
    ) -> T5Config:
        """Returns the configuration of a named encoder size.

        Args:
          name: One of "tiny", "small", "base", "large", "xl", "xxl" (the last five
            are the t5-v1_1 checkpoint shapes).
          vocab_size: Embedding rows; 32128 for the t5-v1_1 sentencepiece model.
          **overrides: Other `T5Config` fields, e.g. `dtype=jnp.bfloat16`.

        Raises:
          ValueError: If `name` is not a known preset.
        """
        if name not in _PRESETS:
            raise ValueError(f"Unknown T5 preset {name!r}; known: {sorted(_PRESETS)}")
        d_model, d_kv, d_ff, num_layers, num_heads = _PRESETS[name]
        return cls(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=d_kv,
            d_ff=d_ff,
            num_layers=num_layers,
            num_heads=num_heads,
            **overrides,
        )

    @classmethod
    def tiny(cls, vocab_size: int = 384, **overrides) -> T5Config:
        """A 2-layer, 128-wide encoder for CPU runs (vocab covers bytes + extras)."""
        return cls.preset("tiny", vocab_size=vocab_size, **overrides)


def relative_position_bucket(
    relative_position: jax.Array,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jax.Array:
    """Maps relative positions (key - query) to T5's relative attention buckets.

    Half of the buckets (per direction when bidirectional) hold exact small
    distances; the other half cover distances up to `max_distance` on a log
    scale, and everything further shares the last bucket.

    Args:
      relative_position: Integer array of `key_position - query_position`.
      bidirectional: Whether positive and negative offsets get separate buckets
        (True for the encoder).
      num_buckets: Total number of buckets.
      max_distance: Distance from which all offsets share a bucket.

    Returns:
      int32 array of the same shape with values in [0, num_buckets).
    """
    relative_position = jnp.asarray(relative_position, jnp.int32)
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    # log(0) is avoided; distances below max_exact take the exact branch anyway.
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
    if_large = max_exact + (
        log_ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return bucket + jnp.where(distance < max_exact, distance, if_large)


def _normal(stddev: float, names: Sequence[str]) -> nn.initializers.Initializer:
    """A normal initialiser boxed with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), tuple(names))


def _dense(
    config: T5Config,
    features: int | tuple[int, ...],
    axis: int | tuple[int, ...],
    names: Sequence[str],
    stddev: float,
    name: str,
) -> nn.DenseGeneral:
    """A bias-free projection with T5's initialiser, axis names and dtypes."""
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=False,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=_normal(stddev, names),
        name=name,
    )


class T5LayerNorm(nn.Module):
    """RMS norm as in T5: no mean subtraction, no bias; statistics in float32."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(
            jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon
        )
        return (x * scale.astype(jnp.float32)).astype(self.dtype)


class RelativePositionBias(nn.Module):
    """The bucketed relative position bias, one scalar per (head, bucket)."""

    config: T5Config

    @nn.compact
    def __call__(self, length: int) -> jax.Array:
        """Returns the float32 bias [1, heads, length, length] for self-attention."""
        cfg = self.config
        rel_embedding = self.param(
            "rel_embedding",
            _normal(
                cfg.relative_attention_init_scale * cfg.d_model**-0.5,
                ("heads", "relpos_buckets"),
            ),
            (cfg.num_heads, cfg.relative_attention_num_buckets),
            cfg.param_dtype,
        )
        position = jnp.arange(length)
        buckets = relative_position_bucket(
            position[None, :] - position[:, None],  # key - query, [L, L]
            bidirectional=True,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
        )
        bias = jnp.take(rel_embedding.astype(jnp.float32), buckets, axis=1)  # [H, L, L]
        return bias[None]


class T5SelfAttention(nn.Module):
    """Multi-head self-attention without logit scaling; softmax in float32."""

    config: T5Config

    @nn.compact
    def __call__(
        self, x: jax.Array, bias: jax.Array, mask: jax.Array, deterministic: bool
    ) -> jax.Array:
        """Attends over the unmasked keys.

        Args:
          x: Normalised inputs [B, L, d_model].
          bias: Float32 relative position bias [1, H, L, L].
          mask: Boolean key mask [B, L]; False keys receive no attention.
          deterministic: Disables dropout when True.
        """
        cfg = self.config
        heads = (cfg.num_heads, cfg.d_kv)
        inner = cfg.num_heads * cfg.d_kv
        names = ("embed", "heads", "kv")
        # T5 folds the 1/sqrt(d_kv) logit scaling into the query initialiser.
        query = _dense(
            cfg, heads, -1, names, (cfg.d_model * cfg.d_kv) ** -0.5, "query"
        )(x)
        key = _dense(cfg, heads, -1, names, cfg.d_model**-0.5, "key")(x)
        value = _dense(cfg, heads, -1, names, cfg.d_model**-0.5, "value")(x)
        logits = jnp.einsum(
            "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
        )  # [B, H, L, L]
        logits = logits + bias
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)
        weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, L, H, d_kv]
        return _dense(
            cfg, cfg.d_model, (-2, -1), ("heads", "kv", "embed"), inner**-0.5, "out"
        )(out)


class T5Mlp(nn.Module):
    """The feed-forward network: gated GELU (v1.1) or ReLU (original T5)."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        names_in = ("embed", "mlp")
        std = cfg.d_model**-0.5
        if cfg.feed_forward_proj == "gated-gelu":
            gate = _dense(cfg, cfg.d_ff, -1, names_in, std, "wi_0")(x)
            linear = _dense(cfg, cfg.d_ff, -1, names_in, std, "wi_1")(x)
            hidden = nn.gelu(gate, approximate=True) * linear
        else:
            hidden = nn.relu(_dense(cfg, cfg.d_ff, -1, names_in, std, "wi")(x))
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
        return _dense(cfg, cfg.d_model, -1, ("mlp", "embed"), cfg.d_ff**-0.5, "wo")(
            hidden
        )


class T5EncoderBlock(nn.Module):
    """Pre-norm self-attention and feed-forward sub-layers with residuals."""

    config: T5Config

    @nn.compact
    def __call__(
        self, x: jax.Array, bias: jax.Array, mask: jax.Array, deterministic: bool
    ) -> jax.Array:
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate)
        norm_kwargs = dict(
            epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, param_dtype=cfg.param_dtype
        )
        h = T5LayerNorm(name="pre_attention_layer_norm", **norm_kwargs)(x)
        h = T5SelfAttention(cfg, name="attention")(h, bias, mask, deterministic)
        x = x + dropout(h, deterministic=deterministic)
        h = T5LayerNorm(name="pre_mlp_layer_norm", **norm_kwargs)(x)
        h = T5Mlp(cfg, name="mlp")(h, deterministic)
        x = x + dropout(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, _ACT_AXES)


class T5Encoder(nn.Module):
    """T5 v1.1 encoder: embeddings -> blocks -> final RMS norm.

    Outputs at padding positions are computed but meaningless; they never
    influence outputs at real positions (padding keys are masked out).
    """

    config: T5Config

    @nn.compact
    def __call__(
        self, tokens: jax.Array, mask: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """Encodes token ids.

        Args:
          tokens: int32 token ids [B, L].
          mask: Boolean [B, L], True at real tokens.
          deterministic: Disables dropout when True (needs a "dropout" rng if False).

        Returns:
          Embeddings [B, L, d_model] in `config.dtype`.
        """
        cfg = self.config
        if tokens.shape != mask.shape:
            raise ValueError(
                f"tokens {tokens.shape} and mask {mask.shape} shapes differ"
            )
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=_normal(1.0, ("vocab", "embed")),
            name="token_embedder",
        )
        dropout = nn.Dropout(cfg.dropout_rate)
        x = dropout(embed(tokens), deterministic=deterministic)
        x = nn.with_logical_constraint(x, _ACT_AXES)
        bias = RelativePositionBias(cfg, name="relpos_bias")(tokens.shape[1])
        mask = mask.astype(jnp.bool_)
        for i in range(cfg.num_layers):
            x = T5EncoderBlock(cfg, name=f"layers_{i}")(x, bias, mask, deterministic)
        x = T5LayerNorm(
            epsilon=cfg.layer_norm_epsilon,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="encoder_norm",
        )(x)
        return dropout(x, deterministic=deterministic)


def token_embedding(params) -> jax.Array:
    """The token embedding table [V, D] of a `T5Encoder`'s params (its own
    or converted from a pretrained T5, which share the layout)."""
    return params["token_embedder"]["embedding"]


def pooled(embeddings: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean over the sequence: [B, L, D], [B, L] -> [B, D].

    Sums in float32; rows with no real token give zeros.
    """
    weights = mask.astype(jnp.float32)[..., None]  # [B, L, 1]
    total = jnp.sum(embeddings.astype(jnp.float32) * weights, axis=1)
    count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return (total / count).astype(embeddings.dtype)
