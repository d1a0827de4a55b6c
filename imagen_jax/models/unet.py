"""Imagen's Efficient UNet in Flax Linen (pixel space, NHWC).

ResNet blocks at every level, one scaled skip per level, self-attention and
text cross-attention only at the levels named in `attn_levels` (the lowest
resolutions) and in the middle block, timestep (log-SNR) + pooled-text
conditioning through FiLM.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax.models import layers, packing

Dtype = Any

# Allowed values of `UNetConfig.text_pool` and `UNetConfig.attn_blocks`.
TEXT_POOLS = ("mean", "attention")
ATTN_BLOCKS = ("all", "last")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Shape of the UNet.

    Attributes:
      base_channels: channels of the first level.
      channel_mults: per-level multipliers of `base_channels`; one down-sampling
        between consecutive levels.
      num_res_blocks: ResNet blocks per level (encoder and decoder alike).
      attn_levels: per-level flags: self- and text cross-attention there.
      num_heads: attention heads.
      head_dim: width of one head.
      cond_dim: width of the time + pooled-text embedding.
      dropout: dropout rate inside ResNet blocks.
      out_channels: channels predicted (3 for RGB).
      remat_policy: name of a `jax.checkpoint_policies` policy applied to every
        level, or "none".
      patch_size: space-to-depth factor of the stem (1 = none). With 2 the UNet
        runs at half resolution on 2x2 patches (as in "simple diffusion"),
        about 4x cheaper at the top level.
      text_pool: how the text becomes the vector added to the time embedding:
        "mean" (masked mean, as in Imagen) or "attention" (one learned query
        per head; starts as the mean).
      coord_channels: append (row, column) coordinate maps in [-1, 1] to the
        stem's input (CoordConv), so that "top left" has somewhere to go
        without the network first inferring position from the borders.
      attn_blocks: which ResNet blocks of an attention level are followed by
        attention: "all" (Instruct-Imagen: every block of those stages) or
        "last" (once per level, after its ResNet blocks, where imagen-pytorch
        puts its transformer block). The same with num_res_blocks=1.
      context_slots: in training, encode the context items of a batch in
        ceil(B * context_slots) slots instead of B * K (`models.packing`):
        only real items are encoded, items beyond the slots are dropped as
        if masked. 0 encodes all B * K. Sampling always encodes all.
      context_level: the encoder level whose output is the context memory
        (Python indexing: -1, the last and coarsest, is Re-Imagen's choice).
        A finer level keeps fine detail (an object's fill) that the
        bottleneck of a denoiser has little reason to carry, at h*w tokens
        per item; levels past it are not run on the context items.
      context_norm: LayerNorm the memory tokens (per token, over channels)
        before the context cross-attention reads them. The text arrives
        normalised from T5, the encoder's raw features do not.
      input_memory: the input image is also encoded as a context item
        (without text) and read by the context cross-attention beside the
        channel concat (`Imagen.condition`), so a decision about what it
        shows can gather it from anywhere in the image by attention, as the
        context items' identity is read.
      input_text: with `input_memory`, the input image is encoded with the
        instruction as its text, as a context item is with its own: the clean
        image's encoding is then modulated by (FiLM from the pooled text) and
        attends to the instruction, so a decision that compares the two (is
        the named class in the image?) can be made on the clean image, not on
        the noisy sample.
      context_item_text: add to every memory token of a context item a
        projection (zero-initialised) of that item's mean-pooled text, so the
        context cross-attention can select items by what their texts say (a
        style image, a subject's name, a control map, the instruction of the
        input image) as well as by their pixels; without it an item's text
        reaches its tokens only through the encoder's FiLM and attention.
      context_instruction: each context item is encoded with the instruction
        after its own text ("<marker> <text>" then the instruction, one
        sequence through the text encoder), as `input_text` encodes the input
        image. The role the instruction gives a marker ("the objects of
        [ref#2]") is then found by the text encoder, where the item's marker
        and the same marker in the instruction are one token, and reaches the
        item's tokens through the encoder's FiLM and attention; without it
        the denoiser must match the instruction's marker to the item's tokens
        itself. Implemented by `Imagen.encode_memory`. A sampler then encodes
        the items twice per request, with the text and without it (for the
        guidance branches with the text off), both before its loop.
      context_marker: each context item's text is followed by one token: the
        instruction's encoding at the item's marker ("... the objects of
        [ref#2] ..." read at [ref#2]), from the instruction's one encoding.
        The role the wording around a marker gives it then reaches the
        item's tokens (through the encoder's FiLM and attention) without the
        text encoder having to match the item's marker to the instruction's;
        the instruction is encoded once, not once per item. Exclusive with
        `context_instruction`. A sampler encodes the items twice per request,
        as with `context_instruction`.
      kernels: the forms of the Dense products and of attention
        (`layers.KERNELS`): "cpu" (shaped for XLA:CPU), "stock" (plain, for
        accelerators) or "auto" (by the backend). Parameters are the same.
    """

    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_levels: tuple[bool, ...] = (False, False, True)
    num_heads: int = 4
    head_dim: int = 32
    cond_dim: int = 128
    dropout: float = 0.0
    out_channels: int = 3
    remat_policy: str = "none"
    patch_size: int = 1
    text_pool: str = "mean"
    coord_channels: bool = False
    attn_blocks: str = "all"
    context_slots: float = 0.0
    context_level: int = -1
    context_norm: bool = False
    input_memory: bool = False
    input_text: bool = False
    context_item_text: bool = False
    context_instruction: bool = False
    context_marker: bool = False
    kernels: str = "auto"

    def __post_init__(self):
        if self.attn_blocks not in ATTN_BLOCKS:
            raise ValueError(
                f"attn_blocks must be one of {ATTN_BLOCKS}, got {self.attn_blocks!r}"
            )
        if self.text_pool not in TEXT_POOLS:
            raise ValueError(
                f"text_pool must be one of {TEXT_POOLS}, got {self.text_pool!r}"
            )
        if self.kernels not in layers.KERNELS:
            raise ValueError(
                f"kernels must be one of {layers.KERNELS}, got {self.kernels!r}"
            )
        if self.context_instruction and self.context_marker:
            raise ValueError(
                "context_instruction and context_marker are two ways to give the "
                "items the instruction; set one"
            )
        if self.input_text and not self.input_memory:
            raise ValueError(
                "input_text needs input_memory (it sets how that is encoded)"
            )
        if len(self.attn_levels) != len(self.channel_mults):
            raise ValueError(
                f"attn_levels {self.attn_levels} must have one flag per level of "
                f"channel_mults {self.channel_mults}"
            )
        levels = len(self.channel_mults)
        if not -levels <= self.context_level < levels:
            raise ValueError(
                f"context_level must index one of the {levels} encoder levels "
                f"(-{levels}..{levels - 1}), got {self.context_level}"
            )

    @property
    def items_read_instruction(self) -> bool:
        """Whether the context items are encoded with the instruction
        (`context_instruction` or `context_marker`)."""
        return self.context_instruction or self.context_marker

    @property
    def memory_level(self) -> int:
        """The index (>= 0) of the encoder level named by `context_level`."""
        return self.context_level % len(self.channel_mults)

    @property
    def downsample_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_mults) - 1)


