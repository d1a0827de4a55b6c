"""Evaluation sweeps over checkpoints x sampler x steps x guidance x tasks.

An experiment file's `sweeps()` names lists of *cells*; `launch.eval --sweep
NAME` runs one. A cell is a dict of settings, each optional (`product` builds
a grid of them):

    checkpoint      a saved step, "latest" (default) or "all" (every saved step)
    sampler         a `samplers.get_sampler_names()` name
    steps           sampler steps
    guidance        the text guidance scale (s_T)
    image_guidance  the input-image guidance scale (s_I; instruction models)
    oscillate       guidance on even steps only (Instruct-Imagen)
    evals           names of `config.evals` entries to run (default: all)
    tasks           task names (or one) for the "tasks" evaluators (default:
                    theirs)

Unset sampler settings come from `config.sample`. A cell runs each of its
evaluators on each of its checkpoints; each such *unit* appends its rows to
`WORKDIR/eval/results.json` as soon as it finishes (written atomically), every
setting in every row, so a killed sweep resumes where it stopped: a unit whose
settings (the checkpoint step included) match rows already there is skipped.
Each unit also writes its metrics to TensorBoard (`eval/tensorboard`, tagged
with the cell) and its sample grids to `eval/sweep/<cell>/`; at the end
`report.write` makes `results.md`, the plots and `report.html`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence

import jax
import ml_collections

from imagen_jax import checkpointing, inference
from imagen_jax.diffusion import samplers
from imagen_jax.evaluation import evaluate as evaluators
from imagen_jax.evaluation import fid, report

# The keys a cell may set.
CELL_KEYS = (
    "checkpoint",
    "sampler",
    "steps",
    "guidance",
    "image_guidance",
    "oscillate",
    "evals",
    "tasks",
)
# What every row records of the unit that made it; units match on all of them.
SETTINGS = report.SETTINGS
RESULTS = "results.json"


def product(**axes) -> list[dict]:
    """The cells of the grid over `axes` (a list of values each, or one value).

    product(sampler=["ddim", "dpmpp_2m"], steps=[10, 20, 50])
    -> [{"sampler": "ddim", "steps": 10}, ..., {"sampler": "dpmpp_2m", ...}]
    """
    values = [v if isinstance(v, (list, tuple)) else [v] for v in axes.values()]
    return [dict(zip(axes, combo)) for combo in itertools.product(*values)]


def _check_cell(cell: dict, config: ml_collections.ConfigDict) -> None:
    """ValueError naming the first bad setting of `cell`."""
    unknown = sorted(set(cell) - set(CELL_KEYS))
    if unknown:
        raise ValueError(f"sweep cell {cell} has unknown keys {unknown}: {CELL_KEYS}")
    checkpoint = cell.get("checkpoint", "latest")
    if checkpoint not in ("latest", "all") and not isinstance(checkpoint, int):
        raise ValueError(
            f"sweep cell checkpoint={checkpoint!r}; expected a step, 'latest' or 'all'"
        )
    sampler = cell.get("sampler", config.sample.sampler)
    if sampler not in samplers.get_sampler_names():
        raise ValueError(
            f"sweep cell sampler={sampler!r}; expected one of "
            f"{samplers.get_sampler_names()}"
        )
    steps = cell.get("steps", config.sample.steps)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sweep cell steps={steps!r}; expected an integer >= 1")
    for name in ("guidance", "image_guidance"):
        if not isinstance(cell.get(name, 1.0), (int, float)):
            raise ValueError(f"sweep cell {name}={cell[name]!r}; expected a number")
    for name in cell.get("evals") or ():
        if name not in config.evals:
            raise ValueError(
                f"sweep cell evals names {name!r}; config.evals has "
                f"{sorted(config.evals)}"
            )
    if cell.get("tasks"):
        from imagen_jax.data import tasks

        unknown = sorted(set(cell["tasks"]) - set(tasks.TASKS))
        if unknown:
            raise ValueError(f"sweep cell tasks has unknown tasks {unknown}")


def _evals(config: ml_collections.ConfigDict, cell: dict) -> list[str]:
    names = list(cell.get("evals") or config.evals)
    for name in names:
        kind = config.evals[name].type
        if kind not in evaluators.EVALUATORS:
            raise ValueError(
                f"config.evals.{name}.type={kind!r} is not one of "
                f"{sorted(evaluators.EVALUATORS)}"
            )
    return names


def _steps(cell: dict, saved: Sequence[int]) -> list[int]:
    checkpoint = cell.get("checkpoint", "latest")
    if checkpoint == "all":
        return list(saved)
    if checkpoint == "latest":
        return [saved[-1]]
    if checkpoint not in saved:
        raise ValueError(f"sweep cell checkpoint={checkpoint}: the run saved {saved}")
    return [checkpoint]


def units(
    config: ml_collections.ConfigDict, cells: Iterable[dict], saved: Sequence[int]
) -> list[dict]:
    """The settings (`SETTINGS`) of every unit of `cells`, in order, once each.

    Raises:
      ValueError: a bad cell, or a checkpoint step the run has not saved.
    """
    if not saved:
        raise ValueError("the run has no checkpoint to evaluate")
    sample = config.sample
    out: dict[str, dict] = {}
    for cell in cells:
        if isinstance(cell.get("tasks"), str):  # one task
            cell = {**cell, "tasks": [cell["tasks"]]}
        _check_cell(cell, config)
        for step, name in itertools.product(_steps(cell, saved), _evals(config, cell)):
            tasks = cell.get("tasks")
            settings = {
                "checkpoint_step": int(step),
                "sampler": cell.get("sampler", sample.sampler),
                "steps": int(cell.get("steps", sample.steps)),
                "guidance": float(cell.get("guidance", sample.guidance)),
                "image_guidance": float(
                    cell.get("image_guidance", sample.get("image_guidance", 1.0))
                ),
                "oscillate": bool(
                    cell.get("oscillate", sample.get("oscillate", False))
                ),
                "eval": name,
                # The task names apply to the "tasks" evaluators only.
                "tasks": (
                    sorted(tasks)
                    if tasks and config.evals[name].type == "tasks"
                    else None
                ),
            }
            out.setdefault(key(settings), settings)
    return list(out.values())


def key(settings: dict) -> str:
    """The identity of a unit: its settings (a row's, or a unit's) as JSON."""
    return json.dumps([settings.get(k) for k in SETTINGS])


def cell_name(settings: dict, with_step: bool = True) -> str:
    """A unit's sampler settings as a short name (directories, TensorBoard)."""
    parts = [f"step{settings['checkpoint_step']}"] if with_step else []
    parts += [
        settings["sampler"],
        f"{settings['steps']}steps",
        f"g{settings['guidance']:g}",
        f"ig{settings['image_guidance']:g}",
        f"osc{int(settings['oscillate'])}",
    ]
    if settings["tasks"]:
        parts.append("+".join(settings["tasks"]))
    return "_".join(parts)


