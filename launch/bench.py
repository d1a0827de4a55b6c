"""Times training or sampling and prints one JSON line.

    python -m launch.bench --config experiments/bench.py:peer --mode train
    python -m launch.bench --config experiments/bench.py:peer --mode sample
    python -m launch.bench --config experiments/stage2_shapes.py --mode denoise
    python -m launch.bench --config experiments/bench.py:retrieval --mode retrieval

Train: images_per_s, step_ms, gflop_per_image (XLA cost analysis of the
compiled step), gflop_per_s, peak_gflop_per_s (a float32 matmul timed in the
same run) and mfu. Sample: images_per_s and batch_seconds for --sample_steps
steps of the config's sampler (instruction configs: every request with all K
context items and an input image). Denoise (instruction configs): one denoiser
evaluation text-only vs with the K context items' memory (precomputed) and
the input image, and the memory's encoding, --steps runs each in turns.
Retrieval: a ScaNN index against exact search on synthetic embeddings
(recall@k, queries/s of each and their ratio, build time, index size; see
imagen_jax/retrieval/bench.py).
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
flags.DEFINE_enum(
    "mode", "train", ["train", "sample", "denoise", "retrieval"], "What to time."
)
flags.DEFINE_integer(
    "steps", 5, "Timed train steps (train), batches (sample) or runs (denoise)."
)
flags.DEFINE_integer("warmup", 2, "Untimed runs after compilation.")
flags.DEFINE_integer("sample_steps", 64, "Sampler steps per batch (sample).")
flags.DEFINE_string("sampler", None, "Sampler (sample); default config.sample.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the peak-FLOP/s matmul.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def _bench():
    from imagen_jax import bench

    config = FLAGS.config
    if FLAGS.mode == "retrieval":
        from imagen_jax.retrieval import bench as retrieval_bench

        out = retrieval_bench.run_retrieval(config)
    elif "retrieval" in config:
        raise ValueError(f"a retrieval config needs --mode retrieval, not {FLAGS.mode}")
    elif FLAGS.mode == "train":
        out = bench.run_train(config, FLAGS.steps, FLAGS.warmup, FLAGS.matmul_size)
    elif FLAGS.mode == "denoise":
        out = bench.run_denoise(config, FLAGS.steps, FLAGS.warmup)
    else:
        out = bench.run_sample(
            config,
            FLAGS.sample_steps,
            FLAGS.steps,
            FLAGS.warmup,
            FLAGS.sampler or config.sample.sampler,
        )
    print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    common.run(_bench)