class Level(nn.Module):
    """`num_res_blocks` ResNet blocks, followed by attention when asked.

    With `memory` (the encoded context items) each attention block also gets a
    context cross-attention beside the text cross-attention (Re-Imagen /
    Instruct-Imagen); it is created only then, zero-initialised.
    """

    features: int
    config: UNetConfig
    attend: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, h, cond, text, text_mask, memory, memory_mask, train: bool):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernels=cfg.kernels)
        for b in range(cfg.num_res_blocks):
            h = layers.ResBlock(self.features, cfg.dropout, **kw)(h, cond, train)
            last = b == cfg.num_res_blocks - 1
            if self.attend and (cfg.attn_blocks == "all" or last):
                h = _attend(h, text, text_mask, cfg, kw)
                if memory is not None:
                    h = layers.Attention(
                        cfg.num_heads, cfg.head_dim, name=f"ctx_attn_{b}", **kw
                    )(h, memory, memory_mask)
        return h


def _attend(h, text, text_mask, cfg: UNetConfig, kw) -> jax.Array:
    """Self-attention, then text cross-attention (`kw`: dtypes and kernels)."""
    h = layers.Attention(cfg.num_heads, cfg.head_dim, **kw)(h)
    return layers.Attention(cfg.num_heads, cfg.head_dim, **kw)(h, text, text_mask)


@flax.struct.dataclass
class Context:
    """Context items of a multi-modal instruction, padded to K per example.

    Attributes:
      images: [B, K, H, W, C] in [-1, 1].
      text: [B, K, Lc, D] encoded marker + text of each item.
      text_mask: [B, K, Lc].
      mask: [B, K]; False for padding (and dropped) items.
    """

    images: jax.Array
    text: jax.Array
    text_mask: jax.Array
    mask: jax.Array


@flax.struct.dataclass
class Memory:
    """Encoded context items: what the context cross-attention reads.

    Attributes:
      tokens: [B, K*h*w, C] features of the encoder level named by
        `UNetConfig.context_level`, item after item.
      mask: [B, K*h*w]; False on the tokens of padded (and dropped) items.
    """

    tokens: jax.Array
    mask: jax.Array


