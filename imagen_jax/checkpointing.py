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
import orbax.checkpoint as ocp


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


def restore_params(directory: str, params_like: Any, use_ema: bool = True) -> Any:
    """Loads (EMA) params of the latest checkpoint under `directory`.

    `directory` is a workdir or its `checkpoints` folder. Only the params are
    read (no optimizer), onto the shardings of `params_like`.
    """
    ckpt_dir = _checkpoint_dir(directory)
    mngr = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data"))
    step = mngr.latest_step()
    if step is None:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    key = "ema_params" if use_ema else "params"
    target = {key: _abstract(params_like)}
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )
            ),
        )
    except Exception as e:  # orbax raises many types for unreadable files
        raise CheckpointError(
            f"checkpoint {ckpt_dir}/{step} cannot be restored: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return restored["state"][key], step


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
