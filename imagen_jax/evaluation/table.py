"""A comparison table over several trained models (the paper's Table 4).

An experiment file's `table()` lists the models, one dict per model: `row`
(its column label), `name` (its run directory under RUNS), `arg` (the
experiment's `:arg` options), `minutes` (training budget; with `steps`, a
model trained for that many steps instead, `minutes` 0) and optionally
`init_from` (the name of the run it starts from), `resume` (the name of a
run it continues: that run's checkpoints are copied into its directory and
training goes on to `steps`, the LR schedule planned anew to end there, the
optimizer state and the data stream kept), `experiment` (another
experiment file whose `get_config` builds this model, e.g. stage 1's) and
`config` (dotted config fields to set, e.g. `{"model.context_level": -2}`).
A model is trained once its run has saved a checkpoint (at `steps` or later
with a step budget) and was not left preempted: a preempted training, the
table's or `launch.train`'s, leaves `preemption.MARKER` in its run directory,
and the next `run` trains it on from its last checkpoint.
`run` trains the missing models (or skips them), evaluates the unevaluated
ones and writes every model's rows, tagged with it and its training compute,
to RUNS/table/results.json and the table to RUNS/table/results.md.

A model's record (its table() entry, its rows, the machine, the date) also
goes to RUNS/table/models/NAME.json. A machine whose runs do not outlive a
session cannot hold every model at once: `carry` names a directory of such
records (e.g. committed ones from earlier sessions) that stand in for models
that have no checkpoint here, provided their table() entry is still the same.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from imagen_jax import checkpointing, config_utils, preemption
from imagen_jax.evaluation import report

# Columns of the table: the paper's rows (a), (b), (c), and (a) with a stage 1
# before the mixture (issue 14).
COLUMNS = {
    "a": "(a) instruction-tuned",
    "b": "(b) single-task",
    "b_steps": "(b) single-task, (a)'s steps per task",
    "b_parts_steps": "(b) single-task, the parts_focus (a)'s steps per task",
    "c": "(c) multi-task, no instructions",
    "c_raw": "(c) multi-task, no instructions, items without their texts",
    "a_roles": "(a) with role transfer",
    "c_roles": "(c) with role transfer, no instructions",
    "a_roles_long": "(a) with role transfer, twice the steps",
    "c_roles_long": "(c) with role transfer, no instructions, twice the steps",
    "a_roles03": "(a) with role transfer, text LR x0.3",
    "c_roles03": "(c) with role transfer, no instructions, text LR x0.3",
    "a_roles03_long": "(a) with role transfer, text LR x0.3, twice the steps",
    "c_roles03_long": "(c) with role transfer, no instructions, text LR x0.3, "
    "twice the steps",
    "a_roles_sched": "(a) with role transfer, text LR x1 for the first quarter "
    "then x0.1, twice the steps",
    "c_roles_sched": "(c) with role transfer, no instructions, text LR x1 for the "
    "first quarter then x0.1, twice the steps",
    "a_roles_sched_long": "(a) with role transfer, text LR x1 for the first "
    "quarter then x0.1, three times the steps",
    "c_roles_sched_long": "(c) with role transfer, no instructions, text LR x1 "
    "for the first quarter then x0.1, three times the steps",
    "a_roles_rev": "(a) with role transfer, text LR x0.1, then from it x1 as "
    "many steps again",
    "c_roles_rev": "(c) with role transfer, no instructions, text LR x0.1, then "
    "from it x1 as many steps again",
    "a_parts": "(a) with the reference-part tasks",
    "c_parts": "(c) with the reference-part tasks, no instructions",
    "a_parts_long": "(a) with the reference-part tasks, twice the steps",
    "c_parts_long": "(c) with the reference-part tasks, no instructions, twice "
    "the steps",
    "a_parts_long3": "(a) with the reference-part tasks, three times the steps",
    "c_parts_long3": "(c) with the reference-part tasks, no instructions, "
    "three times the steps",
    "a_parts_focus": "(a) with the reference-part tasks, twice the steps, then "
    "more on a mixture with 37.5% of them",
    "c_parts_focus": "(c) with the reference-part tasks, no instructions, twice "
    "the steps, then more on a mixture with 37.5% of them",
    "a_parts_focus_long": "(a) with the reference-part tasks, twice the steps, "
    "then twice as many more on a mixture with 37.5% of them",
    "c_parts_focus_long": "(c) with the reference-part tasks, no instructions, "
    "twice the steps, then twice as many more on a mixture with 37.5% of them",
    "a_parts_focus_long3": "(a) with the reference-part tasks, twice the steps, "
    "then three times as many more on a mixture with 37.5% of them",
    "c_parts_focus_long3": "(c) with the reference-part tasks, no instructions, "
    "twice the steps, then three times as many more on a mixture with 37.5% of "
    "them",
    "a_parts_focus_long4": "(a) with the reference-part tasks, twice the steps, "
    "then four times as many more on a mixture with 37.5% of them",
    "c_parts_focus_long4": "(c) with the reference-part tasks, no instructions, "
    "twice the steps, then four times as many more on a mixture with 37.5% of "
    "them",
    "a_stage1": "(a) after stage 1",
    "a_long": "(a) instruction-tuned, twice the steps",
    "c_long": "(c) multi-task, no instructions, twice the steps",
    "a_long3": "(a) instruction-tuned, three times the steps",
    "c_long3": "(c) multi-task, no instructions, three times the steps",
}
# The parts_focus pair again, the text encoder at a tenth of the LR after
# the first leg (`stage2_shapes.PARTS_SCHED_RECIPE`).
COLUMNS.update(
    {
        f"{row}_parts_focus_sched{suffix}": f"{COLUMNS[f'{row}_parts_focus{suffix}']}"
        ", the text encoder at a tenth of the LR after the first leg"
        for row in ("a", "c")
        for suffix in ("", "_long", "_long3", "_long4")
    }
)
# The single-task columns: scored on their own tasks only, so the averages
# over all tasks leave them out.
SINGLE = ("b", "b_steps", "b_parts_steps")


def _config(get_config: Callable, row: dict, runs: str) -> ml_collections.ConfigDict:
    if row.get("experiment"):
        get_config = config_utils.load_experiment(row["experiment"]).get_config
    config = get_config(row["arg"])
    config_utils.override(config, row.get("config", {}))
    config.train.time_budget_minutes = float(row["minutes"])
    if row.get("steps"):
        config.train.num_steps = int(row["steps"])
    if row.get("init_from"):
        config.init_from = os.path.join(runs, row["init_from"])
    return config


def _parent(row: dict) -> str:
    """The name of the run `row` continues or starts from ("" for none)."""
    return row.get("resume") or row.get("init_from") or ""


def _minutes_after_start(rows: Sequence[dict], row: dict) -> float:
    """Training minutes of `row` and of the runs it starts from, the shared
    text-to-image start (row "t2i") excluded; 0 (not stated) when one of them
    trained to a number of steps instead of minutes."""
    by_name = {r["name"]: r for r in rows}
    minutes = 0.0
    while row is not None and row["row"] != "t2i":
        if not row["minutes"]:
            return 0.0
        minutes += float(row["minutes"])
        row = by_name.get(_parent(row))
    return minutes


def _steps_before(rows: Sequence[dict], row: dict, steps: dict) -> int | None:
    """Training steps before `row`'s own count after the shared start: the
    steps of the runs it starts anew from (`init_from`; a resumed run's count
    already holds those of the run it continues), taken from `steps` (run
    name -> the step it was trained to); None when one of them is unknown."""
    by_name = {r["name"]: r for r in rows}
    total = 0
    while row is not None and row["row"] != "t2i":
        parent = by_name.get(_parent(row))
        if parent is not None and parent["row"] != "t2i" and not row.get("resume"):
            if parent["name"] not in steps:
                return None
            total += steps[parent["name"]]
        row = parent
    return total


def _named(row: dict, only: Sequence[str]) -> bool:
    """Whether `only` names the row, by run name or by column."""
    return row["name"] in only or row["row"] in only


def select(rows: Sequence[dict], only: Sequence[str]) -> list[dict]:
    """The rows named in `only` (by run name or column, e.g. "b") and the runs
    they start from, in table order; all rows when `only` is empty."""
    if not only:
        return list(rows)
    by_name = {r["name"]: r for r in rows}
    unknown = set(only) - set(by_name) - {r["row"] for r in rows}
    if unknown:
        raise ValueError(
            f"no table row or run named {sorted(unknown)}; the table has "
            f"{sorted(by_name)} in columns {sorted({r['row'] for r in rows})}"
        )
    wanted = set()
    for row in rows:
        if _named(row, only):
            while row is not None and row["name"] not in wanted:
                wanted.add(row["name"])
                row = by_name.get(_parent(row))
    return [r for r in rows if r["name"] in wanted]


def _saved_steps(workdir: str) -> list[int]:
    """The steps the run has saved, in order; [] when it has none."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return []
    return checkpointing.all_steps(workdir)


