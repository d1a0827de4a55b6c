"""The model: a T5 text encoder feeding the Efficient UNet.

`setup()` is used because the model exposes several methods: a sampler
encodes the conditions once per request (`condition`: the text, and the
context memory of instruction models) and calls `denoise` at every step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from imagen_jax import conditioning as conditioning_lib
from imagen_jax.models import layers, t5
from imagen_jax.models.unet import Context, Memory, UNet, UNetConfig

Dtype = Any


def encoding_at(tokens, mask, encoding, wanted) -> tuple[jax.Array, jax.Array]:
    """A text's encoding [B,L,D] (tokens and mask [B,L]) averaged over the
    unmasked positions of each wanted token id (`wanted` [B,K]): [B,K,D]
    (zeros where it does not occur) and the occurrences [B,K]."""
    at = (tokens[:, None, :] == wanted[:, :, None]) & mask[:, None, :].astype(bool)
    count = at.sum(-1)  # [B,K]
    weight = at.astype(jnp.float32) / jnp.maximum(count, 1)[..., None]
    read = jnp.einsum("bkl,bld->bkd", weight, encoding.astype(jnp.float32))
    return read, count


def item_markers(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Each context item's marker id from its "<marker> <text>" tokens and mask
    [..., Lc]: [...], -1 where the item has no token.

    The marker is the item's highest id: tokenizers place the extra tokens
    after the base vocabulary, and an item's text names no marker but its own
    (`instructions.validate`). It is not always the first token: sentencepiece
    writes the space before it as a `▁` piece of its own.
    """
    return jnp.max(jnp.where(mask.astype(bool), tokens, -1), axis=-1)


def marker_log_probs(embedding: jax.Array, read: jax.Array) -> jax.Array:
    """Log-probabilities [..., V] of every token given encodings `read` [..., D]:
    logits read . (token embeddings [V, D], no gradient) / sqrt(D)."""
    table = jax.lax.stop_gradient(embedding).astype(jnp.float32)
    logits = jnp.einsum("...d,vd->...v", read, table) * table.shape[-1] ** -0.5
    return jax.nn.log_softmax(logits)


# The forms of `marker_text_loss` (config.text.marker_loss_form).
MARKER_LOSS_FORMS = ("text", "contrast")


def marker_reading(
    embedding, tokens, mask, encoding, ctx_tokens, ctx_text_mask, ctx_mask
):
    """Log-probabilities [B,K,V] of tokens at each item's marker in the
    instruction, and the weight [B,K,Lc] of each item text token that counts:
    the item kept, its marker present, the marker itself not scored."""
    marker = item_markers(ctx_tokens, ctx_text_mask)  # [B,K]
    read, count = encoding_at(tokens, mask, encoding, marker)
    weight = (
        ctx_text_mask.astype(bool)
        & (ctx_tokens != marker[..., None])
        & ctx_mask.astype(bool)[..., None]
        & (count > 0)[..., None]
    ).astype(jnp.float32)
    return marker_log_probs(embedding, read), weight


