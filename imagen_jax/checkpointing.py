"""Orbax checkpoints: model, EMA, optimizer, step and the grain iterator state.

One manager per workdir (`WORKDIR/checkpoints`); the data iterator state is an
item of the same checkpoint as the model, so a resumed job sees the same data
stream. The experiment config is written beside it (`WORKDIR/config.json`) so
that sampling, evaluation and export can rebuild the model from the workdir.

Every step the manager saves gets a `checksums.json` (the sha256 of each of its
files) once orbax has finalised it, and every restore checks it first: files
damaged after the save are named, not loaded as garbage weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CHECKSUMS = "checksums.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class DamagedCheckpointError(CheckpointError):
    """A step whose files no longer match the checksums written at save."""

    def __init__(self, step_dir: str, problem: str):
        super().__init__(f"checkpoint {step_dir} is damaged: {problem}")
        self.step_dir = step_dir


class _ChecksummingManager(ocp.CheckpointManager):
    """An orbax manager that writes `checksums.json` into the steps it saves.

    Orbax finalises a step in a background thread; its files are final once
    `wait_until_finished()` returns, which orbax's `save` (for the previous
    step) and `close` call, as does the end of the training loop.
    """

    def __init__(self, *args, **kwargs):
        self._unsummed: list[int] = []
        super().__init__(*args, **kwargs)

    def save(self, step: int, *args, **kwargs) -> bool:
        saved = super().save(step, *args, **kwargs)
        if saved:
            self._unsummed.append(step)
        return saved

    def wait_until_finished(self) -> None:
        super().wait_until_finished()
        while self._unsummed:
            step_dir = _step_dir(self, self._unsummed.pop(0))
            # A failed save leaves no step directory (orbax has logged why).
            if jax.process_index() == 0 and os.path.isdir(step_dir):
                _write_checksums(step_dir)


def manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return _ChecksummingManager(
        os.path.abspath(directory), options=options, item_names=("state", "data")
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: dict | None):
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
        items["data"] = ocp.args.JsonSave(data_state)
    mngr.save(step, args=ocp.args.Composite(**items))


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(mngr.directory), str(step))


def _files(step_dir: str) -> list[str]:
    """The step's files but its checksums, as sorted '/'-separated relative paths."""
    names = []
    for root, _, files in os.walk(step_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            names.append(rel.replace(os.sep, "/"))
    return sorted(n for n in names if n != CHECKSUMS)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_checksums(step_dir: str) -> None:
    sums = {name: _sha256(os.path.join(step_dir, name)) for name in _files(step_dir)}
    # Written whole or not at all: a half file would read as damage.
    tmp = os.path.join(step_dir, CHECKSUMS + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"sha256": sums}, f, indent=1)
    os.replace(tmp, os.path.join(step_dir, CHECKSUMS))


