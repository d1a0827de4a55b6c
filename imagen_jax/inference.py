"""Loading a trained model from a workdir for sampling, evaluation and export."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from imagen_jax import checkpointing, sharding, train_state
from imagen_jax.models.imagen import Imagen, build_model
from imagen_jax.text.tokenizers import Tokenizer, make_tokenizer


@dataclasses.dataclass
class Loaded:
    """A model ready to sample: config, tokenizer, module, (EMA) params, step."""

    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model: Imagen
    params: Any
    step: int
    # The run's directory ("" when the model was built in memory).
    workdir: str = ""


def load(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    use_ema: bool | None = None,
    step: int | None = None,
) -> Loaded:
    """Rebuilds the model of `workdir` (config.json unless given) and the params
    of its checkpoint `step` (default: the latest).

    A given `config` (an evaluation's) keeps its evaluation and sampling
    settings, but the sections that define the trained network come from the
    workdir's config.json when it has one (`trained_sections`).
    The params are the EMA weights or the trained ones as `use_ema` says, by
    default as the config's `sample.use_ema` says (EMA when it is unset).

    Raises:
      checkpointing.CheckpointError: no config or checkpoint, or a corrupt one.
    """
    if config is None:
        config = checkpointing.load_config(workdir)
    elif os.path.exists(os.path.join(workdir, "config.json")):
        config = trained_sections(config, checkpointing.load_config(workdir))
    config = with_conditioning(config)
    if use_ema is None:
        use_ema = bool(config.sample.get("use_ema", True))
    tokenizer = make_tokenizer(config)
    model = build_model(config, tokenizer.vocab_size)
    rules = train_state.mesh_rules(config)
    mesh = sharding.make_mesh(_mesh_shape(config), config.mesh.axes)
    params_like = train_state.abstract_params(model, config, mesh, rules)
    params, step = checkpointing.restore_params(
        workdir, params_like, use_ema=use_ema, step=step
    )
    return Loaded(config, tokenizer, model, params, int(step), workdir)


# What the trained network is: its architecture, text encoder and tokenizer,
# and what it predicts under which noise schedule.
_TRAINED = ("model", "text", "diffusion")


def trained_sections(
    config: ml_collections.ConfigDict, trained: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """`config` with the sections defining the network taken from `trained`.

    An evaluation config built without a training run's overrides (say
    `--config.model.context_norm=True`) would otherwise build another network
    than the checkpoint's; each difference is logged.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    for section in _TRAINED:
        if section not in trained:
            continue
        saved = trained[section].to_dict()
        # Through JSON, as config.json was written: tuples read back as lists.
        given = json.loads(json.dumps(out[section].to_dict() if section in out else {}))
        changed = sorted(
            k for k in set(given) | set(saved) if given.get(k) != saved.get(k)
        )
        if changed:
            logging.warning(
                "config.%s differs from the trained run's in %s: using the "
                "trained run's",
                section,
                ", ".join(changed),
            )
        out[section] = ml_collections.ConfigDict(saved)
    return out


def with_conditioning(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config`, or a copy given the `model.conditioning` it predates.

    Configs saved before the field existed had context items exactly when they
    were instruction models (`data.max_context` > 0).
    """
    if "conditioning" in config.model:
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    instruction = int(config.data.get("max_context", 0)) > 0
    config.model.conditioning = "instruction" if instruction else "text"
    return config


def _mesh_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The training mesh if it fits these devices, else all devices on `data`."""
    try:
        return sharding.mesh_shape(config.mesh.shape, jax.device_count())
    except ValueError:
        shape = (-1,) + (1,) * (len(config.mesh.axes) - 1)
        logging.warning(
            "mesh %s does not fit %d devices; using %s",
            tuple(config.mesh.shape),
            jax.device_count(),
            shape,
        )
        return shape
