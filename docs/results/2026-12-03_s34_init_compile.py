"""Compile-and-run cost of the sharded init, with and without XLA:CPU's backend
optimisations (`sharding.init_compiler_options`), on the smoke model over 8
fake CPU devices. Each measurement is a fresh process (nothing cached); the
two settings alternate. CPU seconds (all threads) are the figure: they do not
depend on what else shares the cores, wall seconds do.

    python docs/results/2026-12-03_s34_init_compile.py [repeats]

Writes docs/results/2026-12-03_s34_init_compile.json.
"""

import json
import os
import platform
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
from imagen_jax import xla_flags
xla_flags.apply_defaults()
import jax
from experiments import t2i_shapes
from imagen_jax import optim, sharding, train, train_state
if sys.argv[1] == "optimised":
    sharding.init_compiler_options = lambda mesh: None
cfg = t2i_shapes.get_config("smoke")
cfg.mesh.shape = (2, 2, 2)
tok = train.make_tokenizer(cfg)
model = train.build_model(cfg, tok.vocab_size)
rules = train_state.mesh_rules(cfg)
mesh = sharding.make_mesh(cfg.mesh.shape, cfg.mesh.axes)
tx, _ = optim.build_optimizer(cfg)
wall, cpu = time.time(), time.process_time()
state, _ = train_state.init_state(model, tx, cfg, mesh, rules)
jax.block_until_ready(state)
print(json.dumps({"wall_s": time.time() - wall, "cpu_s": time.process_time() - cpu}))
"""


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(repeats: int) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["IMAGEN_JAX_RETAIN_FREED_MEMORY"] = "0"
    runs = {"optimised": [], "unoptimised": []}
    for i in range(repeats):
        for mode in runs:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(f"{i + 1}/{repeats} {mode}: {runs[mode][-1]}", flush=True)
    med = {m: statistics.median(r["cpu_s"] for r in rs) for m, rs in runs.items()}
    record = {
        "what": "sharded init of the smoke model (t2i_shapes smoke, mesh 2x2x2)",
        "cpu": cpu_name(),
        "runs": runs,
        "median_cpu_s": med,
        "cpu_ratio_optimised_over_unoptimised": med["optimised"] / med["unoptimised"],
    }
    path = os.path.splitext(__file__)[0] + ".json"
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(
        json.dumps(record["median_cpu_s"]),
        "ratio",
        record["cpu_ratio_optimised_over_unoptimised"],
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
