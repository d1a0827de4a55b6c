"""Evaluates a run: `python -m launch.eval --config experiments/X.py --workdir DIR`.

Writes DIR/eval/results.json, results.md and sample grids; prints the table.
"""

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Workdir of the training run.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _eval():
    from imagen_jax.evaluation import evaluate

    rows = evaluate.evaluate(FLAGS.config, FLAGS.workdir)
    print(evaluate.markdown_table(rows))
    print(f"results: {FLAGS.workdir}/eval/results.json")


if __name__ == "__main__":
    common.run(_eval)
