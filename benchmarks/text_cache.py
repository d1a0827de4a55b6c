"""Train steps/s with and without stored text embeddings, in turns in one run.

    python -m benchmarks.text_cache --out docs/results/2026-11-30_text_cache_bench.json

The model is the text-to-image demo's (`experiments/bench.py`: t2i_shapes at
32 px, batch 32, 64 text tokens) with a frozen T5 of T5 v1.1 small's shape
(d_model 512, 8 layers, 6 heads of 64, gated-GELU d_ff 1024, 32128 rows) in
place of its small trained encoder: random weights, which cost what
pretrained ones do. Both steps are the project's `train.train_step`,
compiled once each: one on batches of tokens (the T5 runs forward every
step), one on batches that also carry float16 `text_embeddings` [B, L, D]
as `launch.encode_text` stores them (the T5 is skipped). A timed unit is one
step with its batch's transfer to the devices; the two alternate (A B A B
...) and the speed-up is the median of the pairs' ratios, so a change of the
machine's load moves both sides. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from imagen_jax import machine, xla_flags

# The project's XLA:CPU defaults, as the entry points apply them (before JAX).
xla_flags.apply_defaults()

config_flags.DEFINE_config_file(
    "config", "experiments/bench.py", "The bench config.", lock_config=True
)
flags.DEFINE_integer("rounds", 10, "Timed pairs of steps (one of each kind).")
flags.DEFINE_integer("warmup", 2, "Untimed steps of each kind after compiling.")
flags.DEFINE_string("out", None, "Also write the JSON record to this file.")
FLAGS = flags.FLAGS

# T5 v1.1 small (google/t5-v1_1-small's config.json).
T5_SMALL = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=1024,
    num_layers=8,
    num_heads=6,
    feed_forward_proj="gated-gelu",
)


def _steps(config):
    """Two blocking step runners, {"online", "stored"}, and the T5's size."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from imagen_jax import bench, sharding, train

    built, state = train.setup(config)
    jitted, batch_sharding = built.step_fn, built.batch_sharding
    mesh, rules = built.mesh, built.rules
    d, b = config.data, config.data.batch_size
    rng = np.random.default_rng(0)
    tokens = {
        "image": rng.integers(0, 256, (b, d.resolution, d.resolution, 3), np.uint8),
        "text_tokens": rng.integers(3, 32000, (b, d.max_text_len), np.int32),
        "text_mask": np.ones((b, d.max_text_len), bool),
    }
    embeddings = rng.standard_normal((b, d.max_text_len, config.text.d_model))
    batches = {
        "online": tokens,
        "stored": {**tokens, "text_embeddings": embeddings.astype(np.float16)},
    }
    # Separate buffers: each kind's step donates its own state.
    states = {name: jax.tree.map(jnp.copy, state) for name in batches}

    def runner(name):
        def run():
            batch = sharding.global_batch(batches[name], batch_sharding)
            with mesh, nn.logical_axis_rules(rules):
                states[name], metrics = jitted(states[name], batch)
            jax.block_until_ready(metrics)

        return run

    sizes = {
        "t5_params": bench.count_params(state.params["text_encoder"]),
        "unet_params": bench.count_params(state.params["unet"]),
    }
    return {name: runner(name) for name in batches}, sizes


def _main(argv):
    del argv
    from imagen_jax import bench

    config = FLAGS.config
    config.text.update(T5_SMALL)
    config.text.frozen = True
    runs, sizes = _steps(config)
    for run in runs.values():
        for _ in range(FLAGS.warmup + 1):  # the first compiles
            run()
    load_before = os.getloadavg()[0]
    times = {name: [] for name in runs}
    for _ in range(FLAGS.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["online"], times["stored"], strict=True)]
    d = config.data
    record = {
        "what": "train steps/s, frozen T5 run every step (online) vs stored "
        "float16 text embeddings (stored); project train_step, in turns",
        "command": "python -m benchmarks.text_cache " + " ".join(sys.argv[1:]),
        "cpu": machine.cpu_model(),
        "t5": {**T5_SMALL, "num_params": sizes["t5_params"], "frozen": True},
        "unet_params": sizes["unet_params"],
        "batch_size": d.batch_size,
        "max_text_len": d.max_text_len,
        "resolution": d.resolution,
        "rounds": FLAGS.rounds,
        "online_step_ms": 1e3 * statistics.median(times["online"]),
        "stored_step_ms": 1e3 * statistics.median(times["stored"]),
        "speedup_stored_over_online": statistics.median(ratios),
        "speedup_min_max": [min(ratios), max(ratios)],
        **bench.machine_info(),
        "load_avg_1m": [load_before, os.getloadavg()[0]],
        "note": "2 cores shared with other jobs: quote the ratio, not the times",
    }
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    app.run(_main)
