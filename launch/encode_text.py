"""Encodes a dataset's captions once with the config's frozen pretrained T5.

    python -m launch.encode_text --config experiments/t2i_own_data.py:res=64 \
        --workdir runs/photos --config.data.dataset=photos \
        --config.text.pretrained=/models/flan-t5-xl
    python -m launch.train --config experiments/t2i_own_data.py:res=64 \
        --workdir runs/photos --config.data.dataset=photos \
        --config.text.pretrained=/models/flan-t5-xl \
        --config.text.precomputed=runs/photos/text_embeddings

Writes WORKDIR/text_embeddings/<split>/ (or config.text.precomputed/<split>):
the embeddings of every record's caption, tokenized as training tokenizes
it, with a meta.json that training checks against its config
(`imagen_jax.text.precompute`). Text-to-image datasets (captions fixed per
record) and a frozen pretrained encoder only. One process: run it once, on
a filesystem every training host reads.
"""

import os

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (the training run's).", lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Run directory; the cache goes to its text_embeddings/."
)
flags.DEFINE_string("split", "train", "The dataset split encoded.")
flags.DEFINE_integer(
    "batch_size", 0, "Captions per encoder call (0: config.data.batch_size)."
)
flags.DEFINE_enum(
    "dtype",
    "float16",
    ["float16", "bfloat16"],
    "Storage dtype (float16: finer; bfloat16: no overflow).",
)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _encode_text():
    from imagen_jax.text import precompute

    directory = precompute.encode_dataset(
        FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.batch_size, FLAGS.dtype
    )
    root = os.path.dirname(directory)
    print(f"train with --config.text.precomputed={root}", flush=True)


if __name__ == "__main__":
    common.run(_encode_text, distributed=False)
