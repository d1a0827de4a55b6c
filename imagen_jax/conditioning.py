"""What a model is conditioned on: the one switch `config.model.conditioning`.

`build_model` reads the field once into `Imagen.conditioning`; everything
else (the batch fields, the conditioning dropout, the layers the model
creates, the sampler's guidance branches) asks the model's `Conditioning`.

    text:        text-to-image; batches carry `text_tokens`, `text_mask`.
    instruction: text + context items (encoded by the UNet's own encoder into
                 the memory of the context cross-attention) + a
                 channel-concatenated input image; batches add the
                 `INSTRUCTION_FIELDS` (DESIGN §3).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

INSTRUCTION_FIELDS = (
    "ctx_images",
    "ctx_tokens",
    "ctx_text_mask",
    "ctx_mask",
    "cond_image",
    "cond_image_mask",
)


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """One kind of conditioning.

    Attributes:
      name: its value of `config.model.conditioning`.
      instruction: the model has the context path and the input image.
      guidance_chain: the conditions classifier-free guidance adds one at a
        time (`guidance.multi_cfg`), one sampler branch per prefix: "text" is
        the text together with the context items, "image" the input image.
    """

    name: str
    instruction: bool
    guidance_chain: tuple[str, ...]

    @property
    def batch_fields(self) -> tuple[str, ...]:
        """The batch fields the model reads (besides the target `image`)."""
        text = ("text_tokens", "text_mask")
        return text + INSTRUCTION_FIELDS if self.instruction else text


TEXT = Conditioning("text", instruction=False, guidance_chain=("text",))
# InstructPix2Pix's dual guidance: the input image first, then the text.
INSTRUCTION = Conditioning(
    "instruction", instruction=True, guidance_chain=("image", "text")
)
KINDS: dict[str, Conditioning] = {c.name: c for c in (TEXT, INSTRUCTION)}


def get(name: str) -> Conditioning:
    """The conditioning called `name`.

    Raises:
      ValueError: on an unknown name.
    """
    if name not in KINDS:
        raise ValueError(
            f"unknown model conditioning {name!r}; expected one of {sorted(KINDS)}"
        )
    return KINDS[name]


def batch_shapes(
    data: ml_collections.ConfigDict, conditioning: Conditioning, batch_size: int
) -> dict[str, tuple[tuple[int, ...], type]]:
    """Shape and dtype of every field of a training batch (DESIGN §3).

    Args:
      data: the config's `data` group (resolution, text lengths, K).
      conditioning: the model's conditioning.
      batch_size: B.
    """
    b, r, d = batch_size, data.resolution, data
    shapes = {
        "image": ((b, r, r, 3), np.uint8),
        "text_tokens": ((b, d.max_text_len), np.int32),
        "text_mask": ((b, d.max_text_len), np.bool_),
    }
    if conditioning.instruction:
        k, lc = d.max_context, d.ctx_text_len
        shapes.update(
            ctx_images=((b, k, r, r, 3), np.uint8),
            ctx_tokens=((b, k, lc), np.int32),
            ctx_text_mask=((b, k, lc), np.bool_),
            ctx_mask=((b, k), np.bool_),
            cond_image=((b, r, r, 3), np.uint8),
            cond_image_mask=((b,), np.bool_),
        )
    return shapes


def condition_masks(
    batch: dict, conditioning: Conditioning, *, text, context, image
) -> dict:
    """The masks `Imagen.condition` reads, each condition kept where its flag is.

    Args:
      batch: a batch with the fields of `conditioning`.
      conditioning: the model's conditioning.
      text: [B] bool, keep the text.
      context: [B] bool, keep the context items (ignored without them).
      image: [B] bool, keep the input image (ignored without it).

    Returns:
      `text_mask` [B, L] and, for instruction models, `ctx_mask` [B, K] and
      `cond_keep` [B] (the input image is kept).
    """
    out = {"text_mask": batch["text_mask"] & text[:, None]}
    if conditioning.instruction:
        out["ctx_mask"] = batch["ctx_mask"] & context[:, None]
        out["cond_keep"] = batch["cond_image_mask"] & image
    return out
