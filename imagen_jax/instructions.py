"""Generation requests (DESIGN §7): parsing and validation.

A request is JSON: `{"text", "context", "image", "sampler", "steps",
"guidance", "seed", "num_images"}`. Only `text` is required. Models trained
for text-to-image accept no `context` items nor input `image`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

_FIELDS = (
    "text",
    "context",
    "image",
    "sampler",
    "steps",
    "guidance",
    "seed",
    "num_images",
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


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"request field {name!r} must be a positive integer, got {value!r}"
        )
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


def parse_request(obj: Any) -> Request:
    """Validates a decoded JSON request.

    Raises:
      ValueError: naming the bad field and what was expected.
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
        else _positive_int("steps", obj["steps"]),
        guidance=_guidance(obj.get("guidance", {})),
        seed=int(obj.get("seed", 0)),
        num_images=_positive_int("num_images", obj.get("num_images", 4)),
    )


def load_request(path: str) -> Request:
    """Reads and validates a request JSON file."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"request {path} is not valid JSON: {e}") from e
    return parse_request(obj)