def _trained(workdir: str, steps: int = 0) -> bool:
    """Whether the run in `workdir` finished: it saved a checkpoint, at `steps`
    or later when the row has a step budget, and was not left preempted."""
    saved = _saved_steps(workdir)
    if not saved or os.path.exists(os.path.join(workdir, preemption.MARKER)):
        return False
    return saved[-1] >= steps


# The config fields that say which model a run is: its data (world, mixture,
# texts) and its architecture. Budgets, paths and sampling may differ.
IDENTITY = (
    "data.variant",
    "data.mixture",
    "data.plain_text",
    "data.plain_items",
    "data.word_noise",
    "data.answers",
    "data.query_objects",
    "model",
)


def _check_same_model(config: ml_collections.ConfigDict, workdir: str, row: dict):
    """Raises if the run in `workdir` was trained with another model or data
    than `row` asks for (say a run directory left from an earlier table).
    A field that the run's config.json predates counts as the same when the
    table leaves it off (False, 0, empty).

    Raises:
      ValueError: naming the fields that differ.
    """

    def leaves(c, prefix: str) -> dict:
        if not isinstance(c, dict):
            return {prefix: c}
        return {k: v for key in c for k, v in leaves(c[key], f"{prefix}.{key}").items()}

    def identity(c: ml_collections.ConfigDict) -> dict:
        c = json.loads(c.to_json())
        found = {}
        for field in IDENTITY:
            section, *rest = field.split(".")
            value = c.get(section, {}) if not rest else c.get(section, {}).get(rest[0])
            if value is not None:
                found.update(leaves(value, field))
        return found

    trained = identity(checkpointing.load_config(workdir))
    asked = identity(config)
    differ = [
        f"{f}: trained {trained.get(f)}, the table asks {asked.get(f)}"
        for f in sorted(set(trained) | set(asked))
        if trained.get(f) != asked.get(f) and (f in trained or asked[f])
    ]
    if differ:
        raise ValueError(
            f"{workdir} holds another model than row {row['row']} {row['name']} "
            f"({row['arg']}): {'; '.join(differ)}. Move that run away or retrain it."
        )


