"""Mines stage 1's neighbours: embedder -> ScaNN index -> neighbour table.

    python -m launch.build_index --config experiments/stage1_shapes.py --workdir DIR

Trains the retrieval embedder unless DIR/retrieval holds one (or the config
names precomputed embeddings), embeds the database and the training targets,
builds (or reloads) the index, mines each target's neighbours and writes the
table beside the dataset; prints the figures (also in DIR/retrieval/build.json).
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (a stage-1 config).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory; the index goes to its retrieval/.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _build_index():
    from imagen_jax.retrieval import build

    figures = build.build(FLAGS.config, FLAGS.workdir)
    print(json.dumps(figures, sort_keys=True), flush=True)


if __name__ == "__main__":
    common.run(_build_index, distributed=False)
