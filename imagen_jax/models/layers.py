"""Building blocks of the Imagen UNet: convs, norms, ResNet and attention blocks.

Every parameter carries logical axis names (weights: `embed`, `mlp`, `heads`,
`kv`, `conv_in`, `conv_out`); large activations are constrained with the
activation vocabulary (`act_batch`, `act_height`, `act_width`, `act_len`,
`act_channels`). Norm statistics and softmax run in float32 whatever `dtype`.

Two operations come in two forms, chosen by a `kernels` option (`KERNELS`):
"cpu" runs the forms shaped for XLA:CPU (`matmul`, a custom-VJP Dense
product, and `deferred_norm_attention`), "stock" the plain ones accelerator
compilers are tuned for (`jax.lax.dot_general`, `jax.nn.dot_product_attention`).
They compute the same function with the same parameters, so a checkpoint
trained with either runs with the other.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

IMAGE_AXES = ("act_batch", "act_height", "act_width", "act_channels")
TOKEN_AXES = ("act_batch", "act_len", "act_channels")


# Allowed values of a `kernels` option: "cpu", "stock", or "auto" ("cpu" on
# the CPU backend, "stock" elsewhere; see `resolve_kernels`).
KERNELS = ("auto", "cpu", "stock")


def resolve_kernels(kernels: str) -> str:
    """The form ("cpu" or "stock") a `kernels` option stands for.

    "auto" asks `jax.default_backend()`, so it must be resolved after JAX has
    started (at model build time, not in a config).

    Raises:
      ValueError: `kernels` is not one of `KERNELS`.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if kernels == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "stock"
    return kernels


def constrain_image(x: jax.Array) -> jax.Array:
    """Annotates a [B, H, W, C] activation with logical axes."""
    return nn.with_logical_constraint(x, IMAGE_AXES)