def verify(step_dir: str) -> None:
    """Checks a step's files against the checksums written when it was saved.

    A step without checksums (saved before they existed, or by a job stopped
    before the step was finalised) passes with a warning.

    Raises:
      DamagedCheckpointError: naming the first listed file missing or changed.
    """
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(path):
        logging.warning(
            "checkpoint %s has no %s (saved before checksums, or its job stopped "
            "before finalising it): restoring it unverified",
            step_dir,
            CHECKSUMS,
        )
        return
    try:
        with open(path) as f:
            sums = dict(json.load(f)["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(step_dir, f"{CHECKSUMS} is unreadable") from e
    for name, digest in sorted(sums.items()):
        file = os.path.join(step_dir, name)
        if not os.path.isfile(file):
            raise DamagedCheckpointError(step_dir, f"{name} is missing")
        if _sha256(file) != digest:
            raise DamagedCheckpointError(
                step_dir, f"{name} does not match the checksum written at save"
            )


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


def restore(
    mngr: ocp.CheckpointManager, state_like: Any, step: int | None = None
) -> tuple[Any, dict | None]:
    """Restores (state, data_state) onto the shardings of `state_like`.

    Raises:
      DamagedCheckpointError: a file changed since the step was saved.
      CheckpointError: no checkpoint, or one that cannot be read into the model.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {mngr.directory}")
    verify(_step_dir(mngr, step))
    return _restore(mngr, state_like, step)


def resume(mngr: ocp.CheckpointManager, state_like: Any) -> tuple[Any, dict | None]:
    """Restores a run's latest undamaged step, setting damaged later ones aside.

    A damaged step is renamed `<step>.damaged` (orbax lists only `<step>`), so
    nothing is deleted and training goes on from the step before. When every
    step is damaged nothing is renamed, lest a rerun start from scratch.

    Raises:
      DamagedCheckpointError: every step is damaged (names the latest).
      CheckpointError: no checkpoint, or one that cannot be read into the model.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no checkpoint in {mngr.directory}")
    damaged = []
    for step in steps:
        try:
            verify(_step_dir(mngr, step))
            break
        except DamagedCheckpointError as e:
            damaged.append(e)
    else:
        raise damaged[0]
    if damaged:
        if jax.process_index() == 0:
            for e in damaged:
                logging.warning(
                    "%s; moved to %s, resuming from step %d",
                    e,
                    _set_aside(e.step_dir),
                    step,
                )
        if jax.process_count() > 1:  # every host lists the steps after the move
            multihost_utils.sync_global_devices("checkpointing.resume")
        mngr.reload()
    return _restore(mngr, state_like, step)


def _set_aside(step_dir: str) -> str:
    """Renames `step_dir` to `<step>.damaged` (`.damaged2`, ... if taken)."""
    target, n = f"{step_dir}.damaged", 1
    while os.path.exists(target):
        n += 1
        target = f"{step_dir}.damaged{n}"
    os.rename(step_dir, target)
    return target


def _restore(
    mngr: ocp.CheckpointManager, state_like: Any, step: int
) -> tuple[Any, dict | None]:
    items = {"state": ocp.args.StandardRestore(_abstract(state_like))}
    if os.path.isdir(os.path.join(_step_dir(mngr, step), "data")):
        items["data"] = ocp.args.JsonRestore()
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for unreadable files
        raise CheckpointError(
            f"checkpoint {mngr.directory}/{step} cannot be restored: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return restored["state"], restored.get("data")


def all_steps(directory: str) -> list[int]:
    """The steps saved under `directory` (a workdir or its `checkpoints`), in order.

    Raises:
      CheckpointError: the directory does not exist.
    """
    return sorted(ocp.CheckpointManager(_checkpoint_dir(directory)).all_steps())


def restore_params(
    directory: str,
    params_like: Any,
    use_ema: bool = True,
    partial: bool = False,
    step: int | None = None,
    skip: Sequence[str] = (),
) -> tuple[Any, int]:
    """Loads the (EMA) params of checkpoint `step` (default: the latest) under
    `directory`.

    `directory` is a workdir or its `checkpoints` folder. Values are placed on
    the shardings of `params_like`. With `partial` (fine-tuning from another
    model, e.g. stage 2 from text-to-image) parameters the checkpoint lacks
    keep their values from `params_like`; otherwise they are an error.
    Parameters whose path (`jax.tree_util.keystr`) matches one of the regexes
    `skip` are not loaded: they keep their values from `params_like` (a layer
    re-initialised on purpose, e.g. one whose input width changed).

    Raises:
      DamagedCheckpointError: a file changed since the step was saved (no
        fallback to an older step: sampling must not answer from another one).
      CheckpointError: no checkpoint (or no step `step`), an unreadable one,
        a parameter of the wrong shape, or (without `partial`) a missing
        parameter.
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
    if step is None:
        step = mngr.latest_step()
    elif step not in mngr.all_steps():
        raise CheckpointError(
            f"no checkpoint of step {step} in {ckpt_dir}; it has {mngr.all_steps()}"
        )
    if step is None:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    verify(os.path.join(ckpt_dir, str(step)))
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
    return _merge(saved, params_like, partial, f"{ckpt_dir}/{step}", skip), step


def _merge(
    saved: Any, params_like: Any, partial: bool, where: str, skip: Sequence[str] = ()
) -> Any:
    flat_saved = {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree_util.tree_leaves_with_path(saved)
    }
    skipped, missing = [], []
    patterns = [re.compile(p) for p in skip]

    def pick(path, like):
        name = jax.tree_util.keystr(path)
        if any(p.search(name) for p in patterns):
            skipped.append(name)
            return like
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
    if skip and not skipped:
        raise CheckpointError(f"no parameter matches the skip patterns {list(skip)}")
    for names, why in ((skipped, "skipped"), (missing, "not in the checkpoint")):
        if names:
            logging.info(
                "init_from %s: %d parameters %s keep their init (%s ...)",
                where,
                len(names),
                why,
                ", ".join(names[:3]),
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