def _own_rows(rows: list[dict], config: ml_collections.ConfigDict) -> list[dict]:
    """The rows of the config's own sampler setting at the latest checkpoint
    (a sweep may have added others); rows that predate the recorded settings
    are kept."""
    from imagen_jax.evaluation import sweep

    step = max((r["checkpoint_step"] for r in rows), default=0)
    own = {sweep.key(u) for u in sweep.units(config, [{}], [step])}
    return [r for r in rows if sweep.key(r) in own or not set(sweep.SETTINGS) <= set(r)]


def run(
    get_config: Callable,
    rows: Sequence[dict],
    runs: str,
    *,
    train_missing: bool = False,
    skip_missing: bool = False,
    carry: str | None = None,
    only: Sequence[str] = (),
    evaluate: bool = True,
) -> list[dict]:
    """Trains (if asked) and evaluates each model, then writes the table;
    without `evaluate`, only trains (returning no rows, writing no table), so
    a chain of runs can train now and be scored later.

    With `skip_missing` a model not trained (module docstring) is left out of
    the table (named on the console) instead of stopping it. A model not
    trained whose record is in the `carry` directory is taken from it. With
    `only` (`select`), the other models are left out when they are neither
    trained nor carried, whatever `train_missing` says; only the named ones
    are evaluated here, their starts are trained only. One trained but not
    evaluated at its latest step and not named is left out too, so jobs with
    different `only` can run side by side. Every model's rows are
    read when the trainings are done, so one that another job scored again
    meanwhile enters the table and its record with its new rows.

    Raises:
      FileNotFoundError: a model is not trained and neither `train_missing`
        nor `skip_missing` is on, nor is it carried.
      ValueError: a carried record was made for another table() entry.
    """
    from imagen_jax import train
    from imagen_jax.evaluation import sweep

    chosen = {r["name"] for r in select(rows, only)}
    # Scored here: the rows named in `only` (all when it is empty), not the
    # starts they bring along, which are trained only.
    named = {r["name"] for r in rows if not only or _named(r, only)}
    steps = {}  # run name -> the step it was trained to
    # Per column in table order: carried rows, or (row, eval path, config) of
    # a model scored here, whose rows are read once every training is done:
    # another job may score it again while this one trains.
    columns: list = []
    for row in rows:
        workdir = os.path.join(runs, row["name"])
        config = _config(get_config, row, runs)
        trained = _trained(workdir, int(row.get("steps") or 0))
        if trained:
            _check_same_model(config, workdir, row)
        carried = None if trained else _carried(carry, row)
        if carried is not None:
            found = [
                r["checkpoint_step"] for r in carried["rows"] if "checkpoint_step" in r
            ]
            if found:
                steps[row["name"]] = max(found)
            if row["row"] in COLUMNS:
                columns.append(carried["rows"])
            continue
        if not trained:
            if (skip_missing and not train_missing) or row["name"] not in chosen:
                print(
                    f"== skipping {row['name']}: no finished training in {workdir}",
                    flush=True,
                )
                continue
            if not train_missing:
                raise FileNotFoundError(
                    f"{workdir} holds no finished training: train row {row['row']} "
                    f"({row['arg']}) first, or pass --train"
                )
            budget = (
                f"{row['steps']} steps" if row.get("steps") else f"{row['minutes']} min"
            )
            print(f"== training {row['name']} ({budget})", flush=True)
            _build_vocabulary(config)
            if row.get("resume") and not _saved_steps(workdir):
                _copy_checkpoints(os.path.join(runs, row["resume"]), workdir)
            try:  # a preempted training leaves preemption.MARKER in workdir
                train.train_and_evaluate(config, workdir, raise_on_preemption=True)
            except train.Preempted as stopped:
                raise SystemExit(
                    f"== {row['name']} {stopped}: the table stops here (nothing "
                    "is evaluated); run the same command again to go on"
                ) from None
        steps[row["name"]] = max(_saved_steps(workdir), default=0)
        if row["row"] not in COLUMNS or not evaluate:
            continue  # a starting point, not a column; or training only
        path = os.path.join(workdir, "eval", "results.json")
        scored = _own_rows(sweep.load_rows(path), config)
        latest = max(_saved_steps(workdir), default=0)
        if not scored or max(r["checkpoint_step"] for r in scored) < latest:
            # not evaluated, or at an earlier step than it has now
            if row["name"] not in named:
                # a start only, or another `--only` job may be scoring it now
                print(
                    f"== leaving out {row['name']}: not evaluated at step "
                    f"{latest} (name it in --only to evaluate it)",
                    flush=True,
                )
                continue
            print(f"== evaluating {row['name']} at step {latest}", flush=True)
            _build_vocabulary(config)
            sweep.evaluate(config, workdir)
        columns.append((row, path, config))
    if not evaluate:
        return []
    results = []
    for column in columns:
        if isinstance(column, list):  # carried
            results.extend(column)
            continue
        row, path, config = column
        scored = _own_rows(sweep.load_rows(path), config)
        step = max((r["checkpoint_step"] for r in scored), default=0)
        images = step * config.data.batch_size
        compute = {"minutes_after_start": _minutes_after_start(rows, row)}
        before = _steps_before(rows, row, steps)
        if before is not None:
            compute["steps_after_start"] = step + before
        tags = {"model": row["name"], "row": row["row"], **compute}
        own = [{**r, **tags} for r in scored]
        results.extend(own)
        _write_record(row, own, os.path.join(runs, "table", "models"))
        print(f"  {row['name']}: step {step}, {images} training images", flush=True)
    write(results, os.path.join(runs, "table"))
    return results


