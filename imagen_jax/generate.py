"""Answering one request with a trained model: `launch.sample` and serving."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from imagen_jax import inference, instructions, sampling
from imagen_jax.instructions import Request

# Guidance conditions each kind of model understands (request "guidance" keys).
_T2I_GUIDANCE = frozenset({"text"})
# Dual guidance: "text" scales text + context, "image" the input image.
_INSTRUCTION_GUIDANCE = frozenset({"text", "image", "oscillate"})


def load_png(path: str) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] (RGB).

    Raises:
      ValueError: the file is missing or not an image, naming the path.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except FileNotFoundError as e:
        raise ValueError(f"request image {path!r} does not exist") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"request image {path!r} is not a readable image: {e}") from e


def is_instruction_model(loaded: inference.Loaded) -> bool:
    """Whether the model was built with the context path (stage 2)."""
    return int(loaded.config.data.get("max_context", 0)) > 0


def _check_guidance(request: Request, allowed: frozenset[str], kind: str) -> None:
    unknown = sorted(set(request.guidance) - allowed)
    if unknown:
        raise ValueError(
            f"guidance for {unknown} is not supported by {kind}; known: "
            f"{sorted(allowed)}"
        )


def generate_images(
    loaded: inference.Loaded,
    request: Request,
    load_image: Callable[[str], np.ndarray] = load_png,
) -> np.ndarray:
    """Samples `request.num_images` images -> uint8 [N, R, R, 3].

    Args:
      loaded: the model.
      request: a parsed request (DESIGN §7).
      load_image: maps the request's image references to uint8 arrays (files
        on the command line, base64 PNG in the serving API).

    Raises:
      ValueError: the request needs inputs this model was not trained with, or
        its instruction or images are malformed (each error names the field).
    """
    if is_instruction_model(loaded):
        return _generate_instruction(loaded, request, load_image)
    if request.context or request.image:
        raise ValueError(
            "this model is a text-to-image model: requests with 'context' items or "
            "an input 'image' need an instruction-tuned (stage-2) model"
        )
    _check_guidance(request, _T2I_GUIDANCE, "a text-to-image model")
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


def _generate_instruction(loaded, request, load_image) -> np.ndarray:
    _check_guidance(request, _INSTRUCTION_GUIDANCE, "an instruction model")
    config, cfg = loaded.config, loaded.config.sample
    instr = instructions.instruction_from_request(request, load_image)
    arrays = instructions.to_arrays(
        instr,
        loaded.tokenizer,
        max_context=config.data.max_context,
        text_len=config.data.max_text_len,
        ctx_text_len=config.data.ctx_text_len,
        resolution=config.data.resolution,
    )
    batch = {k: np.stack([v] * request.num_images) for k, v in arrays.items()}
    generate = sampling.make_instruction_generate_fn(
        loaded.model, config, request.sampler or cfg.sampler
    )
    g = request.guidance
    images = generate(
        loaded.params,
        batch,
        jax.random.PRNGKey(request.seed),
        request.steps or cfg.steps,
        g.get("text", cfg.guidance),
        g.get("image", cfg.get("image_guidance", 1.0)),
        int(g.get("oscillate", cfg.get("oscillate", False))),
    )
    return sampling.to_uint8(images)