def marker_text_loss(
    embedding: jax.Array,
    tokens: jax.Array,
    mask: jax.Array,
    encoding: jax.Array,
    ctx_tokens: jax.Array,
    ctx_text_mask: jax.Array,
    ctx_mask: jax.Array,
    form: str = "text",
) -> jax.Array:
    """How well the instruction's encoding at each context item's marker
    names the item's own text.

    A text-only objective standing in for what a pretrained T5 brings: where
    an item's text says its role ("the content", "style image"), the marker's
    encoding must read that role from the instruction's wording around it.
    Tokens are scored by logits (encoding at the marker) . (token embeddings)
    / sqrt(D); the embeddings are only read (no gradient). Items whose marker
    is absent from the (possibly dropped) instruction, or that are masked
    out, add nothing.

    `form`:
      "text": the mean cross-entropy of the items' text tokens. Most of it
        is what items' texts say in general, the same at every marker.
      "contrast": for each pair of an example's items, the items' texts
        under their own markers against under each other's (the summed
        log-probabilities of their tokens; logistic loss on right minus
        swapped). What the items' texts share, and how long or likely each
        is, cancels: only what tells the two items apart, read at the right
        marker, lowers it. Examples with fewer than two items counted add
        nothing.

    Args:
      embedding: the text encoder's token embeddings [V, D].
      tokens, mask: the instruction [B, L] (mask off where it is dropped).
      encoding: its encoding [B, L, D].
      ctx_tokens, ctx_text_mask: the items' "<marker> <text>" tokens and
        mask [B, K, Lc]; the marker itself is not scored.
      ctx_mask: [B, K], True at items kept.

    Returns:
      The scalar loss (0 where no item counts).
    """
    logp, weight = marker_reading(
        embedding, tokens, mask, encoding, ctx_tokens, ctx_text_mask, ctx_mask
    )
    ids = ctx_tokens.astype(jnp.int32)
    if form == "text":
        picked = jnp.take_along_axis(logp, ids, axis=-1)
        return -(picked * weight).sum() / jnp.maximum(weight.sum(), 1.0)
    if form != "contrast":
        raise ValueError(f"unknown marker loss form {form!r}; use 'text' or 'contrast'")
    B, K, Lc = ids.shape
    # score[b, k, j]: item j's text summed under marker k's reading.
    every = jnp.broadcast_to(ids[:, None], (B, K, K, Lc)).reshape(B, K, K * Lc)
    lp = jnp.take_along_axis(logp, every, axis=-1).reshape(B, K, K, Lc)
    score = (lp * weight[:, None]).sum(-1)
    own = jnp.diagonal(score, 0, 1, 2)  # [B,K]
    # margin[b, k, j]: items k and j at their own markers, minus swapped.
    margin = own[:, :, None] + own[:, None, :] - score - jnp.swapaxes(score, 1, 2)
    counted = weight.sum(-1) > 0  # [B,K]
    pairs = (
        counted[:, :, None] & counted[:, None, :] & jnp.triu(jnp.ones((K, K), bool), 1)
    )
    loss = jax.nn.softplus(-margin)
    return (loss * pairs).sum() / jnp.maximum(pairs.sum(), 1.0)


