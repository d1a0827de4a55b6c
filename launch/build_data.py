"""Builds a dataset as tfds array_record files.

python -m launch.build_data --dataset shapes_world --data_dir DIR
python -m launch.build_data --variant retrieval --num_train 10000 --data_dir DIR
python -m launch.build_data --dataset vocabulary --variant simple --data_dir data/vocab

Your own data (`imagen_jax.data.tfds.own_data`), trained on with
`experiments/t2i_own_data.py --config.data.dataset=NAME`:

python -m launch.build_data --dataset folder --source_dir PHOTOS --data_dir DIR
python -m launch.build_data --dataset folder --source_dir PHOTOS \
    --manifest PHOTOS/captions.csv --data_dir DIR
python -m launch.build_data --dataset tfds --tfds_name coco_captions \
    --caption_key captions/text --data_dir DIR
"""

import os
import time

from absl import flags

from launch import common

flags.DEFINE_string(
    "dataset",
    "shapes_world",
    "Dataset to build: shapes_world; folder (images with captions, "
    "--source_dir); tfds (a prepared tfds dataset, --tfds_name); vocabulary "
    "(the word pieces of the --variant task world's texts, for the "
    "experiments' `words` option).",
)
flags.DEFINE_string("data_dir", None, "Where the tfds dataset is written.")
flags.DEFINE_integer(
    "resolution",
    32,
    "Image side. shapes_world: 32 or 64; folder, tfds: images are resized "
    "(shorter side) and centre-cropped to it.",
)
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
flags.DEFINE_string(
    "source_dir",
    None,
    "folder: the images (a caption file of the same stem beside each, .txt, "
    "unless --manifest); tfds: the data_dir the dataset was prepared in "
    "(default: tfds's).",
)
flags.DEFINE_string(
    "manifest",
    None,
    "folder: a .jsonl (an object per line) or .csv (header row) manifest of "
    "image paths (relative to --source_dir) and captions.",
)
flags.DEFINE_string(
    "tfds_name", None, "tfds: the dataset, NAME[/CONFIG][:VERSION], prepared."
)
flags.DEFINE_string("split", "train", "tfds: the split read (e.g. 'train[:10%]').")
flags.DEFINE_string(
    "image_key", "image", "Manifest column / tfds feature of the image."
)
flags.DEFINE_string(
    "caption_key",
    "caption",
    "Manifest column / tfds feature of the caption ('a/b': nested feature).",
)
flags.DEFINE_string(
    "name",
    None,
    "folder, tfds: the dataset's name (default: the folder's or tfds "
    "dataset's, lower-cased); training names it in config.data.dataset.",
)
flags.mark_flags_as_required(["data_dir"])
FLAGS = flags.FLAGS

DATASETS = ("shapes_world", "folder", "tfds", "vocabulary")


def _build_shapes_world():
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


def _build_own_data():
    from imagen_jax.data.tfds import own_data

    start = time.time()
    keys = {"image_key": FLAGS.image_key, "caption_key": FLAGS.caption_key}
    if FLAGS.dataset == "folder":
        source = FLAGS.source_dir or ""
        if FLAGS.manifest:
            items = own_data.manifest_items(source, FLAGS.manifest, **keys)
        else:
            items = own_data.folder_items(source)
        default = os.path.basename(os.path.normpath(source))
    else:
        source = FLAGS.tfds_name or ""
        items = own_data.tfds_items(source, FLAGS.source_dir, FLAGS.split, **keys)
        default = source
    name = FLAGS.name or own_data.default_name(default)
    report = own_data.build(FLAGS.data_dir, name, items, source, FLAGS.resolution)
    print(
        f"{name} in {report.directory}: {report.num_examples} examples, "
        f"{report.num_skipped} unreadable images skipped (listed in "
        f"{os.path.join(report.directory, own_data.SKIPPED_FILE)}) "
        f"({time.time() - start:.0f} s)\n"
        f"train on it: python -m launch.train --config "
        f"experiments/t2i_own_data.py:res={FLAGS.resolution} --workdir WORKDIR "
        f"--config.data.data_dir={FLAGS.data_dir} --config.data.dataset={name}"
    )


def _build_vocabulary():
    from imagen_jax.data import tasks, vocabulary

    if FLAGS.variant not in tasks.WORLDS:
        raise ValueError(
            f"a vocabulary is built from a task world: --variant must be one of "
            f"{sorted(tasks.WORLDS)}, got {FLAGS.variant!r}"
        )
    start = time.time()
    path = vocabulary.build(FLAGS.data_dir, FLAGS.variant)
    seconds = time.time() - start
    print(f"{path}: word pieces of the {FLAGS.variant} task world ({seconds:.0f} s)")


def _build():
    if FLAGS.dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {FLAGS.dataset!r}; known: {DATASETS}")
    if FLAGS.dataset == "shapes_world":
        _build_shapes_world()
    elif FLAGS.dataset == "vocabulary":
        _build_vocabulary()
    else:
        _build_own_data()


if __name__ == "__main__":
    common.run(_build, distributed=False)
