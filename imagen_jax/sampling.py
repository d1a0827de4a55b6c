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


def make_generate_fn(
    model: Imagen, config: ml_collections.ConfigDict, sampler: str | None = None
) -> Callable:
    """Returns jitted `generate(params, tokens, mask, rng, num_steps, scale)`.

    Output: images in [-1, 1], `[B, R, R, 3]` float32.
    """
    d = config.diffusion
    sampler = sampler or config.sample.sampler
    names = samplers.get_sampler_names()
    if sampler not in names:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {names}")
    schedule_fn = schedules.get_schedule(d.schedule)
    res = config.data.resolution

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

        noise_rng, sample_rng = jax.random.split(rng)
        x_t = jax.random.normal(noise_rng, (tokens.shape[0], res, res, 3), jnp.float32)
        return samplers.sample(
            denoise_fn,
            sample_rng,
            x_t,
            num_steps,
            sampler=sampler,
            schedule_fn=schedule_fn,
            clip_x0=config.sample.clip_x0,
        )

    return jax.jit(generate)


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
    """[-1, 1] float images -> uint8."""
    x = np.asarray(images, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
