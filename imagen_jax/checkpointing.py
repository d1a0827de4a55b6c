"""Orbax checkpoints: model, EMA, optimizer, step and the grain iterator state.

One manager per workdir (`WORKDIR/checkpoints`); the data iterator state is an
item of the same checkpoint as the model, so a resumed job sees the same data
stream. The experiment config is written beside it (`WORKDIR/config.json`) so
that sampling, evaluation and export can rebuild the model from the workdir.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


def manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_names=("state", "data")
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: dict | None):
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
        items["data"] = ocp.args.JsonSave(data_state)
    mngr.save(step, args=ocp.args.Composite(**items))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


def restore(
    mngr: ocp.CheckpointManager, state_like: Any, step: int | None = None
) -> tuple[Any, dict | None]:
    """Restores (state, data_state) onto the shardings of `state_like`.

    Raises:
      CheckpointError: no checkpoint, or one that cannot be read into the model.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {mngr.directory}")
    items = {"state": ocp.args.StandardRestore(_abstract(state_like))}
    if os.path.isdir(os.path.join(mngr.directory, str(step), "data")):
        items["data"] = ocp.args.JsonRestore()
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for unreadable files
        raise CheckpointError(
            f"checkpoint {mngr.directory}/{step} cannot be restored: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return restored["state"], restored.get("data")


def restore_params(
    directory: str, params_like: Any, use_ema: bool = True, partial: bool = False
) -> tuple[Any, int]:
    """Loads the (EMA) params of the latest checkpoint under `directory`.

    `directory` is a workdir or its `checkpoints` folder. Values are placed on
    the shardings of `params_like`. With `partial` (fine-tuning from another
    model, e.g. stage 2 from text-to-image) parameters the checkpoint lacks
    keep their values from `params_like`; otherwise they are an error.

    Raises:
      CheckpointError: no checkpoint, an unreadable one, a parameter of the
        wrong shape, or (without `partial`) a missing parameter.
    """
    ckpt_dir = _checkpoint_dir(directory)
    # Read as host numpy: works whatever mesh (or device count) wrote it.
    mngr = ocp.CheckpointManager(
        ckpt_dir,
        item_names=("state", "data"),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
        },
    )
    step = mngr.latest_step()
    if step is None:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    key = "ema_params" if use_ema else "params"
    try:
        item = {key: mngr.item_metadata(step)["state"][key]}
        restore_args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item
        )
        saved = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True
                )
            ),
        )["state"][key]
    except Exception as e:  # orbax raises many types for unreadable files
        raise CheckpointError(
            f"checkpoint {ckpt_dir}/{step} cannot be restored: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return _merge(saved, params_like, partial, f"{ckpt_dir}/{step}"), step


def _merge(saved: Any, params_like: Any, partial: bool, where: str) -> Any:
    flat_saved = {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree_util.tree_leaves_with_path(saved)
    }
    missing = []

    def pick(path, like):
        name = jax.tree_util.keystr(path)
        if name not in flat_saved:
            missing.append(name)
            return like
        value = flat_saved[name]
        if tuple(value.shape) != tuple(like.shape):
            raise CheckpointError(
                f"parameter {name} has shape {tuple(value.shape)} in {where}, "
                f"the model expects {tuple(like.shape)}"
            )
        return jax.device_put(np.asarray(value, like.dtype), like.sharding)

    merged = jax.tree_util.tree_map_with_path(pick, params_like)
    if missing and not partial:
        raise CheckpointError(
            f"{where} lacks {len(missing)} parameters, e.g. "
            f"{missing[0]}: is it a checkpoint of this model?"
        )
    if missing:
        logging.info(
            "init_from %s: %d parameters keep their init (%s ...)",
            where,
            len(missing),
            ", ".join(missing[:3]),
        )
    return merged


def _checkpoint_dir(directory: str) -> str:
    directory = os.path.abspath(directory)
    sub = os.path.join(directory, "checkpoints")
    found = sub if os.path.isdir(sub) else directory
    if not os.path.isdir(found):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    return found


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(
            f"{path} not found: is {workdir} the workdir of a launch.train run?"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
