"""Helpers for experiment configs: typed `:arg` options."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any

import ml_collections


def load_experiment(path: str) -> ModuleType:
    """The experiment file at `path` (`experiments/NAME.py`) as a module.

    Raises:
      FileNotFoundError: no file at `path`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def choices() -> dict[str, tuple]:
    """Enumerated config fields and their allowed values, checked before any work.

    Values with a registry are read from it: a schedule, sampler,
    parameterisation, thresholding, tokenizer, dtype, conditioning or UNet
    option is allowed once it is registered, and only then. A field ending in
    "?" is checked only when the config has it.
    """
    # Imported here: experiment configs import this module, and these pull in JAX.
    from imagen_jax import conditioning
    from imagen_jax.data import pipeline
    from imagen_jax.diffusion import losses, samplers, schedules
    from imagen_jax.models import imagen, unet
    from imagen_jax.text import tokenizers

    return {
        "data.name": pipeline.source_names(),
        "data.variant": ("full", "simple"),
        "data.resolution": (16, 32, 64, 128),
        "text.tokenizer": tokenizers.get_tokenizer_names(),
        "model.name": ("imagen",),
        "model.dtype": tuple(imagen.DTYPES),
        "model.conditioning": tuple(conditioning.KINDS),
        "diffusion.schedule": schedules.get_schedule_names(),
        "diffusion.param": losses.PARAMETERISATIONS,
        "optim.name": ("adamw", "adafactor"),
        "optim.decay": ("constant", "cosine"),
        "sample.sampler": samplers.get_sampler_names(),
        "sample.clip_x0": samplers.THRESHOLDS,
        # Checked when present (older configs and bench configs may lack them).
        "model.text_pool?": unet.TEXT_POOLS,
        "model.attn_blocks?": unet.ATTN_BLOCKS,
        "text.marker_loss_form?": imagen.MARKER_LOSS_FORMS,
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
# The sizes of the context items of instruction models.
INSTRUCTION_POSITIVE = ("data.max_context", "data.ctx_text_len")
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


def override(config: ml_collections.ConfigDict, fields: dict[str, Any]) -> None:
    """Sets dotted fields (`{"model.context_level": -2}`) in place, as
    `--config.FIELD=VALUE` would: each field must exist, and the value takes
    the field's type.

    Raises:
      ValueError: a field the config does not have, or a value of another type.
    """
    for dotted, value in fields.items():
        _get(config, dotted)
        try:
            config.update_from_flattened_dict({dotted: value})
        except TypeError as e:
            raise ValueError(f"config field {dotted!r}: {e}") from e


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad value of a training config."""
    from imagen_jax import conditioning

    for field, allowed in choices().items():
        field, optional = field.removesuffix("?"), field.endswith("?")
        parent, _, leaf = field.rpartition(".")
        if optional and leaf not in _get(config, parent):
            continue
        value = _get(config, field)
        if value not in allowed:
            raise ValueError(f"config.{field}={value!r} is not one of {allowed}")
    for field in POSITIVE:
        if not _get(config, field) > 0:
            raise ValueError(f"config.{field}={_get(config, field)!r} must be > 0")
    for field in PROBABILITIES:
        if not 0.0 <= _get(config, field) <= 1.0:
            raise ValueError(
                f"config.{field}={_get(config, field)!r} must be in [0, 1]"
            )
    share = config.diffusion.get("low_snr_share", 0.0)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"config.diffusion.low_snr_share={share!r} must be in [0, 1]")
    marker = config.text.get("marker_text_loss", 0.0)
    if marker:
        if not marker > 0:
            raise ValueError(f"config.text.marker_text_loss={marker!r} must be >= 0")
        if not conditioning.get(config.model.conditioning).instruction:
            raise ValueError(
                "config.text.marker_text_loss needs context items: set "
                "config.model.conditioning='instruction' or the loss to 0"
            )
        if config.text.frozen or config.text.precomputed:
            raise ValueError(
                "config.text.marker_text_loss trains the text encoder; it "
                "cannot be frozen (config.text.frozen) or precomputed "
                "(config.text.precomputed)"
            )
    text_lr = config.optim.get("text_lr_scale", 1.0)
    if not text_lr > 0:
        raise ValueError(
            f"config.optim.text_lr_scale={text_lr!r} must be > 0 (a text encoder "
            "that does not learn is config.text.frozen=True)"
        )
    full_steps = config.optim.get("text_full_lr_steps", 0)
    if not (isinstance(full_steps, int) and full_steps >= 0):
        raise ValueError(
            f"config.optim.text_full_lr_steps={full_steps!r} must be an int >= 0"
        )
    if full_steps and text_lr == 1.0:
        raise ValueError(
            f"config.optim.text_full_lr_steps={full_steps!r} delays "
            "config.optim.text_lr_scale, which is 1.0: set the scale too"
        )
    if text_lr != 1.0 and (config.text.frozen or config.text.precomputed):
        raise ValueError(
            f"config.optim.text_lr_scale={text_lr!r} scales the text encoder's "
            "updates; it has none when frozen (config.text.frozen) or "
            "precomputed (config.text.precomputed)"
        )
    if conditioning.get(config.model.conditioning).instruction:
        for field in INSTRUCTION_POSITIVE:
            if not _get(config, field) > 0:
                raise ValueError(
                    f"config.{field}={_get(config, field)!r} must be > 0 with "
                    f"config.model.conditioning='instruction'"
                )
