"""How well does each model fit each task's targets? The denoiser's x0 error
per task, every condition kept, for several workdirs on the same examples
and the same noise: where a training loss that differs between two models
comes from, without sampling.

    python -m benchmarks.task_fit --workdirs runs/roles03_a,runs/roles03_c \
        --out docs/results/2026-12-06_s57_task_fit.json

Each task of a model's training mixture (the shared ones, when the models'
mixtures differ) is scored on `--examples` held-out examples at `--repeats`
draws of the noise levels of the plain schedule (`evaluate.make_x0_error_fn`,
as the evaluator's `x0_error` rows; the low-SNR share a model trained with
is not applied). Lower is a closer fit; a model without the instruction
words (option `plain`) is given its own texts of the same examples.
"""

from __future__ import annotations

from absl import app, flags

import benchmarks
from imagen_jax import xla_flags

xla_flags.apply_defaults()

flags.DEFINE_list("workdirs", None, "The checkpoints' workdirs.", required=True)
flags.DEFINE_integer("examples", 48, "Held-out examples per task.")
flags.DEFINE_integer("repeats", 8, "Draws of the noise per example.")
flags.DEFINE_string("out", None, "Also write the JSON record to this file.")
FLAGS = flags.FLAGS


def trained_tasks(loaded) -> list[str]:
    """The tasks of `loaded`'s training mixture, in the task table's order."""
    from imagen_jax.data import tasks

    mixture = loaded.config.data.get("mixture") or {}
    return [name for name in tasks.TASKS if mixture.get(name, 0) > 0]


def fit(loaded, names, examples: int, repeats: int) -> dict[str, float]:
    """{task: mean x0 error} of `loaded` on `examples` examples per task."""
    from imagen_jax.evaluation import evaluate

    error_fn = evaluate.make_x0_error_fn(loaded)
    out = {}
    for name, batch_examples, batch in evaluate._task_batches(
        loaded, names, examples, False
    ):
        rows = evaluate._x0_error_rows(
            loaded, error_fn, name, batch_examples, batch, repeats, text_only=False
        )
        out[name] = rows[0]["value"]
    return out


def main(argv):
    del argv
    from imagen_jax import inference, machine

    models = {wd: inference.load(wd) for wd in FLAGS.workdirs}
    shared = None
    for loaded in models.values():
        names = trained_tasks(loaded)
        shared = names if shared is None else [n for n in shared if n in names]
    record = {
        "cpu": machine.cpu_model(),
        "examples": FLAGS.examples,
        "repeats": FLAGS.repeats,
        "models": {
            wd: {
                "step": int(loaded.step),
                "x0_error": fit(loaded, shared, FLAGS.examples, FLAGS.repeats),
            }
            for wd, loaded in models.items()
        },
    }
    benchmarks.emit(record, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
