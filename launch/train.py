"""Trains a model: `python -m launch.train --config experiments/X.py --workdir DIR`."""

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _train():
    from imagen_jax import train

    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    common.run(_train)