def _init(base: nn.initializers.Initializer, axes: Sequence[str | None], zero: bool):
    fn = nn.initializers.zeros_init() if zero else base
    return nn.with_logical_partitioning(fn, tuple(axes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
    """`x [..., K] @ w [K, N]` with a backward pass that XLA:CPU runs 2x faster.

    Autodiff's transpose of `dot_general` writes the kernel gradient as a dot
    of a transposed copy of the output cotangent; XLA:CPU materialises that
    copy (a [tokens, N] transpose at a few GB/s), which costs more than the
    three matmuls together. Here the kernel gradient contracts the flattened
    token axis of both operands directly. Same arithmetic, same result.
    """
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision)


def _matmul_fwd(x, w, precision):
    return matmul(x, w, precision), (x, w)


def _matmul_bwd(precision, residuals, g):
    x, w = residuals
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision)
    flat_x, flat_g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = jax.lax.dot_general(flat_x, flat_g, (((0,), (0,)), ((), ())), precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """`nn.Dense`'s `dot_general`: `matmul` for its [.., K] x [K, N] contraction."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if (
        kwargs
        or lhs_batch
        or rhs_batch
        or rhs.ndim != 2
        or tuple(lhs_contract) != (lhs.ndim - 1,)
        or tuple(rhs_contract) != (0,)
    ):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, **kwargs)
    return matmul(lhs, rhs, precision)


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str | None = None,
    use_bias: bool = True,
    zero_init: bool = False,
    kernels: str = "auto",
) -> nn.Dense:
    """A Dense layer with logical axes on kernel [in, out] and bias [out].

    With `kernels` "cpu" it multiplies through `matmul`; with "stock" through
    `jax.lax.dot_general`. The parameters are the same either way.
    """
    cpu = resolve_kernels(kernels) == "cpu"
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_init(nn.initializers.lecun_normal(), axes, zero_init),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        dot_general=dense_dot_general if cpu else jax.lax.dot_general,
        name=name,
    )


def conv(
    features: int,
    kernel_size: int = 3,
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str | None = None,
    strides: int = 1,
    zero_init: bool = False,
) -> nn.Conv:
    """A same-padded NHWC conv with axes (None, None, conv_in, conv_out)."""
    axes = (None, None, "conv_in", "conv_out")
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding="SAME",
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_init(nn.initializers.lecun_normal(), axes, zero_init),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("conv_out",)
        ),
        name=name,
    )


def group_norm(
    channels: int, *, param_dtype: Dtype, name: str | None = None
) -> nn.GroupNorm:
    """GroupNorm with float32 statistics and output (cast back by the caller)."""
    return nn.GroupNorm(
        # The most groups (up to 32) that divide the channels.
        num_groups=math.gcd(32, channels),
        dtype=jnp.float32,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(
            nn.initializers.ones_init(), ("embed",)
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("embed",)
        ),
        name=name,
    )


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 1e4) -> jax.Array:
    """Sinusoidal features of a [B] float array -> [B, dim] (float32)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv x2 with FiLM conditioning and a 1/sqrt(2) scaled skip."""

    features: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(group_norm(x.shape[-1], param_dtype=self.param_dtype)(x))
        h = conv(self.features, name="conv1", **kw)(h.astype(self.dtype))
        # FiLM from the time + pooled-text embedding.
        film = dense(
            2 * self.features,
            ("embed", "conv_out"),
            name="film",
            kernels=self.kernels,
            **kw,
        )(nn.silu(cond))
        scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
        h = group_norm(self.features, param_dtype=self.param_dtype)(h)
        h = nn.silu(h * (1.0 + scale) + shift).astype(self.dtype)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.features, name="conv2", zero_init=True, **kw)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, name="skip", **kw)(x)
        return constrain_image((x + h) * (1.0 / math.sqrt(2.0)))


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    kernels: str = "auto",
) -> jax.Array:
    """Multi-head attention; q [B,Q,N,D], k/v [B,K,N,D], mask [B,K] -> [B,Q,N,D].

    A query whose keys are all masked attends to nothing (zeros): a row of
    dropped text or of no context items must not average the masked values,
    or the "unconditional" branch of guidance would still see the condition.
    `kernels` chooses the form: "cpu" `deferred_norm_attention`, "stock"
    `jax.nn.dot_product_attention` (softmax, then the value matmul).
    """
    if resolve_kernels(kernels) == "cpu":
        return deferred_norm_attention(q, k, v, mask)
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v)
    mask = mask.astype(bool)  # as jax.nn.dot_product_attention requires
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    return jnp.where(jnp.any(mask, axis=-1)[:, None, None, None], out, 0)


def deferred_norm_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """`attention` as XLA:CPU runs it fastest (same arguments and result)."""
    # The 1/sqrt(D) scale goes on q: on the logits XLA:CPU materialises it as
    # a [B, N, Q, K] broadcast operand.
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    # Heads first: both matmuls are then plain batched [T, D] products, which
    # XLA:CPU runs about 1.2-1.6x faster than the token-major einsums
    # (benchmarks/ops.py, docs/performance.md).
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = jnp.einsum("bnqd,bnkd->bnqk", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    # Softmax with the normalisation after the second matmul: dividing the
    # [.., Q, D] output instead of the [.., Q, K] weights is the same sum, and
    # on XLA:CPU at 16x16 runs the forward 1.9x and forward + backward 1.3x
    # faster (benchmarks/ops.py `attention_*/deferred_norm`,
    # docs/performance.md). The max shift is a constant for the gradient
    # (softmax does not depend on it), as in `jax.nn.softmax`.
    logits = logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    unnormalised = jnp.exp(logits)
    total = unnormalised.sum(axis=-1, keepdims=True)
    out = jnp.einsum(
        "bnqk,bnkd->bnqd",
        unnormalised.astype(v.dtype),
        v,
        preferred_element_type=jnp.float32,
    )
    out = out / total
    if mask is not None:  # queries with every key masked: zeros
        out = out * jnp.any(mask, axis=-1)[:, None, None, None]
    return out.astype(v.dtype).transpose(0, 2, 1, 3)


class AttentionPool(nn.Module):
    """Pools [B, L, D] tokens to [B, D] with one learned query per head.

    The query starts at zero, so at initialisation this is the masked mean;
    training lets each head pick out the words that matter (a colour, a
    shape). Fully masked rows (dropped text) give zeros.
    """

    num_heads: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, length, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
        query = self.param(
            "query",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            (d,),
            self.param_dtype,
        )
        x = x.astype(jnp.float32)
        heads = x.reshape(b, length, self.num_heads, d // self.num_heads)
        q = query.astype(jnp.float32).reshape(self.num_heads, d // self.num_heads)
        logits = jnp.einsum("blnd,nd->bln", heads, q) / math.sqrt(d // self.num_heads)
        logits = jnp.where(mask[..., None], logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=1)
        # All-masked rows: softmax of -inf is nan; they pool to zeros.
        weights = jnp.where(mask[..., None], weights, 0.0)
        return jnp.einsum("bln,blnd->bnd", weights, heads).reshape(b, d)


class Attention(nn.Module):
    """Pre-norm multi-head attention over the pixels of a feature map.

    Without `context` it is self-attention. With `context` [B, L, D] (text
    tokens or context-image memory) it is cross-attention; a learned null
    key/value is always attended so fully masked rows (dropped conditions)
    stay well defined. The output projection is zero-initialised, so adding
    the layer to a trained model leaves its output unchanged.
    """

    num_heads: int
    head_dim: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernels=self.kernels)
        inner = self.num_heads * self.head_dim
        xn = group_norm(c, param_dtype=self.param_dtype)(x).astype(self.dtype)
        tokens = xn.reshape(b, h * w, c)
        q = dense(inner, ("embed", "heads"), name="query", use_bias=False, **kw)(tokens)
        source, mask = (tokens, None) if context is None else (context, context_mask)
        k = dense(inner, ("embed", "heads"), name="key", use_bias=False, **kw)(source)
        v = dense(inner, ("embed", "heads"), name="value", use_bias=False, **kw)(source)
        if context is not None:
            k, v, mask = self._with_null(k, v, mask)
        split = lambda t: t.reshape(b, t.shape[1], self.num_heads, self.head_dim)  # noqa: E731
        out = attention(split(q), split(k), split(v), mask, self.kernels)
        out = out.reshape(b, h * w, inner)
        out = dense(c, ("heads", "embed"), name="out", zero_init=True, **kw)(out)
        return constrain_image(x + out.reshape(b, h, w, c))

    def _with_null(self, k, v, mask):
        inner = k.shape[-1]
        null = self.param(
            "null_kv",
            nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (None, None, "heads")
            ),
            (2, 1, inner),
            self.param_dtype,
        ).astype(k.dtype)
        b = k.shape[0]
        k = jnp.concatenate([jnp.broadcast_to(null[0], (b, 1, inner)), k], axis=1)
        v = jnp.concatenate([jnp.broadcast_to(null[1], (b, 1, inner)), v], axis=1)
        if mask is None:
            mask = jnp.ones(k.shape[:2], bool)
        else:
            mask = jnp.concatenate([jnp.ones((b, 1), bool), mask.astype(bool)], axis=1)
        return k, v, mask