def _build_vocabulary(config: ml_collections.ConfigDict) -> None:
    """Builds the task world's word pieces (`vocabulary.build`, deterministic,
    seconds) when a training reads them and they are not yet there, as on a
    new machine; another missing vocabulary is left to the tokenizer's error."""
    from imagen_jax.data import vocabulary

    path = config.text.get("vocab_path", "")
    if config.text.get("tokenizer") != "sentencepiece" or os.path.exists(path):
        return
    world = config.data.get("variant", "")
    if path == vocabulary.path_for(os.path.dirname(path), world):
        print(f"== building the {world} world's word pieces into {path}", flush=True)
        vocabulary.build(os.path.dirname(path), world)


def _copy_checkpoints(source: str, workdir: str) -> None:
    """`source`'s checkpoints into `workdir`, whose training then resumes from
    the latest of them (a row with `resume`).

    Raises:
      FileNotFoundError: `source` holds no checkpoint.
    """
    if not _trained(source):
        raise FileNotFoundError(
            f"{source} holds no checkpoint to continue: train it first (it comes "
            f"with --only when the run continuing it is named)"
        )
    print(f"== continuing {source}", flush=True)
    shutil.copytree(
        os.path.join(source, "checkpoints"),
        os.path.join(workdir, "checkpoints"),
        dirs_exist_ok=True,
    )


