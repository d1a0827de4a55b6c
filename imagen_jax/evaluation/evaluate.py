"""Evaluation: sample the config's eval prompts with EMA weights, score, report.

Writes `WORKDIR/eval/results.json` (rows `{task, metric, value,
checkpoint_step, sampler, steps, guidance, n}`), `results.md` and one sample
grid per evaluator beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from imagen_jax import inference, sampling
from imagen_jax.data import shapes_world
from imagen_jax.evaluation import grids, oracle


def _in_batches(arrays: dict, batch_size: int, fn: Callable, label: str) -> np.ndarray:
    """uint8 images of `fn(chunk, offset)` over fixed-size chunks of `arrays`.

    The last chunk is padded with copies of its last row so that every call
    has one compiled shape; the padding's outputs are dropped.
    """
    n = len(next(iter(arrays.values())))
    out = []
    for i in range(0, n, batch_size):
        chunk = {k: v[i : i + batch_size] for k, v in arrays.items()}
        m = len(next(iter(chunk.values())))
        chunk = {
            k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, 0)])
            for k, v in chunk.items()
        }
        out.append(sampling.to_uint8(fn(chunk, i))[:m])
        print(f"  {label}: sampled {i + m}/{n}", flush=True)
    return np.concatenate(out)


def single_object(loaded, eval_cfg, sample_cfg, out_dir) -> list[dict]:
    """Held-out single-object prompts scored by the oracle (colour/shape/...)."""
    prompts = shapes_world.eval_prompts(
        eval_cfg.num_prompts, seed=0, resolution=loaded.config.data.resolution
    )
    generate = sampling.make_generate_fn(
        loaded.model, loaded.config, sample_cfg.sampler
    )
    tokens, mask = loaded.tokenizer.encode_batch(
        [p["caption"] for p in prompts], loaded.config.data.max_text_len
    )

    def fn(chunk, offset):
        rng = jax.random.PRNGKey(1234 + offset)
        return generate(
            loaded.params,
            {"text_tokens": chunk["tokens"], "text_mask": chunk["mask"]},
            rng,
            sample_cfg.steps,
            sample_cfg.guidance,
        )

    images = _in_batches(
        {"tokens": tokens, "mask": mask}, eval_cfg.batch_size, fn, "held-out"
    )
    scores = [oracle.score_single(img, p["scene"]) for img, p in zip(images, prompts)]
    grids.save_grid(images, os.path.join(out_dir, "single_object.png"))
    metrics = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    metrics["colour_and_shape"] = float(
        np.mean([s["colour"] * s["shape"] for s in scores])
    )
    return [
        {
            "task": "text_to_image/held_out_single",
            "metric": k,
            "value": v,
            "n": len(prompts),
        }
        for k, v in metrics.items()
    ]


def _task_batches(loaded, names, per_task, unseen, seed=1):
    """(task name, examples, stacked instruction arrays) per task."""
    from imagen_jax import instructions
    from imagen_jax.data import tasks

    d = loaded.config.data
    for name in names:
        examples = [
            tasks.make_example(name, i, seed, d.resolution, unseen, world=d.variant)
            for i in range(per_task)
        ]
        arrays = [
            instructions.to_arrays(
                e.instruction,
                loaded.tokenizer,
                max_context=d.max_context,
                text_len=d.max_text_len,
                ctx_text_len=d.ctx_text_len,
                resolution=d.resolution,
            )
            for e in examples
        ]
        yield name, examples, {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}


def _generate_tasks(loaded, generate, batch, sample_cfg, batch_size, seed, label):
    def fn(chunk, offset):
        return generate(
            loaded.params,
            chunk,
            jax.random.PRNGKey(seed + offset),
            sample_cfg.steps,
            sample_cfg.guidance,
            sample_cfg.image_guidance,
            int(sample_cfg.oscillate),
        )

    return _in_batches(batch, batch_size, fn, label)


def _task_rows(name, examples, images, suffix=""):
    from imagen_jax.evaluation import task_metrics

    scores = [task_metrics.score_example(img, ex) for img, ex in zip(images, examples)]
    zero_shot = examples[0].zero_shot
    task = ("zero_shot/" if zero_shot else "") + name + suffix
    keys = [k for k, v in scores[0].items() if isinstance(v, (int, float))]
    return [
        {
            "task": task,
            "metric": k,
            "value": float(np.mean([s[k] for s in scores])),
            "n": len(scores),
        }
        for k in keys
    ]


def tasks_eval(loaded, eval_cfg, sample_cfg, out_dir) -> list[dict]:
    """Every ShapesWorld task: SC/PQ/O (generation) or its metric (vision);
    zero-shot combinations; unseen paraphrases of the trained tasks."""
    from imagen_jax.data import tasks

    generate = sampling.make_generate_fn(
        loaded.model, loaded.config, sample_cfg.sampler
    )
    runs = [(tasks.TRAIN_TASKS, False, ""), (tasks.ZERO_SHOT_TASKS, False, "")]
    if eval_cfg.robustness:
        runs.append((tasks.TRAIN_TASKS, True, "/unseen_paraphrase"))
    rows, grid = [], []
    for names, unseen, suffix in runs:
        for name, examples, batch in _task_batches(
            loaded, names, eval_cfg.per_task, unseen
        ):
            images = _generate_tasks(
                loaded,
                generate,
                batch,
                sample_cfg,
                eval_cfg.batch_size,
                seed=77,
                label=name + suffix,
            )
            rows += _task_rows(name, examples, images, suffix)
            grid += [images[0], examples[0].target]
            print(
                f"  {name}{suffix}: {rows[-1]['metric']}={rows[-1]['value']:.3f}",
                flush=True,
            )
    grids.save_grid(np.stack(grid), os.path.join(out_dir, "tasks.png"), cols=8)
    return rows


EVALUATORS: dict[str, Callable] = {"single_object": single_object, "tasks": tasks_eval}


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Runs every evaluator in `config.evals`; returns and writes the rows."""
    loaded = inference.load(workdir, config)
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for name, eval_cfg in config.evals.items():
        if eval_cfg.type not in EVALUATORS:
            raise ValueError(
                f"config.evals.{name}.type={eval_cfg.type!r} is not one "
                f"of {sorted(EVALUATORS)}"
            )
        print(f"eval {name} ({eval_cfg.type}) at step {loaded.step}", flush=True)
        for row in EVALUATORS[eval_cfg.type](loaded, eval_cfg, config.sample, out_dir):
            rows.append(
                {
                    **row,
                    "checkpoint_step": loaded.step,
                    "sampler": config.sample.sampler,
                    "steps": config.sample.steps,
                    "guidance": config.sample.guidance,
                }
            )
    write_results(rows, out_dir)
    return rows


def write_results(rows: list[dict], out_dir: str) -> None:
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_table(rows))


def markdown_table(rows: list[dict]) -> str:
    cols = [
        "task",
        "metric",
        "value",
        "n",
        "checkpoint_step",
        "sampler",
        "steps",
        "guidance",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
