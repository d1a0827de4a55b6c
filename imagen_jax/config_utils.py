"""Helpers for experiment configs: typed `:arg` options."""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `"res=64,smoke"` into a ConfigDict typed after `defaults`.

    A bare name (`smoke`) sets a boolean default to True. Unknown names and
    values that do not convert to the default's type raise ValueError.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config option {key!r}; known options: {sorted(defaults)}"
            )
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config option {key!r} needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config option {key}={value!r} is not a boolean")
            out[key] = value.lower() in ("true", "1")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError as e:
                raise ValueError(
                    f"config option {key}={value!r} is not a {type(default).__name__}"
                ) from e
    return out


# Enumerated config fields and their allowed values, checked before any work.
CHOICES = {
    "data.name": ("shapes_world", "shapes_world_tasks"),
    "data.variant": ("full", "simple"),
    "data.resolution": (16, 32, 64, 128),
    "text.tokenizer": ("byte", "sentencepiece"),
    "model.name": ("imagen",),
    "model.dtype": ("float32", "bfloat16"),
    "diffusion.schedule": ("cosine", "shifted_cosine"),
    "diffusion.param": ("v", "eps", "x0"),
    "optim.name": ("adamw", "adafactor"),
    "optim.decay": ("constant", "cosine"),
    "sample.sampler": ("ddpm", "ddim", "dpmpp_2m"),
    "sample.clip_x0": ("dynamic", "static", "none"),
}
# Checked when present (older configs and bench configs may lack them).
OPTIONAL_CHOICES = {
    "model.text_pool": ("mean", "attention"),
    "model.attn_blocks": ("all", "last"),
}
POSITIVE = (
    "data.batch_size",
    "data.max_text_len",
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.sample_every",
    "optim.lr",
    "sample.steps",
)
PROBABILITIES = tuple(
    f"diffusion.cond_drop.{k}" for k in ("all", "text", "context", "image")
)


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise ValueError(f"config has no field {dotted!r}")
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad value of a training config."""
    for field, allowed in CHOICES.items():
        value = _get(config, field)
        if value not in allowed:
            raise ValueError(f"config.{field}={value!r} is not one of {allowed}")
    for field, allowed in OPTIONAL_CHOICES.items():
        parent, _, leaf = field.rpartition(".")
        if leaf in _get(config, parent) and _get(config, field) not in allowed:
            raise ValueError(
                f"config.{field}={_get(config, field)!r} is not one of {allowed}"
            )
    for field in POSITIVE:
        if not _get(config, field) > 0:
            raise ValueError(f"config.{field}={_get(config, field)!r} must be > 0")
    for field in PROBABILITIES:
        if not 0.0 <= _get(config, field) <= 1.0:
            raise ValueError(
                f"config.{field}={_get(config, field)!r} must be in [0, 1]"
            )
