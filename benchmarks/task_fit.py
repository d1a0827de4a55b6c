"""How well does each model fit each task's targets? The denoiser's x0 error
per task, every condition kept, for several workdirs on the same examples
and the same noise: where a training loss that differs between two models
comes from, without sampling.

    python -m benchmarks.task_fit --workdirs runs/roles03_a,runs/roles03_c \
        --out docs/results/2026-12-06_s57_task_fit.json

Each task of a model's training mixture (the shared ones, when the models'
mixtures differ) is scored on `--examples` held-out examples at `--repeats`
draws of the noise levels of the plain schedule (`evaluate.task_fit`, as
the evaluator's `x0_error` rows; the low-SNR share a model trained with is
not applied). Lower is a closer fit; a model without the instruction
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


def main(argv):
    del argv
    from imagen_jax import inference, machine
    from imagen_jax.evaluation import evaluate

    models = {wd: inference.load(wd) for wd in FLAGS.workdirs}
    shared = None
    for loaded in models.values():
        names = evaluate.trained_tasks(loaded)
        shared = names if shared is None else [n for n in shared if n in names]
    record = {
        "cpu": machine.cpu_model(),
        "examples": FLAGS.examples,
        "repeats": FLAGS.repeats,
        "models": {
            wd: {
                "step": int(loaded.step),
                "x0_error": evaluate.task_fit(
                    loaded, shared, FLAGS.examples, FLAGS.repeats
                ),
            }
            for wd, loaded in models.items()
        },
    }
    benchmarks.emit(record, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
