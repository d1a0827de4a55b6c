"""The paper's Table 4 in miniature: `python -m launch.table --experiment
experiments/stage2_shapes.py --runs runs [--train | --skip_missing]
[--carry docs/results/table] [--only b] [--noevaluate]`.

Evaluates every model of the experiment's `table()` (training the missing
ones with --train, leaving them out with --skip_missing, taking them from
earlier sessions' records with --carry) and writes RUNS/table/results.json,
results.md and one record per evaluated model in RUNS/table/models/.
"""

import os

from absl import flags

from imagen_jax import config_utils
from launch import common

flags.DEFINE_string("experiment", None, "Experiment file with get_config and table.")
flags.DEFINE_string("runs", "runs", "Directory holding one run per model.")
flags.DEFINE_bool("train", False, "Train the models that have no checkpoint.")
flags.DEFINE_bool(
    "skip_missing", False, "Leave the models that have no checkpoint out of the table."
)
flags.DEFINE_string(
    "carry",
    None,
    "Directory of model records (RUNS/table/models/NAME.json of earlier runs) "
    "that stand in for models with no checkpoint under --runs.",
)
flags.DEFINE_list(
    "only",
    [],
    "Train (with --train) and evaluate only these models (run names, or "
    "columns such as b), training the runs they start from without scoring "
    "them; the others are left out unless carried or trained and already "
    "evaluated.",
)
flags.DEFINE_bool(
    "evaluate",
    True,
    "Score the models and write the table; --noevaluate only trains them.",
)
flags.mark_flags_as_required(["experiment"])
FLAGS = flags.FLAGS


def _table():
    from imagen_jax.evaluation import table

    module = config_utils.load_experiment(FLAGS.experiment)
    if not hasattr(module, "table"):
        raise ValueError(f"{FLAGS.experiment} defines no table()")
    table.run(  # writes RUNS/table/
        module.get_config,
        module.table(),
        FLAGS.runs,
        train_missing=FLAGS.train,
        skip_missing=FLAGS.skip_missing,
        carry=FLAGS.carry,
        only=FLAGS.only,
        evaluate=FLAGS.evaluate,
    )
    if not FLAGS.evaluate:
        print("trained; score them with the same command without --noevaluate")
        return
    with open(os.path.join(FLAGS.runs, "table", "results.md")) as f:
        print(f.read())
    print(f"results: {FLAGS.runs}/table/results.json")


if __name__ == "__main__":
    common.run(_table)