class UNet(nn.Module):
    """Predicts the diffusion target for a noisy image given log-SNR and text.

    Two methods share the stem, the encoder and the conditioning layers (made
    in `setup`; the rest of the network is inline in `__call__`):
    - `encode_context(context, train)` -> `Memory`: the context items through
      this UNet's own down-sampling stack (clean images at noise level 0, each
      conditioned on its own text, as in Re-Imagen). They do not depend on the
      noisy sample, so a sampler encodes them once per request.
    - `(z [B,H,W,C], logsnr [B], text [B,L,D], text_mask [B,L], train,
      memory=None, cond_image=None)` -> `[B,H,W,out_channels]` in `dtype`.
      `memory` feeds the context cross-attention (created only with it,
      zero-initialised). `cond_image` [B,H,W,C'] is concatenated to the input
      on channels (InstructPix2Pix); its input weights start at zero.
    """

    config: UNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        level_cls = _maybe_remat(Level, cfg.remat_policy)
        f32 = dict(dtype=jnp.float32, param_dtype=self.param_dtype, kernels=cfg.kernels)
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        self.conv_in = layers.conv(cfg.base_channels, name="conv_in", **kw)
        # Submodule names: down_1, down_2, ... and enc_0, enc_1, ...
        self.down = {
            i: layers.conv(c, strides=2, **kw) for i, c in enumerate(chans) if i > 0
        }
        self.enc = [
            level_cls(c, cfg, cfg.attn_levels[i], **kw) for i, c in enumerate(chans)
        ]
        self.time_1 = layers.dense(cfg.cond_dim, ("embed", "mlp"), name="time_1", **f32)
        self.time_2 = layers.dense(cfg.cond_dim, ("mlp", "embed"), name="time_2", **f32)
        self.pooled_text = layers.dense(
            cfg.cond_dim, ("embed", "mlp"), name="pooled_text", **f32
        )
        self.text_pool = (
            layers.AttentionPool(
                cfg.num_heads, param_dtype=self.param_dtype, name="text_pool"
            )
            if cfg.text_pool == "attention"
            else masked_mean
        )
        if cfg.context_norm:
            self.memory_norm = nn.LayerNorm(
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                scale_init=nn.with_logical_partitioning(
                    nn.initializers.ones_init(), ("embed",)
                ),
                bias_init=nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), ("embed",)
                ),
            )
        if cfg.context_item_text:
            self.item_text = layers.dense(
                chans[cfg.memory_level],
                ("embed", "mlp"),
                name="item_text",
                zero_init=True,
                **f32,
            )

    @nn.compact
    def __call__(
        self,
        z,
        logsnr,
        text,
        text_mask,
        train: bool = False,
        memory: Memory | None = None,
        cond_image=None,
    ):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        _check_resolution(z.shape, cfg.downsample_factor)
        tokens = tokens_mask = None
        if memory is not None:
            tokens, tokens_mask = memory.tokens, memory.mask
        cond = self._conditioning(logsnr, text, text_mask)
        h = self._stem(z)
        if cond_image is not None:
            _check_resolution(cond_image.shape, cfg.downsample_factor)
            x_c = space_to_depth(cond_image.astype(self.dtype), cfg.patch_size)
            h = h + layers.conv(
                cfg.base_channels, name="cond_image_in", zero_init=True, **kw
            )(x_c)
        skips = self._encode(h, cond, text, text_mask, tokens, tokens_mask, train)
        h = self._middle(skips[-1], cond, text, text_mask, tokens, tokens_mask, train)
        level_cls = _maybe_remat(Level, cfg.remat_policy)
        for i, mult in reversed(list(enumerate(cfg.channel_mults))):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = level_cls(
                cfg.base_channels * mult, cfg, cfg.attn_levels[i], name=f"dec_{i}", **kw
            )(h, cond, text, text_mask, tokens, tokens_mask, train)
            if i > 0:
                h = _upsample(h)
        h = nn.silu(layers.group_norm(h.shape[-1], param_dtype=self.param_dtype)(h))
        out = layers.conv(
            cfg.out_channels * cfg.patch_size**2, name="conv_out", zero_init=True, **kw
        )(h.astype(self.dtype))
        return depth_to_space(out, cfg.patch_size)

    def encode_context(
        self, context: Context, train: bool = False, pack: bool = True
    ) -> Memory:
        """Clean context images -> memory tokens [B, K*h*w, C] and their mask.

        `pack=False` encodes every item in training too (`context_slots` is
        sized for the context items, not for other images encoded alike).
        """
        b, k = context.mask.shape
        mask = context.mask.astype(bool)
        slots = math.ceil(b * self.config.context_slots) if train and pack else 0
        plan = packing.plan(mask, slots) if 0 < slots < b * k else None
        if plan is None:
            flat = lambda x: x.reshape((b * k,) + x.shape[2:])  # noqa: E731
        else:
            flat = functools.partial(packing.gather, packing=plan)
        text, text_mask = flat(context.text), flat(context.text_mask)
        n = text.shape[0]  # B*K, or the slots
        # Noise level 0: the largest log-SNR of the schedules.
        cond = self._conditioning(jnp.full((n,), 20.0), text, text_mask)
        h = self._stem(flat(context.images))  # [n, h0, w0, C0]
        levels = self.config.memory_level + 1
        h = self._encode(h, cond, text, text_mask, None, None, train, levels)[-1]
        if self.config.context_norm:
            h = self.memory_norm(h).astype(self.dtype)
        if self.config.context_item_text:  # each item's text on its tokens
            item = self.item_text(masked_mean(text, text_mask))  # [n, C]
            h = (h + item[:, None, None, :]).astype(self.dtype)
        if plan is not None:  # back to [B, K, h, w, C], unslotted items zero
            h, mask = packing.scatter(h, plan), plan.kept
        hw, c = h.shape[-3] * h.shape[-2], h.shape[-1]
        tokens = h.reshape(b, k * hw, c)  # [B, K*h*w, C]
        return Memory(
            tokens=nn.with_logical_constraint(tokens, layers.TOKEN_AXES),
            mask=jnp.repeat(mask, hw, axis=1),
        )

    def _conditioning(self, logsnr, text, text_mask) -> jax.Array:
        """Time (log-SNR) embedding plus the pooled text, [B, cond_dim] float32."""
        # log-SNR spans about [-20, 20]; scaled so the sinusoids resolve it.
        t_emb = layers.sinusoidal_embedding(logsnr * 50.0, self.config.cond_dim)
        t_emb = self.time_2(nn.silu(self.time_1(t_emb)))
        return t_emb + self.pooled_text(self.text_pool(text, text_mask))

    def _stem(self, x: jax.Array) -> jax.Array:
        """Patchify (and append coordinates to) an image; the first conv."""
        x = space_to_depth(x.astype(self.dtype), self.config.patch_size)
        if self.config.coord_channels:
            x = jnp.concatenate([x, coordinate_maps(x)], axis=-1)
        return self.conv_in(x)

    def _encode(
        self, h, cond, text, text_mask, tokens, tokens_mask, train, levels=None
    ) -> list:
        """The first `levels` (all) encoder levels from the stem's output; each
        level's output."""
        skips = []
        for i, level in enumerate(self.enc[:levels]):
            h = self.down[i](h) if i > 0 else h
            h = level(h, cond, text, text_mask, tokens, tokens_mask, train)
            skips.append(h)
        return skips

    def _middle(self, h, cond, text, text_mask, tokens, tokens_mask, train):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernels=cfg.kernels)
        ch = h.shape[-1]
        h = layers.ResBlock(ch, cfg.dropout, name="mid_1", **kw)(h, cond, train)
        h = _attend(h, text, text_mask, cfg, kw)
        if tokens is not None:
            h = layers.Attention(
                cfg.num_heads, cfg.head_dim, name="mid_ctx_attn", **kw
            )(h, tokens, tokens_mask)
        return layers.ResBlock(ch, cfg.dropout, name="mid_2", **kw)(h, cond, train)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of [B, L, D] over valid positions; all-masked rows give zeros."""
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def coordinate_maps(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, 2]: row and column centres in [-1, 1]."""
    b, h, w, _ = x.shape
    rows = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h * 2.0 - 1.0
    cols = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w * 2.0 - 1.0
    grid = jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1)
    return jnp.broadcast_to(grid, (b, h, w, 2)).astype(x.dtype)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/p, W/p, p*p*C] (non-overlapping p x p patches)."""
    if p == 1:
        return x
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """Inverse of `space_to_depth`."""
    if p == 1:
        return x
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c // (p * p))


def _upsample(h: jax.Array) -> jax.Array:
    b, hh, ww, c = h.shape
    return jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")


def _check_resolution(shape, factor: int) -> None:
    if len(shape) != 4 or shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"UNet input must be [B, H, W, C] with H and W divisible by {factor}; "
            f"got shape {tuple(shape)}"
        )


def _maybe_remat(cls, policy_name: str):
    if policy_name == "none":
        return cls
    policy = getattr(jax.checkpoint_policies, policy_name, None)
    if policy is None:
        raise ValueError(f"unknown remat policy {policy_name!r}")
    return nn.remat(cls, policy=policy, static_argnums=(7,))
