"""What an evaluation's rows become: markdown tables, plots and an HTML page.

`write(rows, out_dir)` writes, beside `results.json`:
- `results.md`: the headline scores, one line per sampler setting and
  checkpoint, then every row;
- `plots/vs_guidance.png`, `plots/vs_steps.png`, `plots/vs_training.png`:
  each headline metric against the text guidance and the sampler steps (at
  the latest checkpoint), and over the checkpoint steps; one line per
  combination of the other settings (a plot is left out when nothing varies
  along its axis);
- `report.html`: the headline table, the plots and each setting's sample
  grids (links relative to `out_dir`), then every row.
When the rows hold the reference sampler setting (DDIM-50) and fewer steps,
`results.md` also gets the fewer-steps verdict (`steps_study`); when they
score unseen paraphrases per template, those scores (`phrasings`), as
`report.html` does.
"""

from __future__ import annotations

import datetime
import glob
import html
import json
import math
import os
from collections.abc import Sequence

from imagen_jax import machine

# Settings of a row (`sweep.SETTINGS`), kept here so the report needs no model code.
SETTINGS = (
    "checkpoint_step",
    "sampler",
    "steps",
    "guidance",
    "image_guidance",
    "oscillate",
    "eval",
    "tasks",
)
# Metrics worth a plot when the rows have no task averages.
HEADLINE_METRICS = (
    "o",
    "sc",
    "pq",
    "score",
    "colour_and_shape",
    "colour",
    "shape",
    "position",
    "fill",
    "retrieval_precision",
    "fid",
    "kid",
)
DISTRIBUTION_METRICS = ("fid", "kid")
# Metrics that are not a fraction of their n samples (no binomial error).
NOT_PROPORTIONS = ("o", "score", "fid", "kid", "kid_std")
# (x-axis setting, file name, axis label) of the plots.
AXES = (
    ("guidance", "vs_guidance.png", "text guidance scale"),
    ("steps", "vs_steps.png", "sampler steps"),
    ("checkpoint_step", "vs_training.png", "training step"),
)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 0.01 and value else f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return str(value)


def _fmt_setting(value) -> str:
    return f"{value:g}" if isinstance(value, float) else _fmt(value)


def _complete(rows: Sequence[dict]) -> list[dict]:
    """Rows that record every setting (rows of older evaluations may not)."""
    return [r for r in rows if all(k in r for k in SETTINGS)]