class Imagen(nn.Module):
    """Text encoder + UNet; what it is conditioned on is `conditioning`."""

    unet_config: UNetConfig
    text_config: t5.T5Config
    conditioning: conditioning_lib.Conditioning = conditioning_lib.TEXT
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.text_encoder = t5.T5Encoder(self.text_config)
        self.unet = UNet(
            self.unet_config, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def encode_text(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """[..., L] int tokens and mask -> [..., L, D] embeddings (float32)."""
        lead = tokens.shape[:-1]
        flat = tokens.reshape(-1, tokens.shape[-1])
        out = self.text_encoder(flat, mask.reshape(flat.shape)).astype(jnp.float32)
        return out.reshape(lead + out.shape[-2:])

    def encode_items_text(
        self,
        tokens: jax.Array,
        text_mask: jax.Array,
        instruction: tuple[jax.Array, ...] | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The context items' texts (tokens and mask [B,K,Lc]) encoded as the
        memory reads them: [B,K,Lc',D] and the mask [B,K,Lc'].

        `instruction` is the instruction's tokens [B,L] and mask [B,L] (off
        where the text is dropped) and, for `context_marker`, its encoding
        [B,L,D]. With `UNetConfig.context_instruction` the instruction follows
        each item's text: item k reads [B,K,Lc+L]. With
        `UNetConfig.context_marker` item k's text is followed by one token:
        the instruction's encoding at item k's marker (`item_markers`),
        averaged over the marker's occurrences and masked where it has none.
        """
        cfg = self.unet_config
        if cfg.items_read_instruction and instruction is None:
            raise ValueError(
                "context_instruction / context_marker: the context items are "
                "encoded with the instruction; pass instruction=(tokens, mask"
                + (", encoding)" if cfg.context_marker else ")")
            )
        if cfg.context_marker:
            if len(instruction) != 3:
                raise ValueError(
                    "context_marker reads the instruction's encoding; pass "
                    "instruction=(tokens, mask, encoding)"
                )
            return self._items_text_with_markers(tokens, text_mask, *instruction)
        if cfg.context_instruction:
            k = tokens.shape[1]
            extra, extra_mask = (
                jnp.broadcast_to(x[:, None], x.shape[:1] + (k,) + x.shape[1:])
                for x in instruction[:2]
            )
            tokens = jnp.concatenate([tokens, extra.astype(tokens.dtype)], axis=-1)
            text_mask = jnp.concatenate(
                [text_mask.astype(bool), extra_mask.astype(bool)], axis=-1
            )
        return self.encode_text(tokens, text_mask), text_mask

    def _items_text_with_markers(
        self, tokens, text_mask, instr_tokens, instr_mask, instr_text
    ) -> tuple[jax.Array, jax.Array]:
        """`encode_items_text` for `UNetConfig.context_marker`."""
        text = self.encode_text(tokens, text_mask)  # [B,K,Lc,D]
        marker = item_markers(tokens, text_mask)  # [B,K]
        read, count = encoding_at(instr_tokens, instr_mask, instr_text, marker)
        text = jnp.concatenate([text, read[:, :, None]], axis=2)
        mask = jnp.concatenate(
            [text_mask.astype(bool), (count > 0)[..., None]], axis=-1
        )
        return text, mask

    def encode_memory(
        self,
        images: jax.Array,
        tokens: jax.Array,
        text_mask: jax.Array,
        mask: jax.Array,
        train: bool = False,
        instruction: tuple[jax.Array, jax.Array] | None = None,
    ) -> Memory:
        """Context items (uint8 or [-1, 1] images [B,K,H,W,3], tokens [B,K,Lc],
        their text mask [B,K,Lc], item mask [B,K]) -> the UNet's memory; each
        item's text as `encode_items_text` encodes it."""
        text, text_mask = self.encode_items_text(tokens, text_mask, instruction)
        if images.dtype == jnp.uint8:
            images = images.astype(jnp.float32) / 127.5 - 1.0
        context = Context(images=images, text=text, text_mask=text_mask, mask=mask)
        return self.unet.encode_context(context, train)

    def condition(self, batch: dict, masks: dict, train: bool = False) -> dict:
        """Encoded conditions of a batch, as keyword arguments of `denoise`.

        `masks` (`conditioning.condition_masks`) holds the (possibly dropped)
        `text_mask` and, for instruction models, `ctx_mask` and `cond_keep`
        (input image kept, [B] bool). A batch with `text_embeddings`
        [B, L, D] (stored by the frozen encoder, `text.precompute`) is not
        encoded again; a dropped text is masked out of the UNet either way.
        """
        if "text_embeddings" in batch:
            text = batch["text_embeddings"].astype(jnp.float32)
        else:
            text = self.encode_text(batch["text_tokens"], masks["text_mask"])
        cond = {"text": text, "text_mask": masks["text_mask"]}
        if self.conditioning.instruction:
            instruction = None
            if self.unet_config.items_read_instruction:
                if "text_tokens" not in batch:
                    raise ValueError(
                        "context_instruction / context_marker needs the "
                        "instruction's text_tokens in the batch (precomputed "
                        "text embeddings alone do not give the context items "
                        "the instruction to read)"
                    )
                instruction = (batch["text_tokens"], masks["text_mask"], text)
            cond["memory"] = self.encode_memory(
                batch["ctx_images"],
                batch["ctx_tokens"],
                batch["ctx_text_mask"],
                masks["ctx_mask"],
                train,
                instruction,
            )
            image = batch["cond_image"].astype(jnp.float32) / 127.5 - 1.0
            cond["cond_image"] = image * masks["cond_keep"][:, None, None, None]
            if self.unet_config.input_memory:
                cond["input_memory"] = self.encode_input(
                    cond["cond_image"],
                    masks["cond_keep"],
                    text,
                    masks["text_mask"],
                    train,
                )
        return cond

    def encode_input(
        self,
        image: jax.Array,
        keep: jax.Array,
        text: jax.Array,
        text_mask: jax.Array,
        train: bool = False,
    ) -> Memory:
        """The input image ([-1, 1], [B,H,W,3]) as one context item, masked
        where `keep` [B] is False (`UNetConfig.input_memory`). Its text is the
        instruction (`text` [B,L,D] under `text_mask` [B,L]) with
        `UNetConfig.input_text`, else none."""
        if not self.unet_config.input_text:
            text, text_mask = text[:, :1] * 0.0, jnp.zeros_like(text_mask[:, :1])
        context = Context(
            images=image[:, None],
            text=text[:, None],
            text_mask=text_mask[:, None].astype(bool),
            mask=keep[:, None],
        )
        return self.unet.encode_context(context, train, pack=False)

    def denoise(
        self,
        z,
        logsnr,
        text,
        text_mask,
        train: bool = False,
        memory: Memory | None = None,
        cond_image=None,
        input_memory: Memory | None = None,
    ) -> jax.Array:
        if input_memory is not None:  # read after the context items' tokens
            memory = jax.tree.map(
                lambda a, b: jnp.concatenate([a, b], axis=1), memory, input_memory
            )
        out = self.unet(
            z, logsnr, text, text_mask, train, memory=memory, cond_image=cond_image
        )
        return out.astype(jnp.float32)

    def forward(self, z, logsnr, batch: dict, train: bool = False) -> jax.Array:
        """Denoises `z` under every condition of the model (none dropped)."""
        keep = jnp.ones(batch["text_mask"].shape[:1], bool)
        masks = conditioning_lib.condition_masks(
            batch, self.conditioning, text=keep, context=keep, image=keep
        )
        cond = self.condition(batch, masks, train)
        text, text_mask = cond.pop("text"), cond.pop("text_mask")
        return self.denoise(z, logsnr, text, text_mask, train, **cond)

    def __call__(self, z, logsnr, tokens, mask, train: bool = False) -> jax.Array:
        return self.denoise(z, logsnr, self.encode_text(tokens, mask), mask, train)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_from_name(name: str) -> Dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def text_encoder_config(
    text: ml_collections.ConfigDict, vocab_size: int, dtype: Dtype
) -> t5.T5Config:
    """The T5 of `config.text` for a tokenizer of `vocab_size` ids.

    `text.vocab_size` (a pretrained encoder's embedding rows; 0 or absent:
    the tokenizer's) must cover the tokenizer's ids.
    """
    rows = text.get("vocab_size", 0) or vocab_size
    if vocab_size > rows:
        raise ValueError(
            f"the tokenizer has {vocab_size} ids (markers included) but "
            f"config.text.vocab_size is {rows}: the text encoder cannot embed them"
        )
    return t5.T5Config(
        vocab_size=rows,
        d_model=text.d_model,
        d_kv=text.d_kv,
        d_ff=text.d_ff,
        num_layers=text.num_layers,
        num_heads=text.num_heads,
        # Absent from configs saved before pretrained encoders: T5 v1.1's.
        feed_forward_proj=text.get("feed_forward_proj", "gated-gelu"),
        relative_attention_num_buckets=text.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=text.get(
            "relative_attention_max_distance", 128
        ),
        relative_attention_init_scale=text.get("relative_attention_init_scale", 1.0),
        layer_norm_epsilon=text.get("layer_norm_epsilon", 1e-6),
        dtype=dtype,
    )


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> Imagen:
    """Builds the model named by `config.model.name` from the config."""
    if config.model.name != "imagen":
        raise ValueError(
            f"unknown config.model.name {config.model.name!r}; expected 'imagen'"
        )
    m, tx = config.model, config.text
    dtype = dtype_from_name(m.dtype)
    unet_config = UNetConfig(
        base_channels=m.base_channels,
        channel_mults=tuple(m.channel_mults),
        num_res_blocks=m.num_res_blocks,
        attn_levels=tuple(m.attn_levels),
        num_heads=m.num_heads,
        head_dim=m.head_dim,
        cond_dim=m.cond_dim,
        dropout=m.dropout,
        remat_policy=m.remat_policy,
        patch_size=m.patch_size,
        text_pool=m.get("text_pool", "mean"),
        coord_channels=m.get("coord_channels", False),
        attn_blocks=m.get("attn_blocks", "all"),
        context_slots=m.get("context_slots", 0.0),
        context_level=m.get("context_level", -1),
        context_norm=m.get("context_norm", False),
        input_memory=m.get("input_memory", False),
        input_text=m.get("input_text", False),
        context_item_text=m.get("context_item_text", False),
        context_instruction=m.get("context_instruction", False),
        context_marker=m.get("context_marker", False),
        # Resolved now, after JAX has started: the model records its choice.
        kernels=layers.resolve_kernels(m.get("kernels", "auto")),
    )
    return Imagen(
        unet_config,
        text_encoder_config(tx, vocab_size, dtype),
        conditioning=conditioning_lib.get(m.conditioning),
        dtype=dtype,
    )