def _write_record(row: dict, rows: list[dict], out_dir: str) -> None:
    """The model's record for `carry`: its table() entry, rows, machine, date."""
    path = os.path.join(out_dir, f"{row['name']}.json")
    report.write_record(path, rows, entry=row)


def as_json(row: dict) -> dict:
    """`row` as its JSON record holds it (tuples become lists)."""
    return json.loads(json.dumps(row))


def _carried(carry: str | None, row: dict) -> dict | None:
    """The record of `row`'s model in the `carry` directory, if there is one."""
    path = os.path.join(carry, f"{row['name']}.json") if carry else ""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get("entry") != as_json(row):
        raise ValueError(
            f"{path} was made for the table entry {record.get('entry')}, but the "
            f"table now has {row}: train {row['name']} again, or remove the record"
        )
    print(
        f"== {row['name']}: carried from {path} ({record.get('date')}, "
        f"{record.get('machine')})",
        flush=True,
    )
    return record


def _headline(results: Sequence[dict]) -> dict[tuple[str, str], dict]:
    """{(task, column): row} of each column's headline score per task: O for
    the generation tasks, the task's own score for the vision tasks."""
    return {
        (r["task"], r["row"]): r
        for r in results
        if r["metric"] in ("o", "score") and _table_row(r["task"])
    }


def _groups(names: Sequence[str], columns: Sequence[str]) -> dict[str, list[str]]:
    """The averages' tasks: in-domain generation, its unseen phrasings,
    zero-shot, and the tasks of the specialists (tasks a column of `SINGLE`
    has, `columns` being {(task, column)})."""
    from imagen_jax.data import tasks as catalogue

    generation = [t for t in names if t.split("/")[0] not in catalogue.VISION_TASKS]
    return {
        "average/in_domain": [t for t in generation if "/" not in t],
        "average/unseen_paraphrase": [
            t for t in generation if t.endswith("/unseen_paraphrase")
        ],
        "average/zero_shot": [t for t in names if t.startswith("zero_shot/")],
        "average/specialist_tasks": [
            t for t in names if "/" not in t and any((t, c) in columns for c in SINGLE)
        ],
    }


def _task_names(headline) -> list[str]:
    return sorted(
        dict.fromkeys(t for t, _ in headline),
        key=lambda t: (t.startswith("zero_shot/"), t),
    )


