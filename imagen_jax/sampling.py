"""Text-to-image generation with classifier-free guidance, one jitted program.

The number of steps and the guidance scale are traced arguments: a server or
a sweep changes them without recompiling. The sampler name is static.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax.diffusion import guidance, losses, samplers, schedules
from imagen_jax.models.imagen import Imagen


def _make_runner(config: ml_collections.ConfigDict, sampler: str | None) -> Callable:
    """`run(denoise_fn, rng, batch, num_steps)`: the configured sampler from noise.

    Raises:
      ValueError: unknown sampler name (checked here, before any tracing).
    """
    sampler = sampler or config.sample.sampler
    names = samplers.get_sampler_names()
    if sampler not in names:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {names}")
    schedule_fn = schedules.get_schedule(config.diffusion.schedule)
    res = config.data.resolution

    def run(denoise_fn, rng, batch, num_steps):
        noise_rng, sample_rng = jax.random.split(rng)
        x_t = jax.random.normal(noise_rng, (batch, res, res, 3), jnp.float32)
        return samplers.sample(
            denoise_fn,
            sample_rng,
            x_t,
            num_steps,
            sampler=sampler,
            schedule_fn=schedule_fn,
            clip_x0=config.sample.clip_x0,
        )

    return run


def make_generate_fn(
    model: Imagen, config: ml_collections.ConfigDict, sampler: str | None = None
) -> Callable:
    """Returns jitted `generate(params, tokens, mask, rng, num_steps, scale)`.

    Output: images in [-1, 1], `[B, R, R, 3]` float32.
    """
    d = config.diffusion
    run = _make_runner(config, sampler)

    def generate(params, tokens, mask, rng, num_steps, scale):
        text = model.apply({"params": params}, tokens, mask, method=Imagen.encode_text)
        both_text = jnp.concatenate([text, text])
        both_mask = jnp.concatenate([mask, jnp.zeros_like(mask)])

        def denoise_fn(z, logsnr, step_index):
            del step_index
            zz, ll = jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr])
            out = model.apply(
                {"params": params}, zz, ll, both_text, both_mask, method=Imagen.denoise
            )
            x0 = losses.predict_x0(out, zz, ll, d.param)
            cond, uncond = jnp.split(x0, 2)
            return guidance.cfg(cond, uncond, scale)

        return run(denoise_fn, rng, tokens.shape[0], num_steps)

    return jax.jit(generate)


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
    """[-1, 1] float images -> uint8."""
    x = np.asarray(images, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_instruction_generate_fn(
    model: Imagen, config: ml_collections.ConfigDict, sampler: str | None = None
) -> Callable:
    """Jitted `generate(params, batch, rng, num_steps, s_text, s_image, oscillate)`.

    `batch` holds instruction arrays (`text_tokens`, `text_mask`, `ctx_*`,
    `cond_image`, `cond_image_mask`). Guidance is InstructPix2Pix's dual rule
    over (input image) and (text + context):
    e = e(0,0) + s_T [e(I,TC) - e(I,0)] + s_I [e(I,0) - e(0,0)]; without an
    input image it is plain classifier-free guidance. With `oscillate` > 0 the
    scales apply on even steps only (Instruct-Imagen). All scales are traced.
    """
    d = config.diffusion
    run = _make_runner(config, sampler)

    def generate(params, batch, rng, num_steps, s_text, s_image, oscillate):
        variables = {"params": params}
        b = batch["text_tokens"].shape[0]
        off = jnp.zeros((b,), bool)
        # Three branches, stacked on the batch: (I, T+C), (I, -), (-, -).
        masks = {
            "text_mask": jnp.concatenate(
                [
                    batch["text_mask"],
                    batch["text_mask"] & off[:, None],
                    batch["text_mask"] & off[:, None],
                ]
            ),
            "ctx_mask": jnp.concatenate(
                [
                    batch["ctx_mask"],
                    batch["ctx_mask"] & off[:, None],
                    batch["ctx_mask"] & off[:, None],
                ]
            ),
            "cond_keep": jnp.concatenate(
                [batch["cond_image_mask"], batch["cond_image_mask"], off]
            ),
        }
        tripled = jax.tree.map(lambda x: jnp.concatenate([x, x, x]), batch)
        cond = model.apply(variables, tripled, masks, method=Imagen.condition)
        text, text_mask = cond.pop("text"), cond.pop("text_mask")

        def denoise_fn(z, logsnr, step_index):
            zz, ll = jnp.concatenate([z, z, z]), jnp.concatenate([logsnr] * 3)
            out = model.apply(
                variables, zz, ll, text, text_mask, method=Imagen.denoise, **cond
            )
            e_it, e_i0, e_00 = jnp.split(losses.predict_x0(out, zz, ll, d.param), 3)
            on = jnp.logical_or(oscillate <= 0, jnp.mod(step_index, 2) == 0)
            st, si = jnp.where(on, s_text, 1.0), jnp.where(on, s_image, 1.0)
            return guidance.dual_guidance(e_00, e_i0, e_it, st, si)

        return run(denoise_fn, rng, b, num_steps)

    return jax.jit(generate)
