"""Generation requests (DESIGN §7) and multi-modal instructions (DESIGN §1).

A request is JSON: `{"text", "context", "image", "sampler", "steps",
"guidance", "seed", "num_images"}`. Only `text` is required. Models trained
for text-to-image accept no `context` items, input `image` nor `[ref#k]`
markers. `RequestLimits` bounds what any request may ask for; the model bounds
the rest when it answers (`generate`).

A `MultiModalInstruction` is the model-side form: payload text naming context
items by `[ref#k]` markers, the (marker, text, image) items, and an optional
channel-concat input image. `validate` checks it against a model's limits and
`to_arrays` turns it into fixed-shape arrays with masks.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np

_FIELDS = (
    "text",
    "context",
    "image",
    "sampler",
    "steps",
    "guidance",
    "seed",
    "num_images",
    "retrieve",
)


@dataclasses.dataclass(frozen=True)
class Request:
    text: str
    context: tuple[dict, ...] = ()
    image: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: dict[str, float] = dataclasses.field(default_factory=dict)
    seed: int = 0
    num_images: int = 4
    # Database items retrieved by the text and given as context (stage 1).
    retrieve: int = 0


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """The most any request may ask for, whatever the model answers it.

    The model sets the other limits when it answers (`generate`): text tokens
    (`data.max_text_len`, EOS included), tokens of a context item's marker and
    text (`data.ctx_text_len`), context items (`data.max_context`) and the side
    every image must have (`data.resolution`).

    Attributes:
      steps: sampler steps.
      num_images: images per request.
      image_side: pixels on the longer side of an input or context image.
    """

    steps: int = 1000
    num_images: int = 64
    image_side: int = 1024


LIMITS = RequestLimits()


class LimitError(ValueError):
    """A request field beyond its limit; the message names field, value, limit."""

    def __init__(self, field: str, value: Any, limit: Any):
        super().__init__(f"request field {field!r} is {value}; the limit is {limit}")
        self.field = field


def _positive_int(name: str, value: Any, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"request field {name!r} must be a positive integer, got {value!r}"
        )
    if value > limit:
        raise LimitError(name, value, limit)
    return value


def _guidance(value: Any) -> dict[str, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"text": float(value)}
    if not isinstance(value, dict) or not all(
        isinstance(v, (int, float)) for v in value.values()
    ):
        raise ValueError(
            f"request field 'guidance' must be a number or a mapping "
            f"condition -> scale, got {value!r}"
        )
    return {str(k): float(v) for k, v in value.items()}


def _retrieve(obj: dict, context: list) -> int:
    if "retrieve" not in obj:
        return 0
    value = obj["retrieve"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"request field 'retrieve' must be a non-negative integer, got {value!r}"
        )
    if value and context:
        raise ValueError(
            "request fields 'retrieve' and 'context' exclude each other: retrieved "
            "items are the context"
        )
    return value


def parse_request(obj: Any, limits: RequestLimits = LIMITS) -> Request:
    """Validates a decoded JSON request.

    Raises:
      ValueError: naming the bad field and what was expected (`LimitError`
        for a field beyond `limits`).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"a request must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown request fields {unknown}; known: {list(_FIELDS)}")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"request field 'text' must be a non-empty string, got {text!r}"
        )
    context = obj.get("context") or []
    if not isinstance(context, list):
        raise ValueError("request field 'context' must be a list of items")
    return Request(
        text=text,
        context=tuple(context),
        image=obj.get("image"),
        sampler=obj.get("sampler"),
        steps=None
        if obj.get("steps") is None
        else _positive_int("steps", obj["steps"], limits.steps),
        guidance=_guidance(obj.get("guidance", {})),
        seed=int(obj.get("seed", 0)),
        num_images=_positive_int(
            "num_images", obj.get("num_images", 4), limits.num_images
        ),
        retrieve=_retrieve(obj, context),
    )