def headline(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """(task, metric) pairs to tabulate and plot: the task averages and the
    distribution scores when there are averages, else the `HEADLINE_METRICS`."""
    pairs = dict.fromkeys((r["task"], r["metric"]) for r in rows)
    if any(task.startswith("average/") for task, _ in pairs):
        keep = lambda t, m: t.startswith("average/") or m in DISTRIBUTION_METRICS  # noqa: E731
    else:
        keep = lambda t, m: m in HEADLINE_METRICS  # noqa: E731
    return [p for p in pairs if keep(*p)]


def _setting_key(row: dict, without: Sequence[str] = ()) -> tuple:
    return tuple(_fmt_setting(row[k]) for k in SETTINGS if k not in ("eval", *without))


def _setting_names(without: Sequence[str] = ()) -> list[str]:
    return [k for k in SETTINGS if k not in ("eval", *without)]


def pivot(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, lines) of the headline table: one line per setting."""
    rows = _complete(rows)
    pairs = headline(rows)
    values: dict[tuple, dict] = {}
    for r in rows:
        if (r["task"], r["metric"]) in pairs:
            values.setdefault(_setting_key(r), {})[(r["task"], r["metric"])] = r
    header = _setting_names() + [f"{t} {m}" for t, m in pairs]
    lines = [
        list(setting) + [_fmt(found[p]["value"]) if p in found else "" for p in pairs]
        for setting, found in values.items()
    ]
    return header, lines


def _markdown(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def markdown_rows(rows: Sequence[dict]) -> str:
    """Every row as a markdown table, each setting a column."""
    cols = ["task", "metric", "value", "n", *SETTINGS]
    return _markdown(cols, [_cells(r, cols) for r in rows])


def _cells(row: dict, cols: Sequence[str]) -> list[str]:
    return [
        _fmt_setting(row.get(c)) if c in SETTINGS else _fmt(row.get(c)) for c in cols
    ]


def headline_markdown(rows: Sequence[dict]) -> str:
    """The headline table (`pivot`) in markdown."""
    return _markdown(*pivot(rows))


def _proportions(rows: Sequence[dict]) -> dict[tuple, dict[tuple, dict]]:
    """setting key -> {(task, metric): row} of the rows that are proportions."""
    out: dict[tuple, dict] = {}
    for r in _complete(rows):
        if (
            r["metric"] not in NOT_PROPORTIONS
            and not r["task"].startswith("average/")
            and r.get("n")
            and r["value"] is not None
            and 0.0 <= r["value"] <= 1.0
        ):
            out.setdefault(_setting_key(r), {})[(r["task"], r["metric"])] = r
    return out


def steps_study(
    rows: Sequence[dict], reference: tuple[str, int] = ("ddim", 50), z: float = 2.0
) -> dict | None:
    """Which (sampler, steps) keep the reference's oracle scores within noise.

    At the latest checkpoint and the reference's other settings, each
    (sampler, steps) cell is compared with the reference cell on every
    proportion score both have (colour, shape, fill, SC, PQ, ...: a fraction
    of `n` samples). A difference is noise while it is at most `z` binomial
    standard errors of the reference's score, sqrt(p (1 - p) / n) (at least
    1/n, so a perfect score still allows one sample). `chosen` is the cell
    with the fewest steps where every score is within noise (on a tie the
    reference's sampler). None when the rows lack the reference or any other
    steps.

    Returns:
      {"reference": {"sampler", "steps"}, "z": z, "cells": [{"sampler",
      "steps", "within_noise", "worst": {"task", "metric", "value",
      "reference", "standard_errors"}}, ...] by steps, "chosen": {"sampler",
      "steps"} or None}.
    """
    table = _proportions(rows)
    if not table:
        return None
    names = _setting_names()
    col = {name: i for i, name in enumerate(names)}
    latest = max(int(k[col["checkpoint_step"]]) for k in table)
    at_latest = {
        k: v for k, v in table.items() if int(k[col["checkpoint_step"]]) == latest
    }
    sampler, steps = reference
    refs = [
        k
        for k in at_latest
        if k[col["sampler"]] == sampler and k[col["steps"]] == _fmt_setting(steps)
    ]
    if not refs:
        return None
    ref_key = refs[0]
    others = [i for i, n in enumerate(names) if n not in ("sampler", "steps")]
    same = lambda k: all(k[i] == ref_key[i] for i in others)  # noqa: E731
    cells = []
    for key, scores in at_latest.items():
        if key == ref_key or not same(key):
            continue
        worst = None
        for pair, row in scores.items():
            ref = at_latest[ref_key].get(pair)
            if ref is None:
                continue
            p, n = ref["value"], ref["n"]
            se = max(math.sqrt(p * (1 - p) / n), 1 / n)
            errors = abs(row["value"] - p) / se
            if worst is None or errors > worst["standard_errors"]:
                worst = dict(
                    task=pair[0],
                    metric=pair[1],
                    value=row["value"],
                    reference=p,
                    standard_errors=round(errors, 2),
                )
        if worst is not None:
            cells.append(
                dict(
                    sampler=key[col["sampler"]],
                    steps=int(key[col["steps"]]),
                    within_noise=worst["standard_errors"] <= z,
                    worst=worst,
                )
            )
    if not cells:
        return None
    cells.sort(key=lambda c: (c["steps"], c["sampler"] != sampler, c["sampler"]))
    chosen = next((c for c in cells if c["within_noise"]), None)
    return {
        "reference": {"sampler": sampler, "steps": steps},
        "checkpoint_step": latest,
        "z": z,
        "cells": cells,
        "chosen": None
        if chosen is None
        else {"sampler": chosen["sampler"], "steps": chosen["steps"]},
    }


def steps_study_markdown(study: dict) -> str:
    """The `steps_study` verdict as a markdown section."""
    ref = study["reference"]
    text = (
        f"## Fewer steps (against {ref['sampler']}-{ref['steps']}, checkpoint "
        f"{study['checkpoint_step']})\n\nA score is within noise while it differs "
        f"from the reference's by at most {study['z']:g} binomial standard errors "
        "of the reference's score.\n\n"
    )
    header = ["sampler", "steps", "within noise", "largest difference", "errors"]
    lines = []
    for c in study["cells"]:
        w = c["worst"]
        lines.append(
            [
                c["sampler"],
                str(c["steps"]),
                "yes" if c["within_noise"] else "no",
                f"{w['task']} {w['metric']} {_fmt(w['value'])} vs "
                f"{_fmt(w['reference'])}",
                f"{w['standard_errors']:g}",
            ]
        )
    text += _markdown(header, lines)
    chosen = study["chosen"]
    text += "\nFewest steps within noise: " + (
        f"**{chosen['sampler']}, {chosen['steps']} steps**.\n"
        if chosen
        else "none of the cells.\n"
    )
    return text


UNSEEN = "/unseen_paraphrase"


def phrasings(rows: Sequence[dict]) -> tuple[str, list[str], list[list[str]]] | None:
    """(title, header, lines): the unseen paraphrases' headline score per
    template (`by_template`), lowest first, beside the task's seen score, at
    the first setting that scored them: which phrasings a task's unseen mean
    lost. None when no row has them."""
    unseen = [r for r in _complete(rows) if r["task"].endswith(UNSEEN)]
    unseen = [r for r in unseen if r.get("by_template")]
    if not unseen:
        return None
    first = _setting_key(unseen[0])
    seen = {
        (r["task"], r["metric"]): r["value"]
        for r in _complete(rows)
        if _setting_key(r) == first
    }
    lines = []
    for r in unseen:
        if _setting_key(r) != first:
            continue
        task = r["task"][: -len(UNSEEN)]
        base = _fmt(seen.get((task, r["metric"])))
        for t in r["by_template"]:
            line = [task, r["metric"], base, t["template"], _fmt(t["value"])]
            lines.append([*line, str(t["n"])])
    header = ["task", "metric", "seen", "unseen template", "value", "n"]
    settings = ", ".join(f"{k} {v}" for k, v in zip(_setting_names(), first))
    return f"Unseen phrasings by template ({settings})", header, lines


_PHRASINGS_NOTE = (
    "Each unseen paraphrase's examples scored on their own, lowest first; "
    "`seen` is the task's score on its training phrasings."
)


def phrasings_markdown(rows: Sequence[dict]) -> str | None:
    """`phrasings` as a markdown section, or None."""
    found = phrasings(rows)
    if found is None:
        return None
    title, header, lines = found
    return f"## {title}\n\n{_PHRASINGS_NOTE}\n\n" + _markdown(header, lines)


def write_markdown(rows: Sequence[dict], out_dir: str) -> str:
    """`results.md`: the headline table, the fewer-steps verdict and the
    unseen phrasings by template where the rows have them, then every row;
    returns its path."""
    text = "## Headline scores\n\n" + headline_markdown(rows)
    study = steps_study(rows)
    if study is not None:
        text += "\n" + steps_study_markdown(study)
    phrasings = phrasings_markdown(rows)
    if phrasings is not None:
        text += "\n" + phrasings
    text += "\n## Every row\n\n" + markdown_rows(rows)
    path = os.path.join(out_dir, "results.md")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def _lines(rows: Sequence[dict], axis: str, pair: tuple[str, str]) -> dict:
    """label key -> sorted [(x, value)] of one headline pair along `axis`."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if (r["task"], r["metric"]) == pair and r["value"] is not None:
            out.setdefault(_setting_key(r, (axis,)), {})[r[axis]] = r["value"]
    return {k: sorted(v.items()) for k, v in out.items() if len(v) >= 2}


def _labels(keys: Sequence[tuple], axis: str) -> list[str]:
    """Each line's label: the settings that differ between the lines."""
    names = _setting_names((axis,))
    varying = [i for i in range(len(names)) if len({k[i] for k in keys}) > 1]
    return [
        ", ".join(f"{names[i]}={k[i]}" for i in varying) or "all settings equal"
        for k in keys
    ]


def _figure(series: dict, axis: str, label: str):
    """One subplot per headline pair, one coloured line per setting (the same
    colour for the same setting in every subplot), a shared legend."""
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(k for lines in series.values() for k in lines))
    labels = dict(zip(keys, _labels(keys, axis)))
    cols = min(3, len(series))
    nrows = -(-len(series) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows + 0.3), layout="constrained")
    handles = {}
    for i, ((task, metric), lines) in enumerate(series.items()):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for k, points in lines.items():
            xs, ys = zip(*points)
            colour = f"C{keys.index(k) % 10}"
            (handles[k],) = ax.plot(xs, ys, marker="o", color=colour)
        ax.set_title(f"{task}  {metric}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    fig.legend(
        [handles[k] for k in keys],
        [labels[k] for k in keys],
        loc="outside lower center",
        fontsize=7,
        ncols=min(3, len(keys)),
    )
    return fig


