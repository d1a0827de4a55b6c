"""Builds a dataset as tfds array_record files.

python -m launch.build_data --dataset shapes_world --data_dir DIR
python -m launch.build_data --variant retrieval --num_train 10000 --data_dir DIR
"""

import time

from absl import flags

from launch import common

flags.DEFINE_string("dataset", "shapes_world", "Dataset to build: shapes_world.")
flags.DEFINE_string("data_dir", None, "Where the tfds dataset is written.")
flags.DEFINE_integer("resolution", 32, "Image side: 32 or 64.")
flags.DEFINE_enum(
    "variant",
    "full",
    ["full", "simple", "retrieval"],
    "full: 1-3 patterned objects on styled backgrounds; simple: one "
    "solid object on a plain background; retrieval: stage 1's world (one "
    "object, named subjects of long-tailed frequency, a database split).",
)
flags.DEFINE_integer("num_train", 50_000, "Training examples.")
flags.DEFINE_integer("num_test", 1_000, "Test (held-out) examples.")
flags.DEFINE_integer(
    "num_database",
    None,
    "retrieval: database items (default: every other render of the training sources).",
)
flags.mark_flags_as_required(["data_dir"])
FLAGS = flags.FLAGS

DATASETS = ("shapes_world",)


def _build():
    if FLAGS.dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {FLAGS.dataset!r}; known: {DATASETS}")
    from imagen_jax.data.tfds import shapes_world

    start = time.time()
    builder = shapes_world.build(
        FLAGS.data_dir,
        FLAGS.resolution,
        FLAGS.num_train,
        FLAGS.num_test,
        FLAGS.variant,
        num_database=FLAGS.num_database,
    )
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(
        f"{builder.info.full_name} in {builder.data_dir}: {sizes} "
        f"({time.time() - start:.0f} s)"
    )


if __name__ == "__main__":
    common.run(_build, distributed=False)
