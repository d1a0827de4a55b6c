"""The same scenes under several phrasings: example i of a task as the
evaluator makes it, phrased by one template, and each template's paired
difference from the others (`benchmarks.phrasing_probe`)."""

from __future__ import annotations


def phrased(loaded, name: str, template: str, count: int, seed: int):
    """Examples 0..count-1 of task `name` as the evaluator makes them, each
    phrased by `template` (`tasks.make_example(template=)`)."""
    from imagen_jax.data import tasks

    d = loaded.config.data
    examples = [
        tasks.make_example(
            name,
            i,
            seed,
            d.resolution,
            world=d.variant,
            query_objects=d.get("query_objects", 0),
            answers=tasks.answer_names(d.get("answers", "")),
            template=template,
        )
        for i in range(count)
    ]
    kept = [e.meta["template"] for e in examples if e.meta["template"] != template]
    if kept:
        raise ValueError(
            f"{len(kept)} of {name}'s examples have other fields than {template!r} "
            f"(e.g. {kept[0]!r}): their scenes cannot be phrased by it"
        )
    return examples


def paired(values: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """template -> (mean, standard error) of its per-example difference from
    the mean over the templates of the same example."""
    import numpy as np

    from imagen_jax.evaluation import evaluate

    table = np.array(list(values.values()))  # [templates, examples]
    diff = table - table.mean(axis=0, keepdims=True)
    return {
        t: (float(d.mean()), evaluate.standard_error(d))
        for t, d in zip(values, diff, strict=True)
    }