def plot(rows: Sequence[dict], out_dir: str) -> list[str]:
    """The PNG plots (`AXES`) under `out_dir/plots`; returns their paths."""
    rows = _complete(rows)
    pairs = headline(rows)
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    latest = max((r["checkpoint_step"] for r in rows), default=None)
    paths = []
    for axis, name, label in AXES:
        along = [
            r
            for r in rows
            if axis == "checkpoint_step" or r["checkpoint_step"] == latest
        ]
        series = {p: _lines(along, axis, p) for p in pairs}
        series = {p: s for p, s in series.items() if s}
        if series:
            path = os.path.join(out_dir, "plots", name)
            _figure(series, axis, label).savefig(path, dpi=90)
            paths.append(path)
    return paths


def _html_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>"
        for line in lines
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _grids_html(rows: Sequence[dict], out_dir: str) -> str:
    """Per grid directory, its settings, top-level grids inline and the
    per-task grids as links."""
    parts = []
    for grids in dict.fromkeys(r.get("grids") for r in rows if r.get("grids")):
        found = sorted(glob.glob(os.path.join(out_dir, grids, "*.png")))
        tasks = sorted(glob.glob(os.path.join(out_dir, grids, "tasks", "*.png")))
        if not found and not tasks:
            continue
        rel = lambda p: html.escape(os.path.relpath(p, out_dir))  # noqa: E731
        parts.append(f"<h3>{html.escape(grids)}</h3>")
        parts += [
            f'<figure><img src="{rel(p)}"><figcaption>{rel(p)}</figcaption></figure>'
            for p in found
        ]
        if tasks:
            links = " ".join(
                f'<a href="{rel(p)}">{html.escape(os.path.basename(p))}</a>'
                for p in tasks
            )
            parts.append(f"<details><summary>per task</summary>{links}</details>")
    return "\n".join(parts)


