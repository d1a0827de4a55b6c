"""Evaluation: sample the config's eval prompts with EMA weights, score, report.

Each evaluator of `config.evals` (`EVALUATORS`) samples its prompts at one
sampler setting and returns rows `{task, metric, value, n}`; `evaluate_one`
adds the distribution-level scores of its samples (`fid`). `sweep.evaluate`
runs them all at the config's sampler setting; `sweep.run` over a grid of
checkpoints and settings. Results go to `WORKDIR/eval/results.json` (every
setting in each row), `results.md`, `report.html` and sample grids.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax import sampling
from imagen_jax.data import shapes_world
from imagen_jax.evaluation import fid, grids, oracle


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


# The generate functions of the models evaluated in this process, by (model,
# config, sampler, rule): steps and scales are traced, so a sweep compiles
# each sampler once, whichever checkpoint, steps or guidance it scores.
_GENERATE_FNS: dict[tuple, Callable] = {}


def generate_fn(loaded, sampler: str, rule: str = "chain") -> Callable:
    """`sampling.make_generate_fn` of `loaded`'s model, made once per process."""
    key = (loaded.model, loaded.config.to_json(), sampler, rule)
    if key not in _GENERATE_FNS:
        _GENERATE_FNS[key] = sampling.make_generate_fn(
            loaded.model, loaded.config, sampler, rule
        )
    return _GENERATE_FNS[key]


def single_object(loaded, eval_cfg, sample_cfg, out_dir, samples=None) -> list[dict]:
    """Held-out single-object prompts scored by the oracle (colour/shape/...).

    `samples` (a list, optional) receives (task, samples, the prompts'
    ground-truth renders) for the distribution-level scores.
    """
    resolution = loaded.config.data.resolution
    prompts = shapes_world.eval_prompts(
        eval_cfg.num_prompts, seed=0, resolution=resolution
    )
    generate = generate_fn(loaded, sample_cfg.sampler)
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
            sample_cfg.get("image_guidance", 1.0),
            int(sample_cfg.get("oscillate", False)),
        )

    images = _in_batches(
        {"tokens": tokens, "mask": mask}, eval_cfg.batch_size, fn, "held-out"
    )
    task = "text_to_image/held_out_single"
    if samples is not None:
        samples.append((task, images, np.stack([p["image"] for p in prompts])))
    # Held-out objects are solid and captions leave a solid fill unnamed, so
    # "fill" reads whether the object comes out clean, without a texture.
    scores = [
        {
            **oracle.score_single(img, p["scene"]),
            "fill": _fill_right(img, p["scene"].objects[0], resolution),
        }
        for img, p in zip(images, prompts)
    ]
    grids.save_grid(images, os.path.join(out_dir, "single_object.png"))
    metrics = {k: [s[k] for s in scores] for k in scores[0]}
    metrics["colour_and_shape"] = [s["colour"] * s["shape"] for s in scores]
    return [
        {
            "task": task,
            "metric": k,
            "value": float(np.mean(v)),
            "n": len(v),
        }
        for k, v in metrics.items()
    ]


def _fill_right(image: np.ndarray, obj: shapes_world.Obj, resolution: int) -> float:
    """1.0 when the largest parsed object shows the fill `obj` shows rendered."""
    from imagen_jax.evaluation import task_metrics

    found = oracle.parse(image).largest
    if found is None:
        return 0.0
    want = task_metrics.visible_pattern(
        obj.shape, obj.colour, obj.size, obj.pattern, resolution
    )
    return float(task_metrics.object_pattern(image, found.box, found.colour) == want)