def load_request(path: str) -> Request:
    """Reads and validates a request JSON file."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"request {path} is not valid JSON: {e}") from e
    return parse_request(obj)


# Multi-modal instructions (DESIGN §1): payload text with `[ref#k]` markers and
# context items (marker, text, image), plus an optional channel-concat image.

K_MAX = 8
MARKERS = tuple(f"[ref#{k}]" for k in range(1, K_MAX + 1))

# Anything that starts like a marker: "[ref", "[ ref", or a "ref#" without "[".
_MARKER_START = re.compile(r"\[\s*ref|(?<!\[)ref#", re.IGNORECASE)
_MARKER = re.compile(r"\[ref#([1-9][0-9]*)\]")


# eq=False: fields hold arrays, so compare by identity.
@dataclasses.dataclass(frozen=True, eq=False)
class ContextItem:
    """One context pair: a `[ref#k]` marker, its short text and its image.

    Attributes:
      marker: e.g. "[ref#1]"; several items may share one marker.
      text: what the image shows or is for, e.g. "a zorblat" or "style image".
      image: uint8 [R, R, 3].
    """

    marker: str
    text: str
    image: np.ndarray

    @property
    def model_text(self) -> str:
        """The text the model reads for this item: "<marker> <text>"."""
        return f"{self.marker} {self.text}"


# eq=False: fields hold arrays, so compare by identity.
@dataclasses.dataclass(frozen=True, eq=False)
class MultiModalInstruction:
    """Payload text referring to context items by marker.

    Attributes:
      text: e.g. "Generate [ref#1] in the style of [ref#2]".
      context: the context items, in order.
      input_image: optional uint8 [R, R, 3] for the channel-concat path
        (editing, vision tasks, control maps); None when absent.
    """

    text: str
    context: tuple[ContextItem, ...] = ()
    input_image: np.ndarray | None = None


def _marker_snippet(text: str, start: int) -> str:
    """The malformed marker at `start`: up to its "]", else to the next space."""
    rest = text[start : start + 12]
    close = rest.find("]")
    if close != -1 and "[" not in rest[1:close]:
        return rest[: close + 1]
    return rest.split()[0] if rest.strip() else rest


def parse_markers(text: str) -> list[str]:
    """The `[ref#k]` markers of `text`, distinct, in order of first appearance.

    Raises:
      ValueError: naming the malformed marker and its position, for forms such
        as "[ref#]", "[ref#0]", "[ref#x]", "[ref 1]", an unclosed "[ref#1", or
        a k above K_MAX.
    """
    if not isinstance(text, str):
        raise ValueError(f"instruction text must be a str, got {type(text).__name__}")
    markers: list[str] = []
    for start_match in _MARKER_START.finditer(text):
        start = start_match.start()
        match = _MARKER.match(text, start)
        if match is None or not 1 <= int(match.group(1)) <= K_MAX:
            raise ValueError(
                f"malformed marker {_marker_snippet(text, start)!r} at position "
                f"{start} of {text!r}; expected [ref#k] with k in 1..{K_MAX}"
            )
        if match.group() not in markers:
            markers.append(match.group())
    return markers


def _check_markers(instr: MultiModalInstruction) -> None:
    """Every text marker has a context item and every item's marker is named."""
    text_markers = parse_markers(instr.text)
    for i, item in enumerate(instr.context):
        if item.marker not in MARKERS:
            raise ValueError(
                f"context item {i} has marker {item.marker!r}; expected one of "
                f"{MARKERS}"
            )
        named = parse_markers(item.text)
        if named:
            raise ValueError(
                f"context item {i} ({item.marker}) names {named[0]} in its text "
                f"{item.text!r}; an item's text names no marker"
            )
    item_markers = {item.marker for item in instr.context}
    missing = [m for m in text_markers if m not in item_markers]
    if missing:
        raise ValueError(
            f"marker {missing[0]} in the text {instr.text!r} has no context item"
        )
    for i, item in enumerate(instr.context):
        if item.marker not in text_markers:
            raise ValueError(
                f"context item {i} ({item.marker} {item.text!r}) is never named "
                f"in the text {instr.text!r}"
            )


def _check_image(name: str, image: Any, resolution: int) -> None:
    expected = (resolution, resolution, 3)
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{name} must be a uint8 array of shape {expected}, got "
            f"{type(image).__name__}"
        )
    if image.dtype != np.uint8 or image.shape != expected:
        raise ValueError(
            f"{name} must be uint8 of shape {expected}, got {image.dtype} of "
            f"shape {image.shape}"
        )


def text_length(text: str, tokenizer) -> int:
    """Tokens `text` takes in the model, EOS included; `encode_batch` cuts a
    text longer than its row."""
    return len(tokenizer.encode(text)) + 1


def _check_marker_tokens(tokenizer, markers: list[str]) -> None:
    unknown = [m for m in markers if m not in tokenizer.extra_tokens]
    if unknown:
        raise ValueError(
            f"the tokenizer has no extra token for {unknown}; build it with "
            f"extra_tokens=instructions.MARKERS"
        )


def validate(
    instr: MultiModalInstruction,
    *,
    max_context: int,
    resolution: int,
    max_text_tokens: int | None = None,
    tokenizer=None,
) -> None:
    """Checks an instruction against a model's limits.

    Args:
      instr: the instruction.
      max_context: most context items the model takes (K).
      resolution: side R every image must have.
      max_text_tokens: most text tokens, EOS included; needs `tokenizer`.
      tokenizer: a `text.tokenizers.Tokenizer` with the markers as extra tokens.

    Raises:
      ValueError: on a malformed marker, a marker without context item, a
        context item whose marker the text never names, more than
        `max_context` items, an image that is not uint8 [R, R, 3], or a text
        longer than `max_text_tokens`; the message names the culprit.
    """
    _check_markers(instr)
    if len(instr.context) > max_context:
        raise ValueError(
            f"the instruction has {len(instr.context)} context items; the model "
            f"takes at most max_context={max_context}"
        )
    for i, item in enumerate(instr.context):
        _check_image(
            f"context item {i} ({item.marker} {item.text!r}) image",
            item.image,
            resolution,
        )
    if instr.input_image is not None:
        _check_image("input image", instr.input_image, resolution)
    if (max_text_tokens is None) != (tokenizer is None):
        raise ValueError("max_text_tokens and tokenizer must be given together")
    if tokenizer is not None:
        _check_marker_tokens(tokenizer, parse_markers(instr.text))
        length = text_length(instr.text, tokenizer)
        if length > max_text_tokens:
            raise ValueError(
                f"the instruction text has {length} tokens (EOS included), more "
                f"than max_text_tokens={max_text_tokens}: {instr.text!r}"
            )