_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
    "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
    "img{image-rendering:pixelated;max-width:100%}figure{display:inline-block}"
)


def _phrasings_html(rows: Sequence[dict]) -> str:
    found = phrasings(rows)
    if found is None:
        return ""
    title, header, lines = found
    return (
        f"<h2>{html.escape(title)}</h2><p>{html.escape(_PHRASINGS_NOTE)}</p>"
        + _html_table(header, lines)
    )


def write_html(rows: Sequence[dict], out_dir: str, plots: Sequence[str]) -> str:
    """`report.html`; returns its path."""
    cols = ["task", "metric", "value", "n", *SETTINGS]
    every = [_cells(r, cols) for r in rows]
    images = "".join(
        f'<img src="{html.escape(os.path.relpath(p, out_dir))}">' for p in plots
    )
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>evaluation"
        f"</title><style>{_STYLE}</style></head><body>"
        f"<h1>Evaluation</h1><h2>Headline scores</h2>{_html_table(*pivot(rows))}"
        f"<h2>Plots</h2>{images or '<p>no setting varies: nothing to plot</p>'}"
        f"<h2>Sample grids</h2>{_grids_html(rows, out_dir)}{_phrasings_html(rows)}"
        f"<h2>Every row</h2><details><summary>{len(rows)} rows</summary>"
        f"{_html_table(cols, every)}</details></body></html>\n"
    )
    path = os.path.join(out_dir, "report.html")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def write(rows: Sequence[dict], out_dir: str) -> dict[str, object]:
    """results.md, the plots and report.html; returns their paths."""
    plots = plot(rows, out_dir)
    return {
        "markdown": write_markdown(rows, out_dir),
        "plots": plots,
        "html": write_html(rows, out_dir, plots),
    }


def write_record(path: str, rows: Sequence[dict], **fields) -> None:
    """A record of evaluated `rows` (for docs/results/): `fields` (the command,
    the model), the machine and the date, then the rows."""
    record = {
        **fields,
        "machine": machine.cpu_model(),
        "date": datetime.date.today().isoformat(),
        "rows": list(rows),
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