def _task_batches(loaded, names, per_task, unseen, seed=1):
    """(task name, examples, stacked instruction arrays) per task; `per_task`
    is the number of examples of every task, or a {task name: number} map."""
    from imagen_jax.data import tasks

    d = loaded.config.data
    for name in names:
        count = per_task if isinstance(per_task, int) else per_task[name]
        examples = [
            tasks.make_example(
                name,
                i,
                seed,
                d.resolution,
                unseen,
                world=d.variant,
                plain=d.get("plain_text", False),
                plain_items=d.get("plain_items", False),
                query_objects=d.get("query_objects", 0),
                answers=tasks.answer_names(d.get("answers", "")),
            )
            for i in range(count)
        ]
        yield (
            name,
            examples,
            _instruction_arrays(loaded, [e.instruction for e in examples]),
        )


def _generate_tasks(
    loaded, generate, batch, sample_cfg, batch_size, seed, label, eta=0.5
):
    def fn(chunk, offset):
        return generate(
            loaded.params,
            chunk,
            jax.random.PRNGKey(seed + offset),
            sample_cfg.steps,
            sample_cfg.guidance,
            sample_cfg.get("image_guidance", 1.0),
            int(sample_cfg.get("oscillate", False)),
            eta,
        )

    return _in_batches(batch, batch_size, fn, label)


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of `values` (sample deviation over the
    root of their number); 0 for fewer than two."""
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


# Metrics whose rows keep each example's value (`per_example`, in the
# examples' order): the headline scores, which two models scored on the same
# examples compare pair by pair (`table.differences`).
PER_EXAMPLE_METRICS = ("o", "score")


def by_template(values: Sequence[float], templates: Sequence[str]) -> list[dict]:
    """The mean of `values` over the examples of each template (`templates`,
    the examples' own, in the same order), lowest first: which phrasings of a
    task the model fails, where its row's mean only says that some do."""
    groups: dict[str, list[float]] = {}
    for value, template in zip(values, templates, strict=True):
        groups.setdefault(template, []).append(float(value))
    out = [
        {"template": t, "value": float(np.mean(v)), "n": len(v)}
        for t, v in groups.items()
    ]
    return sorted(out, key=lambda r: (r["value"], r["template"]))


def _mean_rows(
    task: str,
    values: dict[str, list[float]],
    templates: Sequence[str] | None = None,
) -> list[dict]:
    """Each metric's mean over the examples, with its standard error `se`,
    and for `PER_EXAMPLE_METRICS` the examples' values and, given the
    examples' `templates` (more than one), their means per template
    (`by_template`)."""
    split = templates is not None and len(set(templates)) > 1
    rows = []
    for k, v in values.items():
        row = {
            "task": task,
            "metric": k,
            "value": float(np.mean(v)),
            "n": len(v),
            "se": standard_error(v),
        }
        if k in PER_EXAMPLE_METRICS:
            row["per_example"] = list(v)
            if split:
                row["by_template"] = by_template(v, templates)
        rows.append(row)
    return rows


def _task_rows(name, examples, images, suffix=""):
    """Rows of one task: its headline scores, then (generation tasks) each
    condition's grade `sc/<condition>` and its attributes `<condition>/<attr>`
    (`task_metrics.condition_attributes`), averaged where an example has them."""
    from imagen_jax.evaluation import task_metrics

    values: dict[str, list[float]] = {}
    for image, example in zip(images, examples, strict=True):
        score = task_metrics.score_example(image, example)
        flat = {k: v for k, v in score.items() if isinstance(v, (int, float))}
        flat.update({f"sc/{k}": v for k, v in score.get("per_condition", {}).items()})
        flat.update(score.get("attributes", {}))
        for k, v in flat.items():
            values.setdefault(k, []).append(float(v))
    task = ("zero_shot/" if examples[0].zero_shot else "") + name + suffix
    templates = [e.meta.get("template") for e in examples]
    return _mean_rows(task, values, None if None in templates else templates)


def _task_grid(examples, images, path: str, count: int = 8) -> None:
    """Of the first `count` examples, two a row: the conditions, the sample,
    the target. The conditions are the input image, else the first two
    context images (both references of a transfer), blank where an example
    has fewer than the task's most, or none."""

    def conditions(example):
        ins = example.instruction
        if ins.input_image is not None:
            return [ins.input_image]
        return [c.image for c in ins.context[:2]]

    picked = list(zip(examples, images, strict=True))[:count]
    shown = [conditions(example) for example, _ in picked]
    width = max(1, *map(len, shown))
    cells = []
    for (example, image), conds in zip(picked, shown, strict=True):
        blanks = [np.zeros_like(image)] * (width - len(conds))
        cells += [*conds, *blanks, image, example.target]
    grids.save_grid(np.stack(cells), path, cols=2 * (width + 2))


def _figure(metric: str, value: float) -> str:
    return (
        f"{metric}={value:.4f}" if metric.startswith("x0_") else f"{metric}={value:.2f}"
    )


def make_x0_error_fn(loaded) -> Callable:
    """Jitted `(params, batch, x, rng, keep)` -> [B] x0 errors of the denoiser.

    The error of the clean image the model infers from the targets `x` noised
    at random levels (`losses.diffusion_loss`), given the text and, where
    `keep` (a bool scalar) is set, the context items and input image. The same
    `rng` gives the same noise either way, so the difference between the two
    is a sampling-free reading of how much a path is used.
    """
    from imagen_jax import conditioning as conditioning_lib
    from imagen_jax import train
    from imagen_jax.diffusion import losses
    from imagen_jax.models.imagen import Imagen

    model, options = loaded.model, train.loss_options(loaded.config)
    options["low_snr_share"] = 0.0  # the plain schedule's levels, whatever trained

    @jax.jit
    def fn(params, batch, x, rng, keep):
        yes = jnp.ones(x.shape[:1], bool)
        masks = conditioning_lib.condition_masks(
            batch, model.conditioning, text=yes, context=yes & keep, image=yes & keep
        )
        variables = {"params": params}
        cond = model.apply(variables, batch, masks, method=Imagen.condition)
        text, text_mask = cond.pop("text"), cond.pop("text_mask")
        apply_fn = functools.partial(
            model.apply, variables, method=Imagen.denoise, **cond
        )
        _, aux = losses.diffusion_loss(
            lambda z, logsnr: apply_fn(z, logsnr, text, text_mask), x, rng, **options
        )
        return aux["x0_mse"]

    return fn


_X0_ERROR_FNS: dict[tuple, Callable] = {}


def _x0_error_fn(loaded) -> Callable:
    """`make_x0_error_fn` of `loaded`'s model, made once per process."""
    key = (loaded.model, loaded.config.to_json())
    if key not in _X0_ERROR_FNS:
        _X0_ERROR_FNS[key] = make_x0_error_fn(loaded)
    return _X0_ERROR_FNS[key]


def _x0_error_rows(
    loaded, error_fn, name, examples, batch, repeats=4, text_only=True
) -> list[dict]:
    """`x0_error` (every condition) and, with `text_only`, `x0_error/text_only`
    of a task's targets."""
    x = np.stack([e.target for e in examples]).astype(np.float32) / 127.5 - 1.0
    errors = {True: [], False: []} if text_only else {True: []}
    for r in range(repeats):
        rng = jax.random.PRNGKey(1000 + r)
        for keep in errors:
            errors[keep].append(
                np.asarray(error_fn(loaded.params, batch, x, rng, jnp.asarray(keep)))
            )
    task = ("zero_shot/" if examples[0].zero_shot else "") + name
    return [
        {
            "task": task,
            "metric": metric,
            "value": float(np.mean(errors[keep])),
            "n": len(examples),
        }
        for metric, keep in (("x0_error", True), ("x0_error/text_only", False))
        if keep in errors
    ]


def trained_tasks(loaded) -> list[str]:
    """The tasks of `loaded`'s training mixture, in the task table's order."""
    from imagen_jax.data import tasks

    mixture = loaded.config.data.get("mixture") or {}
    return [name for name in tasks.TASKS if mixture.get(name, 0) > 0]


def task_fit(loaded, names, examples: int, repeats: int) -> dict[str, float]:
    """{task: mean x0 error, every condition kept} of `loaded` on `examples`
    examples of each of `names` at `repeats` draws of the noise: the
    evaluator's `x0_error` rows without sampling (`benchmarks.task_fit`)."""
    error_fn = make_x0_error_fn(loaded)
    out = {}
    for name, batch_examples, batch in _task_batches(loaded, names, examples, False):
        rows = _x0_error_rows(
            loaded, error_fn, name, batch_examples, batch, repeats, text_only=False
        )
        out[name] = rows[0]["value"]
    return out


def make_item_encodings_fn(loaded) -> Callable:
    """Jitted `(params, batch)` -> each context item's encodings, every
    condition kept: `memory` [B, K, C], its memory tokens (`Imagen.condition`)
    averaged over their positions, `text` [B, K, D], its text as the memory
    reads it (`Imagen.encode_items_text`) averaged over its tokens, and
    `instruction` [B, L, D], the instruction's encoding (`Imagen.condition`'s
    `text`)."""
    from imagen_jax import conditioning as conditioning_lib
    from imagen_jax.models.imagen import Imagen
    from imagen_jax.models.unet import masked_mean

    model = loaded.model

    @jax.jit
    def fn(params, batch):
        variables = {"params": params}
        yes = jnp.ones(batch["text_mask"].shape[:1], bool)
        masks = conditioning_lib.condition_masks(
            batch, model.conditioning, text=yes, context=yes, image=yes
        )
        cond = model.apply(variables, batch, masks, method=Imagen.condition)
        tokens = cond["memory"].tokens.astype(jnp.float32)  # [B, K*h*w, C]
        b, k = batch["ctx_mask"].shape
        instruction = None
        if model.unet_config.items_read_instruction:
            instruction = (batch["text_tokens"], masks["text_mask"], cond["text"])
        text, text_mask = model.apply(
            variables,
            batch["ctx_tokens"],
            batch["ctx_text_mask"],
            instruction,
            method=Imagen.encode_items_text,
        )
        pooled_text = masked_mean(
            text.reshape((b * k,) + text.shape[2:]), text_mask.reshape(b * k, -1)
        )
        return {
            "memory": tokens.reshape(b, k, -1, tokens.shape[-1]).mean(axis=2),
            "text": pooled_text.reshape(b, k, -1),
            "instruction": cond["text"],  # what the denoiser reads
        }

    return fn


def paired_role_probe(pooled: np.ndarray, first_is_content: np.ndarray) -> list[bool]:
    """Leave-one-out reading of which of two items an instruction makes the
    content, from the items' encodings alone.

    `pooled` [N, 2, C] holds each example's two items; `first_is_content` [N]
    bool. Each example's gap is item 1 - item 2, which removes what both
    items share (the instruction, the template). Over the other examples the
    gaps are centred on their mean (what tells item 1 from item 2 whatever
    their roles, such as the marker) and the direction is the mean of the
    centred (content - style). Example i is read right when its centred gap
    falls on the side its roles say. Item order is drawn apart from the
    roles, so an encoding blind to them reads at chance (0.5).
    """
    n = len(pooled)
    if n < 3:
        raise ValueError(f"the role probe needs at least 3 examples, got {n}")
    sign = np.where(first_is_content, 1.0, -1.0)
    gap = (pooled[:, 0] - pooled[:, 1]).astype(np.float64)
    right = []
    for i in range(n):
        others = np.arange(n) != i
        mean = gap[others].mean(axis=0)
        w = ((gap[others] - mean) * sign[others, None]).mean(axis=0)
        right.append(bool(np.dot(w, gap[i] - mean) * sign[i] > 0))
    return right


def _role_probe_rows(loaded, count: int = 192, batch_size: int = 48) -> list[dict]:
    """How often the paired probe reads role_transfer's roles (chance 0.5),
    over `count` examples: `role_probe` from the items' memory,
    `role_probe/text` from their texts as the memory reads them (with
    `context_instruction` the instruction among them, with `context_marker`
    the instruction's encoding at the item's marker), which tells a
    text encoder blind to the roles from a memory that loses them, and
    `role_probe/instruction` from the instruction's own encoding at its two
    markers, which tells an encoder that never finds the roles from one that
    finds them in the instruction and does not bind them to the items."""
    from imagen_jax.models.imagen import encoding_at

    ((_, examples, batch),) = _task_batches(loaded, ["role_transfer"], count, False)
    encodings = make_item_encodings_fn(loaded)
    chunks = [
        encodings(loaded.params, {k: v[i : i + batch_size] for k, v in batch.items()})
        for i in range(0, count, batch_size)
    ]
    first = np.array([e.meta["content_ref"] == "[ref#1]" for e in examples])
    pooled = {
        key: np.concatenate([np.asarray(c[key]) for c in chunks])
        for key in ("memory", "text", "instruction")
    }
    # The instruction's encoding at each marker (averaged where it recurs).
    ids = [loaded.tokenizer.extra_token_id(m) for m in ("[ref#1]", "[ref#2]")]
    read, count = encoding_at(
        batch["text_tokens"],
        batch["text_mask"],
        pooled["instruction"],
        np.broadcast_to(np.array(ids), (len(examples), 2)),
    )
    if not np.all(np.asarray(count)):
        raise ValueError("a role_transfer instruction lacks one of its markers")
    pooled["instruction"] = np.asarray(read)
    values = {}
    for metric, key in (
        ("role_probe", "memory"),
        ("role_probe/text", "text"),
        ("role_probe/instruction", "instruction"),
    ):
        right = paired_role_probe(pooled[key][:, :2], first)
        values[metric] = [float(r) for r in right]
    return _mean_rows("role_transfer", values)


def _has_conditions(task) -> bool:
    """Whether a task's instructions carry context items or an input image."""
    return task.name != "text_to_image"


def _runs(eval_cfg, tasks, trained=()) -> list[tuple[list[str], bool, str, bool]]:
    """(task names, unseen phrasing, row suffix, text only) of each pass.

    The opt-in tasks are scored when `eval_cfg.names` names them or, with no
    names, when they are among the `trained` ones (the model's mixture), and
    an opt-in zero-shot combination when the tasks it composes are. The
    text-only pass samples the same examples with their context items and
    input image dropped: the baseline a task's SC must beat.
    """
    wanted = set(eval_cfg.get("names") or ())
    unknown = sorted(wanted - set(tasks.TASKS))
    if unknown:
        raise ValueError(f"evals.tasks.names has unknown tasks {unknown}")
    keep = lambda names: [n for n in names if not wanted or n in wanted]  # noqa: E731
    train, zero = keep(tasks.TRAIN_TASKS), keep(tasks.ZERO_SHOT_TASKS)
    train += [n for n in tasks.OPT_IN_TASKS if n in (wanted or set(trained))]
    zero += [
        n
        for n in tasks.OPT_IN_ZERO_SHOT_TASKS
        if n in wanted or not wanted and set(tasks.TASKS[n].composes) <= set(trained)
    ]
    runs = [(train, False, "", False), (zero, False, "", False)]
    if eval_cfg.robustness:
        runs.append((train, True, "/unseen_paraphrase", False))
    if eval_cfg.get("text_only", True):
        generation = [
            n
            for n in train + zero
            if n not in tasks.VISION_TASKS and _has_conditions(tasks.TASKS[n])
        ]
        runs.append((generation, False, "/text_only", True))
    return runs


def _examples_per_task(eval_cfg, tasks) -> dict[str, int]:
    """How many examples score each task: `per_task`, and for the zero-shot
    combinations `zero_shot_per_task` when set: the zero-shot average rests on
    4 tasks where the in-domain one rests on 9, so at 24 examples each its
    standard error can reach 0.05 (0.025 at 96)."""
    zero_shot = eval_cfg.get("zero_shot_per_task") or eval_cfg.per_task
    return {
        name: zero_shot if task.zero_shot else eval_cfg.per_task
        for name, task in tasks.TASKS.items()
    }


def _drop_conditions(batch: dict) -> dict:
    """The batch with every context item and input image masked out."""
    return {
        **batch,
        "ctx_mask": np.zeros_like(batch["ctx_mask"]),
        "cond_image_mask": np.zeros_like(batch["cond_image_mask"]),
    }


def tasks_eval(loaded, eval_cfg, sample_cfg, out_dir, samples=None) -> list[dict]:
    """Every ShapesWorld task (or `eval_cfg.names`): SC/PQ/O and per-condition
    scores (generation) or its metric (vision); zero-shot combinations; unseen
    paraphrases of the trained tasks; the text-only baseline. One sample grid
    per task and pass in `out_dir/tasks/`. `samples` (a list, optional)
    receives ("tasks", samples, targets) of the trained and zero-shot tasks,
    for the distribution-level scores."""
    from imagen_jax.data import tasks

    generate = generate_fn(loaded, sample_cfg.sampler)
    x0_error = _x0_error_fn(loaded)
    pooled: tuple[list, list] = ([], [])
    os.makedirs(os.path.join(out_dir, "tasks"), exist_ok=True)
    rows, grid = [], []
    per_task = _examples_per_task(eval_cfg, tasks)
    trained = loaded.config.data.get("mixture") or ()
    runs = _runs(eval_cfg, tasks, trained)
    for names, unseen, suffix, text_only in runs:
        for name, examples, batch in _task_batches(loaded, names, per_task, unseen):
            label = name + suffix
            images = _generate_tasks(
                loaded,
                generate,
                _drop_conditions(batch) if text_only else batch,
                sample_cfg,
                eval_cfg.batch_size,
                seed=77,
                label=label,
            )
            task_rows = _task_rows(name, examples, images, suffix)
            if text_only:  # beside the sampled baseline: the denoiser's reading
                task_rows += _x0_error_rows(loaded, x0_error, name, examples, batch)
            rows += task_rows
            if not unseen and not text_only:
                pooled[0].append(images)
                pooled[1].append(np.stack([e.target for e in examples]))
            grid += [images[0], examples[0].target]
            _task_grid(
                examples,
                images,
                os.path.join(out_dir, "tasks", label.replace("/", "_") + ".png"),
            )
            head = {r["metric"]: r["value"] for r in task_rows}
            shown = [k for k in ("o", "sc", "pq", "score") if k in head]
            shown += sorted(k for k in head if k.startswith(("sc/", "x0_error")))
            print(f"  {label}: " + "  ".join(_figure(k, head[k]) for k in shown))
            split = [r["by_template"] for r in task_rows if r.get("by_template")]
            if unseen and split:  # the phrasing that lost the most
                low = split[0][0]
                print(
                    f"    lowest: {low['value']:.2f} over {low['n']}: {low['template']}"
                )
    scored = "role_transfer" in runs[0][0]  # named, or trained on
    if scored and loaded.model.conditioning.instruction:  # items to probe
        probe = _role_probe_rows(loaded)
        shown = "  ".join(_figure(r["metric"], r["value"]) for r in probe)
        print(f"  role_transfer: {shown}")
        rows += probe
    grids.save_grid(np.stack(grid), os.path.join(out_dir, "tasks.png"), cols=8)
    if samples is not None and pooled[0]:
        samples.append(("tasks", np.concatenate(pooled[0]), np.concatenate(pooled[1])))
    summary = summary_rows(rows, tasks.VISION_TASKS)
    for r in summary:
        print(
            f"  {r['task']}: {r['metric']}={r['value']:.3f} "
            f"(standard error {r['se']:.3f}) over {r['n']} tasks"
        )
    return rows + summary


def summary_rows(rows: list[dict], vision_tasks) -> list[dict]:
    """Averages over tasks, as the paper reports them: O (and SC) of the
    in-domain generation tasks, the zero-shot combinations, the unseen
    paraphrases and the text-only baseline; `n` counts the tasks averaged.
    Where every task's row has its standard error, so does the average's
    (`mean_standard_error`)."""

    def kind(task: str) -> str | None:
        parts = task.split("/")
        if parts[0] == "zero_shot":
            return "zero_shot" if len(parts) == 2 else None
        if parts[0] in vision_tasks:
            return None
        return {1: "in_domain"}.get(len(parts), parts[-1])

    out = []
    for group in ("in_domain", "zero_shot", "unseen_paraphrase", "text_only"):
        for metric in ("o", "sc"):
            members = [
                r for r in rows if r["metric"] == metric and kind(r["task"]) == group
            ]
            if members:
                out.append(
                    {
                        "task": f"average/{group}",
                        "metric": metric,
                        "value": float(np.mean([r["value"] for r in members])),
                        "n": len(members),
                        **_se_field([r.get("se") for r in members]),
                    }
                )
    return out


def mean_standard_error(errors: Sequence[float]) -> float:
    """The standard error of a mean over tasks from each task's own: the
    tasks' examples are drawn apart, so their errors add in quadrature."""
    return float(np.sqrt(np.sum(np.square(errors))) / len(errors))


def _se_field(errors: Sequence[float | None]) -> dict:
    """{"se": ...} of a mean over tasks, or {} when a task's error is unknown
    (a record written before the errors were)."""
    if not errors or any(e is None for e in errors):
        return {}
    return {"se": mean_standard_error(errors)}


def _instruction_arrays(loaded, instrs) -> dict[str, np.ndarray]:
    from imagen_jax import instructions

    d = loaded.config.data
    arrays = [
        instructions.to_arrays(
            instr,
            loaded.tokenizer,
            max_context=d.max_context,
            text_len=d.max_text_len,
            ctx_text_len=d.ctx_text_len,
            resolution=d.resolution,
        )
        for instr in instrs
    ]
    return {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}


def fill_confusion(examples, images) -> dict[str, int]:
    """Counts of "<fill wanted> -> <fill drawn>" over subject examples: the
    fill an object of the subject's identity shows rendered at the drawn
    object's size, against the fill read from the largest drawn object
    ("none": no object found)."""
    from imagen_jax.evaluation import task_metrics

    counts: dict[str, int] = {}
    for example, image in zip(examples, images, strict=True):
        shape, colour, fill = example.meta["conditions"]["subject"].identity
        found = oracle.parse(image).largest
        drawn = (
            task_metrics.object_pattern(image, found.box, found.colour)
            if found is not None
            else "none"
        )
        size = found.size if found is not None else "small"
        wanted = task_metrics.visible_pattern(shape, colour, size, fill, image.shape[0])
        pair = f"{wanted} -> {drawn}"
        counts[pair] = counts.get(pair, 0) + 1
    return dict(sorted(counts.items()))


def _write_fill_confusion(examples, images, path: str) -> None:
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(fill_confusion(examples, images), f, indent=1)


def retrieval_only(loaded, eval_cfg, sample_cfg, out_dir, samples=None) -> list[dict]:
    """Subjects named only in the retrieval database, drawn from retrieved context.

    Prompts are the retrieval dataset's `test` split ("a <name> at ..." with
    a retrieval-only name); each is run with its text's top `k` database
    items as context (`retrieve.Retriever`) and with the text alone, where
    the name means nothing (chance). Rows: the subject's identity, shape,
    colour and fill, SC/PQ/O, and `retrieval_precision` (retrieved items
    showing the prompt's subject). With `interleave` >= 0, the retrieved
    prompts again under Re-Imagen's interleaved guidance at that eta
    (rows "retrieval_only/interleaved"). `samples` (a list, optional)
    receives ("retrieval_only", retrieved-context samples, the prompts'
    images), for the distribution-level scores.
    """
    from imagen_jax import instructions
    from imagen_jax.data import tasks
    from imagen_jax.data.tfds import shapes_world as shapes_world_tfds
    from imagen_jax.retrieval import mining, retrieve

    d = loaded.config.data
    directory = eval_cfg.dir or os.path.join(loaded.workdir, "retrieval")
    retriever = retrieve.Retriever(directory, eval_cfg.text_search)
    variant = shapes_world_tfds.retrieval_variant(d.variant)
    test = shapes_world_tfds.load_source(d.data_dir, "test", d.resolution, variant)
    records = [test[i] for i in range(min(eval_cfg.num_prompts, len(test)))]
    captions = [mining.as_text(r["caption"]) for r in records]
    names = np.array([mining.as_text(r["name"]) for r in records])
    ids = retriever.search(captions, eval_cfg.k)
    examples = []
    for record, caption, row in zip(records, captions, ids):
        scene = shapes_world.Scene.from_json(mining.as_text(record["scene"]))
        (obj,) = scene.objects
        subject = tasks.Condition(
            "subject", identity=(obj.shape, obj.colour, obj.pattern)
        )
        examples.append(
            tasks.TaskExample(
                "retrieval_only",
                retriever.instruction(caption, row),
                np.asarray(record["image"], np.uint8),
                {"scene": scene, "conditions": {"subject": subject}},
            )
        )
    generate = generate_fn(loaded, sample_cfg.sampler)
    kept = ids >= 0
    precision = float(
        np.mean(
            retriever.names[ids[kept]]
            == np.broadcast_to(names[:, None], ids.shape)[kept]
        )
    )
    rows = [
        {
            "task": "retrieval_only",
            "metric": "retrieval_precision",
            "value": precision,
            "n": int(kept.sum()),
        }
    ]
    retrieved = [e.instruction for e in examples]
    runs = [
        ("", retrieved, generate),
        (
            "/text_only",
            [instructions.MultiModalInstruction(c) for c in captions],
            generate,
        ),
    ]
    eta = eval_cfg.get("interleave", -1.0)
    if eta >= 0:  # also with Re-Imagen's interleaved guidance at this eta
        interleaved = generate_fn(loaded, sample_cfg.sampler, "interleaved")
        runs.append(("/interleaved", retrieved, interleaved))
    for suffix, instrs, fn in runs:
        batch = _instruction_arrays(loaded, instrs)
        label = "retrieval_only" + suffix
        images = _generate_tasks(
            loaded, fn, batch, sample_cfg, eval_cfg.batch_size, 4321, label, eta
        )
        rows += _task_rows("retrieval_only", examples, images, suffix)
        if not suffix:
            _write_fill_confusion(
                examples, images, os.path.join(out_dir, "retrieval_only_fills.json")
            )
        if samples is not None and not suffix:
            targets = np.stack([e.target for e in examples])
            samples.append(("retrieval_only", images, targets))
        _task_grid(
            examples, images, os.path.join(out_dir, label.replace("/", "_") + ".png")
        )
    return rows


EVALUATORS: dict[str, Callable] = {
    "single_object": single_object,
    "tasks": tasks_eval,
    "retrieval_only": retrieval_only,
}


def evaluate_one(
    loaded,
    eval_cfg: ml_collections.ConfigDict,
    sample_cfg: ml_collections.ConfigDict,
    out_dir: str,
    features: fid.Features | str,
) -> list[dict]:
    """One evaluator's rows at one sampler setting, then `fid` and `kid` of its
    samples against their references on `features` (or, when that is a
    string, rows saying why there are none).

    Raises:
      ValueError: an unknown evaluator type.
    """
    if eval_cfg.type not in EVALUATORS:
        raise ValueError(
            f"evaluator type {eval_cfg.type!r} is not one of {sorted(EVALUATORS)}"
        )
    samples: list[tuple[str, np.ndarray, np.ndarray]] = []
    rows = EVALUATORS[eval_cfg.type](loaded, eval_cfg, sample_cfg, out_dir, samples)
    for task, generated, reference in samples:
        rows += fid.distribution_rows(task, generated, reference, features)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table, every sampler setting a column."""
    from imagen_jax.evaluation import report

    return report.markdown_rows(rows)