def to_arrays(
    instr: MultiModalInstruction,
    tokenizer,
    *,
    max_context: int,
    text_len: int,
    ctx_text_len: int,
    resolution: int,
) -> dict[str, np.ndarray]:
    """Fixed-shape numpy arrays of one instruction (DESIGN §3), masks included.

    Texts longer than `text_len` / `ctx_text_len` are truncated (EOS kept).
    Each context item's text is encoded as "<marker> <text>".

    Returns:
      text_tokens int32 [L], text_mask bool [L], ctx_images uint8 [K, R, R, 3]
      (zero padded), ctx_tokens int32 [K, Lc] (pad id padded), ctx_text_mask
      bool [K, Lc], ctx_mask bool [K], cond_image uint8 [R, R, 3] (zeros when
      absent) and cond_image_mask bool [].
    """
    validate(instr, max_context=max_context, resolution=resolution)
    _check_marker_tokens(tokenizer, [item.marker for item in instr.context])
    text_tokens, text_mask = tokenizer.encode_batch([instr.text], text_len)
    k, r = len(instr.context), resolution
    ctx_images = np.zeros((max_context, r, r, 3), np.uint8)
    ctx_tokens = np.full((max_context, ctx_text_len), tokenizer.pad_id, np.int32)
    ctx_text_mask = np.zeros((max_context, ctx_text_len), np.bool_)
    if k:
        texts = [item.model_text for item in instr.context]
        ctx_tokens[:k], ctx_text_mask[:k] = tokenizer.encode_batch(texts, ctx_text_len)
        ctx_images[:k] = np.stack([item.image for item in instr.context])
    has_input = instr.input_image is not None
    return {
        "text_tokens": text_tokens[0],
        "text_mask": text_mask[0],
        "ctx_images": ctx_images,
        "ctx_tokens": ctx_tokens,
        "ctx_text_mask": ctx_text_mask,
        "ctx_mask": np.arange(max_context) < k,
        "cond_image": instr.input_image if has_input else np.zeros((r, r, 3), np.uint8),
        "cond_image_mask": np.bool_(has_input),
    }


_CONTEXT_FIELDS = ("marker", "text", "image")


def _load_image(
    field: str,
    ref: str,
    load_image: Callable[[str], np.ndarray],
    limits: RequestLimits,
) -> np.ndarray:
    image = np.asarray(load_image(ref))
    if image.ndim >= 2 and max(image.shape[:2]) > limits.image_side:
        side = limits.image_side
        height, width = image.shape[:2]
        raise LimitError(field, f"{width}x{height} pixels", f"{side}x{side}")
    return image


def _context_item(
    i: int,
    item: Any,
    load_image: Callable[[str], np.ndarray],
    limits: RequestLimits,
) -> ContextItem:
    if not isinstance(item, dict):
        raise ValueError(f"request context item {i} must be an object, got {item!r}")
    fields = set(item)
    if fields != set(_CONTEXT_FIELDS):
        raise ValueError(
            f"request context item {i} has fields {sorted(fields)}; expected "
            f"exactly {list(_CONTEXT_FIELDS)}"
        )
    if not isinstance(item["text"], str):
        raise ValueError(
            f"request context item {i} field 'text' must be a string, got "
            f"{item['text']!r}"
        )
    image = _load_image(f"context[{i}].image", item["image"], load_image, limits)
    return ContextItem(item["marker"], item["text"], image)


def instruction_from_request(
    request: Request,
    load_image: Callable[[str], np.ndarray],
    limits: RequestLimits = LIMITS,
) -> MultiModalInstruction:
    """The multi-modal instruction of a request; images come from `load_image`.

    Args:
      request: a parsed request; its context items are
        `{"marker", "text", "image"}` objects and `image` the optional input.
      load_image: maps a request's image reference (a path, or base64 PNG in
        the serving API) to a uint8 [R, R, 3] array.
      limits: `image_side` bounds every image.

    Raises:
      ValueError: on a malformed context item, inconsistent markers or an
        image beyond `limits` (`LimitError`). The exact size is checked by
        `validate`, which knows the model's resolution.
    """
    context = tuple(
        _context_item(i, item, load_image, limits)
        for i, item in enumerate(request.context)
    )
    input_image = (
        None
        if request.image is None
        else _load_image("image", request.image, load_image, limits)
    )
    instr = MultiModalInstruction(request.text, context, input_image)
    _check_markers(instr)
    return instr