def load_rows(path: str) -> list[dict]:
    """The rows of a results file ([] if there is none).

    Raises:
      ValueError: the file is not a JSON list of rows (it is left alone).
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): move it aside") from e
    if not isinstance(rows, list):
        raise ValueError(f"{path} holds no list of rows: move it aside")
    return rows


def save_rows(rows: Sequence[dict], path: str) -> None:
    """Writes the rows to `path` whole or not at all (temporary file, rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(list(rows), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _features(
    config: ml_collections.ConfigDict, workdir: str, embedder: str
) -> fid.Features | str:
    """The embedder's features: `embedder` (must load), else the run's (if any;
    otherwise the reason there is none, which the rows carry)."""
    if embedder:
        return fid.embedder_features(embedder)
    path = fid.default_embedder_path(config, workdir)
    try:
        return fid.embedder_features(path)
    except ValueError as e:
        return f"no feature network ({e}); pass --embedder"


class _Board:
    """TensorBoard scalars `eval/<cell>/<task>/<metric>` at the checkpoint step."""

    def __init__(self, logdir: str):
        from clu import metric_writers

        self.writer = metric_writers.create_default_writer(
            logdir, just_logging=jax.process_index() > 0, asynchronous=False
        )

    def write(self, settings: dict, rows: Sequence[dict]) -> None:
        cell = cell_name(settings, with_step=False)
        scalars = {
            f"eval/{cell}/{r['task']}/{r['metric']}": r["value"]
            for r in rows
            if r["value"] is not None
        }
        self.writer.write_scalars(settings["checkpoint_step"], scalars)
        self.writer.flush()


def _run_unit(loaded, config, settings, out_dir, features) -> list[dict]:
    sample_cfg = ml_collections.ConfigDict(config.sample.to_dict())
    for k in ("sampler", "steps", "guidance", "image_guidance", "oscillate"):
        sample_cfg[k] = settings[k]
    eval_cfg = ml_collections.ConfigDict(config.evals[settings["eval"]].to_dict())
    if settings["tasks"] is not None:
        eval_cfg.names = list(settings["tasks"])
    os.makedirs(out_dir, exist_ok=True)
    return evaluators.evaluate_one(loaded, eval_cfg, sample_cfg, out_dir, features)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    cells: Sequence[dict],
    *,
    features: fid.Features | None = None,
    embedder: str = "",
    rerun: bool = False,
) -> list[dict]:
    """Evaluates the units of `cells` that `eval/results.json` lacks.

    Args:
      config: the experiment config (`evals`, `sample`).
      workdir: the training run.
      cells: the sweep (see the module docstring); `[{}]` is the config's own
        setting on the latest checkpoint, which `evaluate` runs.
      features: the network of the distribution-level scores; default the
        embedder at `embedder`, else the run's (`fid.default_embedder_path`).
      embedder: an embedder workdir (`retrieval.embedder`).
      rerun: evaluate every unit again, replacing its rows; its sample grids
        go to `eval/` itself, not `eval/sweep/<cell>/`.

    Returns:
      The rows of the sweep's units, found or made.

    Raises:
      ValueError: a bad cell, a step the run has not saved, a results file
        that does not parse, or an `embedder` that does not load.
    """
    out_dir = os.path.join(workdir, "eval")
    path = os.path.join(out_dir, RESULTS)
    todo = units(config, cells, checkpointing.all_steps(workdir))
    rows = load_rows(path)
    done = {key(r) for r in rows} if not rerun else set()
    # By step, so each checkpoint loads once.
    pending = sorted(
        (u for u in todo if key(u) not in done), key=lambda u: u["checkpoint_step"]
    )
    print(
        f"{len(todo)} evaluations (checkpoint x setting x evaluator), "
        f"{len(todo) - len(pending)} already in {path}"
    )
    writer = jax.process_index() == 0
    if pending:
        os.makedirs(out_dir, exist_ok=True)
        features = features or _features(config, workdir, embedder)
        board = _Board(os.path.join(out_dir, "tensorboard")) if writer else None
    loaded = None
    for i, settings in enumerate(pending):
        name = cell_name(settings)
        print(f"evaluation {i + 1}/{len(pending)}: {name} {settings['eval']}")
        if loaded is None or loaded.step != settings["checkpoint_step"]:
            loaded = inference.load(workdir, config, step=settings["checkpoint_step"])
        grids = "." if rerun else os.path.join("sweep", name)
        made = _run_unit(
            loaded, config, settings, os.path.join(out_dir, grids), features
        )
        made = [{**r, **settings, "grids": grids} for r in made]
        rows = [r for r in rows if key(r) != key(settings)] + made
        if writer:
            save_rows(rows, path)
            report.write_markdown(rows, out_dir)
            board.write(settings, made)
    if writer and pending:
        board.writer.close()
    if writer and os.path.isdir(out_dir):
        report.write(rows, out_dir)
    wanted = {key(u) for u in todo}
    return [r for r in rows if key(r) in wanted]


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    features: fid.Features | None = None,
) -> list[dict]:
    """Runs every evaluator in `config.evals` on the latest checkpoint at the
    config's sampler setting; returns its rows, which replace that setting's
    rows in `eval/results.json` (other settings' rows are kept).

    `features`: the network of the distribution-level scores (default: the
    run's embedder, `fid.default_embedder_path`).
    """
    return run(config, workdir, [{}], features=features, rerun=True)