def markdown(results: Sequence[dict], paired: Sequence[dict] | None = None) -> str:
    """Per task the headline score of each column: O for generation tasks, the
    task's own score for the vision tasks, each followed by the same on the
    task's unseen phrasings; the (b) columns show each task's specialist. Then the
    averages, computed here over the tasks each column has: in-domain
    generation O, the same on unseen phrasings, zero-shot O, and all columns
    on the specialists' tasks, each with its standard error ("0.92 ±0.02")
    when every task's record has one; each column's training compute
    after the shared start (minutes, steps); and the paired differences
    (`differences`, or `paired` when they are computed already)."""
    from imagen_jax.evaluation import evaluate

    found = _headline(results)
    headline = {k: r["value"] for k, r in found.items()}
    errors = {k: r.get("se") for k, r in found.items()}
    columns = [c for c in COLUMNS if any(row == c for _, row in headline)]
    names = _task_names(headline)
    groups = _groups(names, headline)
    for group, members in groups.items():
        for c in columns:
            have = [(t, c) for t in members if (t, c) in headline]
            if have and (c not in SINGLE or group == "average/specialist_tasks"):
                headline[(group, c)] = sum(headline[k] for k in have) / len(have)
                if all(errors[k] is not None for k in have):
                    errors[(group, c)] = evaluate.mean_standard_error(
                        [errors[k] for k in have]
                    )
    lines = [
        "| task | " + " | ".join(COLUMNS[c] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for task in names + list(groups):
        text = []
        for c in columns:
            value, error = headline.get((task, c)), errors.get((task, c))
            shown = "" if value is None else f"{value:.2f}"
            if value is not None and error is not None and task in groups:
                shown += f" ±{error:.2f}"
            text.append(shown)
        lines.append(f"| {task} | " + " | ".join(text) + " |")
    compute = [_compute(results, c) for c in columns]
    if any(compute):
        lines.append(
            "| training after the start: min (steps) | " + " | ".join(compute) + " |"
        )
    if paired is None:
        paired = differences(results)
    if paired:
        shown = list(groups)
        lines += [
            "",
            "| paired difference, the same examples | "
            + " | ".join(g.split("/")[1] for g in shown)
            + " |",
            "|---|" + "---|" * len(shown),
        ]
        cells = {(d["first"], d["second"], d["task"]): d for d in paired}
        for first, second in dict.fromkeys((d["first"], d["second"]) for d in paired):
            text = []
            for g in shown:
                d = cells.get((first, second, g))
                text.append("" if d is None else f"{d['value']:+.3f} ±{d['se']:.3f}")
            lines.append(f"| {first} - {second} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def _pairs(columns: Sequence[str]) -> list[tuple[str, str]]:
    """The column pairs `differences` compares: each (a) column with the (c)
    column of the same name after the letter, then with each single-task
    column."""
    a_columns = [c for c in columns if c == "a" or c.startswith("a_")]
    pairs = [(a, "c" + a[1:]) for a in a_columns if "c" + a[1:] in columns]
    return pairs + [(a, b) for a in a_columns for b in columns if b in SINGLE]


def differences(results: Sequence[dict]) -> list[dict]:
    """Per pair of columns (`_pairs`) and average, the difference of the two
    columns' averages over the tasks both have, with the standard error of the
    examples' paired differences: both columns score the same examples from
    the same sampler noise, so a hard example is hard for both and the
    pair's difference varies less than each score. A column's tasks are drawn
    apart, so the tasks' errors add in quadrature (`mean_standard_error`). An
    average is left out where a task of it lacks either column's examples'
    values (`evaluate.PER_EXAMPLE_METRICS`; records written before them) or
    their counts differ. The (a)-(b) pairs: the specialist tasks only."""
    from imagen_jax.evaluation import evaluate

    found = _headline(results)
    columns = [c for c in COLUMNS if any(row == c for _, row in found)]
    groups = _groups(_task_names(found), found)
    out = []
    for first, second in _pairs(columns):
        for group, members in groups.items():
            if second in SINGLE and group != "average/specialist_tasks":
                continue
            shared = [
                t for t in members if (t, first) in found and (t, second) in found
            ]
            per_task = []
            for t in shared:
                x = found[(t, first)].get("per_example")
                y = found[(t, second)].get("per_example")
                if x is None or y is None or len(x) != len(y):
                    per_task = []
                    break
                d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
                per_task.append((float(d.mean()), evaluate.standard_error(d)))
            if not per_task:
                continue
            out.append(
                {
                    "first": first,
                    "second": second,
                    "task": group,
                    "value": sum(v for v, _ in per_task) / len(per_task),
                    "se": evaluate.mean_standard_error([e for _, e in per_task]),
                    "n": len(per_task),
                }
            )
    return out


def _table_row(task: str) -> bool:
    """A task's own row, its unseen phrasings' or a zero-shot combination's;
    not a condition's grade, the text-only baseline or an average (the
    averages are computed here, over the tasks each column has)."""
    parts = task.split("/")
    if parts[0] == "average" or len(parts) > 2:
        return False
    return len(parts) == 1 or parts[0] == "zero_shot" or parts[1] == "unseen_paraphrase"


def _compute(results: Sequence[dict], column: str) -> str:
    """The column's compute as text: minutes (steps after the shared start,
    those of the runs it started anew from included), e.g. "55 (3144)" for one
    model, "20 each (909-1117)" for several; "- each (147-529)" for models
    trained to a number of steps (minutes 0)."""
    models = {}
    for r in results:
        if r["row"] == column and "minutes_after_start" in r:
            own = r.get("steps_after_start", r["checkpoint_step"])
            step = max(models.get(r["model"], (0, 0))[1], own)
            models[r["model"]] = (r["minutes_after_start"], step)
    if not models:
        return ""
    minutes = sorted({m for m, _ in models.values()})
    steps = sorted(s for _, s in models.values())
    text = "/".join(f"{m:g}" if m else "-" for m in minutes)
    text += " each" if len(models) > 1 else ""
    span = f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
    return f"{text} ({span})"


def write(results: Sequence[dict], out_dir: str) -> str:
    """Writes the rows, the table (`markdown`) and the paired differences to
    `out_dir`; returns the table."""
    os.makedirs(out_dir, exist_ok=True)
    paired = differences(results)
    text = markdown(results, paired)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(list(results), f, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "differences.json"), "w") as f:
        json.dump(paired, f, indent=2)
    return text
