"""Generation with classifier-free guidance, one jitted program per model.

One entry point, `make_generate_fn`, for every kind of model
(`config.model.conditioning`). The conditions of a request are encoded once,
outside the sampler's loop: the text and, for instruction models, the
context items' memory (the UNet's encoder over K clean images) and the input
image. Each guidance branch is that one encoding with some conditions masked
off, and the branches are stacked on the batch of one denoiser call per
step: two for text-to-image (cfg), three for instructions (dual guidance,
or Re-Imagen's interleaved guidance: all, no text, no context items).

The number of steps and the guidance scales are traced arguments: a server or
a sweep changes them without recompiling. The sampler name is static.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax import conditioning as conditioning_lib
from imagen_jax.diffusion import guidance, losses, samplers, schedules
from imagen_jax.models.imagen import Imagen
from imagen_jax.text.tokenizers import Tokenizer


def draw_noise(
    rng: jax.Array, rows: int, resolution: int
) -> tuple[jax.Array, jax.Array]:
    """(x_T [rows, R, R, 3], the sampler's per-step key) drawn from `rng`, as
    every generate call draws them; the first n rows are the x_T of n images
    (a row's random bits do not depend on the row count)."""
    noise_rng, sample_rng = jax.random.split(rng)
    shape = (rows, resolution, resolution, 3)
    return jax.random.normal(noise_rng, shape, jnp.float32), sample_rng


def make_sampler_fn(config: ml_collections.ConfigDict, sampler: str | None) -> Callable:
    """`sample(denoise_fn, rng, x_T, num_steps)`: the configured sampler and
    schedule from the noise x_T (the server gives each request's own).

    Raises:
      ValueError: unknown sampler name (checked here, before any tracing).
    """
    sampler = sampler or config.sample.sampler
    names = samplers.get_sampler_names()
    if sampler not in names:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {names}")
    schedule_fn = schedules.get_schedule(
        config.diffusion.schedule, config.data.resolution
    )

    def sample(denoise_fn, rng, x_t, num_steps):
        return samplers.sample(
            denoise_fn,
            rng,
            x_t,
            num_steps,
            sampler=sampler,
            schedule_fn=schedule_fn,
            clip_x0=config.sample.clip_x0,
        )

    return sample


def _make_runner(config: ml_collections.ConfigDict, sampler: str | None) -> Callable:
    """`run(denoise_fn, rng, batch, num_steps)`: the configured sampler from noise."""
    sample = make_sampler_fn(config, sampler)

    def run(denoise_fn, rng, batch, num_steps):
        x_t, sample_rng = draw_noise(rng, batch, config.data.resolution)
        return sample(denoise_fn, sample_rng, x_t, num_steps)

    return run


# Guidance rules (`make_generate_fn`): "chain" adds the conditions of the
# model's guidance chain one at a time (`guidance.multi_cfg`: cfg for
# text-to-image, InstructPix2Pix's dual rule for instructions);
# "interleaved" is Re-Imagen's (`guidance.interleaved_guidance`): each step
# and example guides on the text or on the context items, the other kept.
RULES = ("chain", "interleaved")


def _keep_only(
    cond: dict, text: bool, context: bool, image: bool, textless=None
) -> dict:
    """Encoded conditions with the text, the context items' memory and the
    input image kept or masked off.

    A masked condition's encoding is never read (cross-attention and pooling
    ignore masked tokens; the input image is zeroed, as in training). Items
    encoded with the instruction (`UNetConfig.input_text`,
    `UNetConfig.context_instruction`, `UNetConfig.context_marker`) are
    replaced where the text is off by their encodings without it in
    `textless` (`_textless`), as training encodes them when the text is
    dropped.
    """
    if textless is not None and not text:
        cond = dict(cond, **textless)
    out = dict(cond, text_mask=cond["text_mask"] & text)
    if "memory" in cond:
        out["memory"] = cond["memory"].replace(mask=cond["memory"].mask & context)
    if "cond_image" in cond:
        out["cond_image"] = cond["cond_image"] * image
    if "input_memory" in cond:  # the input image read as a context item
        memory = cond["input_memory"]
        out["input_memory"] = memory.replace(mask=memory.mask & image)
    return out


def _textless(model: Imagen, variables, batch, cond, masks) -> dict | None:
    """The encodings that read the instruction, encoded without it (the text
    off): `memory` with `UNetConfig.context_instruction` or `context_marker`,
    `input_memory` with `UNetConfig.input_text`; None when no encoding reads
    it."""
    unet, off = model.unet_config, jnp.zeros_like(cond["text_mask"])
    out = {}
    if "memory" in cond and unet.items_read_instruction:
        out["memory"] = model.apply(
            variables,
            *(batch[k] for k in ("ctx_images", "ctx_tokens", "ctx_text_mask")),
            masks["ctx_mask"],
            instruction=(batch["text_tokens"], off, cond["text"]),
            method=Imagen.encode_memory,
        )
    if "input_memory" in cond and unet.input_text:
        out["input_memory"] = model.apply(
            variables,
            cond["cond_image"],
            masks["cond_keep"],
            cond["text"],
            off,
            method=Imagen.encode_input,
        )
    return out or None


def _branches(kind: conditioning_lib.Conditioning, rule: str) -> list[dict]:
    """Per guidance branch, which of text / context / image it keeps.

    "chain": one branch per prefix of the guidance chain, whose "text" is the
    text together with the context items. "interleaved": all conditions, all
    but the text, all but the context items (the input image always kept).
    """
    if rule == "interleaved":
        return [
            dict(text=True, context=True, image=True),
            dict(text=False, context=True, image=True),
            dict(text=True, context=False, image=True),
        ]
    chain = kind.guidance_chain
    out = []
    for k in range(len(chain) + 1):
        kept = set(chain[:k])
        out.append(
            dict(text="text" in kept, context="text" in kept, image="image" in kept)
        )
    return out


def _check_rule(kind: conditioning_lib.Conditioning, rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown guidance rule {rule!r}; expected one of {RULES}")
    if rule == "interleaved" and not kind.instruction:
        raise ValueError(
            "interleaved guidance (text vs context items) needs an instruction "
            f"model; this model is {kind.name!r}-conditioned"
        )


def guided_denoiser(
    model: Imagen,
    param: str,
    params,
    batch: dict,
    scales: dict[str, jax.typing.ArrayLike],
    oscillate: jax.typing.ArrayLike,
    *,
    rule: str = "chain",
    eta: jax.typing.ArrayLike = 0.5,
    rng: jax.Array | None = None,
) -> samplers.DenoiseFn:
    """The guided x0 denoiser of one request; its conditions are encoded here.

    Args:
      model: the model; `model.conditioning` names the conditions and the
        guidance chain (`guidance.multi_cfg`, one branch per prefix).
      param: the model's parameterisation ("v", "eps" or "x0").
      params: its parameters.
      batch: the fields of `model.conditioning.batch_fields` (others ignored).
      scales: guidance scale per condition of the chain ("text", "image");
        the interleaved rule uses the "text" scale for both of its guides.
      oscillate: > 0: the scales apply on even steps only (Instruct-Imagen).
      rule: one of `RULES`.
      eta: "interleaved": the probability, per step and example, of guiding
        on the text (else on the context items).
      rng: "interleaved": the key of those coins (folded with the step).

    Returns:
      `denoise_fn(z, logsnr, step_index)` -> guided x0 [B, H, W, 3].

    Raises:
      ValueError: the batch lacks a field the model needs; an unknown rule,
        or "interleaved" for a model without context items or without `rng`.
    """
    kind = model.conditioning
    _check_rule(kind, rule)
    if rule == "interleaved" and rng is None:
        raise ValueError("interleaved guidance needs rng, the key of its coins")
    missing = sorted(set(kind.batch_fields) - set(batch))
    if missing:
        raise ValueError(
            f"a {kind.name!r}-conditioned model needs the batch fields {missing}"
        )
    variables = {"params": params}
    keep = jnp.ones(batch["text_mask"].shape[:1], bool)
    masks = conditioning_lib.condition_masks(
        batch, kind, text=keep, context=keep, image=keep
    )
    cond = model.apply(variables, batch, masks, method=Imagen.condition)
    textless = _textless(model, variables, batch, cond, masks)
    branches = _branches(kind, rule)
    stacked = jax.tree.map(
        lambda *xs: jnp.concatenate(xs),
        *[_keep_only(cond, **b, textless=textless) for b in branches],
    )
    n = len(branches)
    chain = kind.guidance_chain

    def scale_at(name, step_index):
        return jnp.where(
            jnp.asarray(oscillate) > 0,
            guidance.oscillating_scale(step_index, scales[name]),
            jnp.asarray(scales[name], jnp.float32),
        )

    def denoise_fn(z, logsnr, step_index):
        zz, ll = jnp.concatenate([z] * n), jnp.concatenate([logsnr] * n)
        out = model.apply(variables, zz, ll, method=Imagen.denoise, **stacked)
        x0 = jnp.split(losses.predict_x0(out, zz, ll, param), n)
        if rule == "interleaved":
            coins = jax.random.fold_in(rng, step_index)
            return guidance.interleaved_guidance(
                *x0, scale_at("text", step_index), coins, eta
            )
        step_scales = {name: scale_at(name, step_index) for name in chain}
        prefixes = [frozenset(chain[:k]) for k in range(n)]
        return guidance.multi_cfg(dict(zip(prefixes, x0)), chain, step_scales)

    return denoise_fn


def make_generate_fn(
    model: Imagen,
    config: ml_collections.ConfigDict,
    sampler: str | None = None,
    rule: str = "chain",
) -> Callable:
    """Jitted `generate(params, batch, rng, num_steps, s_text, s_image=1,
    oscillate=0, eta=0.5)` -> images in [-1, 1], `[B, R, R, 3]` float32.

    `batch` holds the fields of `model.conditioning.batch_fields`: the text
    (`text_tokens`, `text_mask`) and, for instruction models, the context
    items and the input image (`ctx_*`, `cond_image`, `cond_image_mask`).
    With `rule` "chain", guidance adds the conditions of
    `model.conditioning.guidance_chain` one at a time: text-to-image is
    classifier-free guidance with scale `s_text` (`s_image` plays no part);
    instructions use InstructPix2Pix's dual rule
    e = e(0,0) + s_T [e(I,TC) - e(I,0)] + s_I [e(I,0) - e(0,0)] over the input
    image I and the text + context TC. With "interleaved" (Re-Imagen), each
    step and example guides with `s_text` on the text (probability `eta`) or
    on the context items, the input image kept (`s_image` plays no part).
    With `oscillate` > 0 the scales apply on even steps only
    (Instruct-Imagen). Steps, scales and eta are traced; the rule is static.
    """
    run = _make_runner(config, sampler)
    _check_rule(model.conditioning, rule)
    param = config.diffusion.param

    def generate(
        params, batch, rng, num_steps, s_text, s_image=1.0, oscillate=0, eta=0.5
    ):
        scales = {"text": s_text, "image": s_image}
        coins = None
        if rule == "interleaved":
            rng, coins = jax.random.split(rng)
        denoise_fn = guided_denoiser(
            model,
            param,
            params,
            batch,
            scales,
            oscillate,
            rule=rule,
            eta=eta,
            rng=coins,
        )
        return run(denoise_fn, rng, batch["text_tokens"].shape[0], num_steps)

    return jax.jit(generate)


def prompt_batch(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    config: ml_collections.ConfigDict,
    kind: conditioning_lib.Conditioning,
) -> dict[str, np.ndarray]:
    """A `generate` batch of plain text prompts for a `kind` model: instruction
    models get them with no context item and no input image."""
    tokens, mask = tokenizer.encode_batch(list(texts), config.data.max_text_len)
    shapes = conditioning_lib.batch_shapes(config.data, kind, len(texts))
    batch = {"text_tokens": tokens, "text_mask": mask}
    for name in kind.batch_fields:
        batch.setdefault(name, np.zeros(*shapes[name]))
    return batch


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
    """[-1, 1] float images -> uint8."""
    x = np.asarray(images, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
