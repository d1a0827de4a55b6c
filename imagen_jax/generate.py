"""Answering one request with a trained model: `launch.sample` and serving."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from imagen_jax import inference, instructions, sampling
from imagen_jax.instructions import LIMITS, LimitError, Request, RequestLimits

# Request "guidance" keys besides the model's guidance chain ("text", "image"):
# "oscillate" (> 0: the scales on even steps only) and "interleave" (eta:
# Re-Imagen's interleaved guidance, guiding on the text with probability eta
# and on the context items otherwise, `sampling.RULES`).
_GUIDANCE_OPTIONS = frozenset({"oscillate", "interleave"})


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
    # PIL refuses to decode images of over ~179M pixels (decompression bombs).
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as e:
        raise ValueError(f"request image {path!r} is not a readable image: {e}") from e


def _check_guidance(request: Request, loaded: inference.Loaded) -> None:
    kind = loaded.model.conditioning
    allowed = set(kind.guidance_chain) | _GUIDANCE_OPTIONS
    if not kind.instruction:
        allowed.discard("interleave")
    unknown = sorted(set(request.guidance) - allowed)
    if unknown:
        raise ValueError(
            f"guidance for {unknown} is not supported by a {kind.name!r}-conditioned "
            f"model; known: {sorted(allowed)}"
        )
    if "interleave" in request.guidance:
        eta = request.guidance["interleave"]
        if not 0.0 <= eta <= 1.0:
            raise ValueError(
                f"request field guidance.interleave is eta, the probability of "
                f"guiding on the text, in [0, 1]; got {eta}"
            )
        if "image" in request.guidance:
            raise ValueError(
                "guidance.interleave guides on the text or the context items "
                "with the input image kept; it takes no 'image' scale"
            )


def _check_tokens(
    loaded: inference.Loaded, field: str, text: str, length_field: str, counted: str
) -> None:
    """Refuses a text the model would cut to its `data.<length_field>` tokens."""
    limit = loaded.config.data[length_field]
    length = instructions.text_length(text, loaded.tokenizer)
    if length > limit:
        raise LimitError(
            field,
            f"{length} tokens ({counted})",
            f"{limit} (the model's data.{length_field})",
        )


def _check_fits(loaded: inference.Loaded, request: Request) -> None:
    """Refuses what this model cannot take, before any image is loaded."""
    max_context = loaded.config.data.get("max_context", 0)
    if not loaded.model.conditioning.instruction:
        if request.context or request.image or request.retrieve:
            raise ValueError(
                "this model is a text-to-image model: requests with 'context' "
                "items, 'retrieve' or an input 'image' need an instruction model "
                "(stage 1 or 2)"
            )
        markers = instructions.parse_markers(request.text)
        if markers:
            raise ValueError(
                f"request field 'text' names {markers[0]}, but this model is a "
                f"text-to-image model: markers need 'context' items and an "
                f"instruction-tuned (stage-2) model"
            )
    elif max(len(request.context), request.retrieve) > max_context:
        field = "retrieve" if request.retrieve else "context"
        raise LimitError(
            field,
            f"{max(len(request.context), request.retrieve)} items",
            f"{max_context} (the model's data.max_context)",
        )
    _check_tokens(loaded, "text", request.text, "max_text_len", "EOS included")


@functools.cache
def _retriever(directory: str):
    """The retriever of a run's retrieval directory, loaded once per process
    (its database captions and images), not once per request."""
    from imagen_jax.retrieval import retrieve

    return retrieve.Retriever(directory)


def _retrieved(loaded: inference.Loaded, request: Request):
    """The request's text with its `retrieve` nearest database items as context,
    as stage 1 trained (from the run's retrieval directory)."""
    from imagen_jax.retrieval import build

    if "retrieval" not in loaded.config or not loaded.workdir:
        raise ValueError(
            "request field 'retrieve' needs a stage-1 run with a retrieval index "
            "(`launch.build_index`); this model has none"
        )
    retriever = _retriever(build.retrieval_dir(loaded.config, loaded.workdir))
    ids = retriever.search([request.text], request.retrieve)
    return retriever.instruction(request.text, ids[0])


def _request_batch(
    loaded: inference.Loaded,
    request: Request,
    load_image: Callable[[str], np.ndarray],
    limits: RequestLimits,
) -> dict[str, np.ndarray]:
    """The `num_images` copies of the request as a batch of the model's fields."""
    config = loaded.config
    _check_fits(loaded, request)
    if not loaded.model.conditioning.instruction:
        return sampling.prompt_batch(
            [request.text] * request.num_images,
            loaded.tokenizer,
            config,
            loaded.model.conditioning,
        )
    instr = instructions.instruction_from_request(request, load_image, limits)
    # Retrieved items' captions are cut to data.ctx_text_len as in training;
    # a text the request wrote is refused rather than cut.
    if request.retrieve:
        instr = _retrieved(loaded, request)
    for i, item in enumerate(() if request.retrieve else instr.context):
        _check_tokens(
            loaded,
            f"context[{i}].text",
            item.model_text,
            "ctx_text_len",
            "with its marker and EOS",
        )
    arrays = instructions.to_arrays(
        instr,
        loaded.tokenizer,
        max_context=config.data.max_context,
        text_len=config.data.max_text_len,
        ctx_text_len=config.data.ctx_text_len,
        resolution=config.data.resolution,
    )
    return {k: np.stack([v] * request.num_images) for k, v in arrays.items()}


def request_batch(
    loaded: inference.Loaded,
    request: Request,
    load_image: Callable[[str], np.ndarray] = load_png,
    limits: RequestLimits = LIMITS,
) -> dict[str, np.ndarray]:
    """The request's `num_images` rows of the model's batch fields, checked
    against the model (see `generate_images` for the errors)."""
    _check_guidance(request, loaded)
    return _request_batch(loaded, request, load_image, limits)


def request_settings(loaded: inference.Loaded, request: Request) -> dict[str, Any]:
    """The settings `generate_images` samples `request` with: the request's,
    else the run's `sample` settings."""
    cfg, g = loaded.config.sample, request.guidance
    return {
        "sampler": request.sampler or cfg.sampler,
        "rule": "interleaved" if "interleave" in g else "chain",
        "steps": request.steps or cfg.steps,
        "guidance_text": g.get("text", cfg.guidance),
        "guidance_image": g.get("image", cfg.get("image_guidance", 1.0)),
        "oscillate": int(g.get("oscillate", cfg.get("oscillate", False))),
        "eta": g.get("interleave", 0.5),
    }


def generate_images(
    loaded: inference.Loaded,
    request: Request,
    load_image: Callable[[str], np.ndarray] = load_png,
    limits: RequestLimits = LIMITS,
) -> np.ndarray:
    """Samples `request.num_images` images -> uint8 [N, R, R, 3].

    Args:
      loaded: the model.
      request: a parsed request (DESIGN §7).
      load_image: maps the request's image references to uint8 arrays (files
        on the command line, base64 PNG in the serving API).
      limits: the limits the request was parsed with; `image_side` bounds the
        images as they load.

    Raises:
      ValueError: the request needs inputs this model was not trained with, or
        its instruction or images are malformed (each error names the field);
        `LimitError` for more text, context items or pixels than the model or
        `limits` take.
    """
    batch = request_batch(loaded, request, load_image, limits)
    s = request_settings(loaded, request)
    generate = sampling.make_generate_fn(
        loaded.model, loaded.config, s["sampler"], s["rule"]
    )
    images = generate(
        loaded.params,
        batch,
        jax.random.PRNGKey(request.seed),
        s["steps"],
        s["guidance_text"],
        s["guidance_image"],
        s["oscillate"],
        s["eta"],
    )
    return sampling.to_uint8(images)
