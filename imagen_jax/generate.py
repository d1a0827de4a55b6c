"""Answering one request with a trained model: `launch.sample` and serving."""

from __future__ import annotations

import jax
import numpy as np

from imagen_jax import inference, sampling
from imagen_jax.instructions import Request


def generate_images(loaded: inference.Loaded, request: Request) -> np.ndarray:
    """Samples `request.num_images` images -> uint8 [N, R, R, 3].

    Raises:
      ValueError: the request needs inputs this model was not trained with.
    """
    if request.context or request.image:
        raise ValueError(
            "this model is a text-to-image model: requests with 'context' items or "
            "an input 'image' need an instruction-tuned (stage-2) model"
        )
    unknown = sorted(set(request.guidance) - {"text"})
    if unknown:
        raise ValueError(
            f"guidance for {unknown} is not supported by a text-to-image "
            "model; use {'text': scale}"
        )
    cfg = loaded.config.sample
    generate = sampling.make_generate_fn(
        loaded.model, loaded.config, request.sampler or cfg.sampler
    )
    tokens, mask = loaded.tokenizer.encode_batch(
        [request.text] * request.num_images, loaded.config.data.max_text_len
    )
    images = generate(
        loaded.params,
        tokens,
        mask,
        jax.random.PRNGKey(request.seed),
        request.steps or cfg.steps,
        request.guidance.get("text", cfg.guidance),
    )
    return sampling.to_uint8(images)
