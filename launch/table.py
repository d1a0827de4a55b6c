"""The paper's Table 4 in miniature: `python -m launch.table --experiment
experiments/stage2_shapes.py --runs runs [--train | --skip_missing]`.

Evaluates every model of the experiment's `table()` (training the missing
ones with --train, leaving them out with --skip_missing) and writes
RUNS/table/results.json and results.md.
"""

from absl import flags

from imagen_jax import config_utils
from launch import common

flags.DEFINE_string("experiment", None, "Experiment file with get_config and table.")
flags.DEFINE_string("runs", "runs", "Directory holding one run per model.")
flags.DEFINE_bool("train", False, "Train the models that have no checkpoint.")
flags.DEFINE_bool(
    "skip_missing", False, "Leave the models that have no checkpoint out of the table."
)
flags.mark_flags_as_required(["experiment"])
FLAGS = flags.FLAGS


def _table():
    from imagen_jax.evaluation import table

    module = config_utils.load_experiment(FLAGS.experiment)
    if not hasattr(module, "table"):
        raise ValueError(f"{FLAGS.experiment} defines no table()")
    results = table.run(
        module.get_config,
        module.table(),
        FLAGS.runs,
        train_missing=FLAGS.train,
        skip_missing=FLAGS.skip_missing,
    )
    print(table.markdown(results))
    print(f"results: {FLAGS.runs}/table/results.json")


if __name__ == "__main__":
    common.run(_table)
