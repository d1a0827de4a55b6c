"""Per-device memory of a config's train step on pod-size meshes, on paper.

    python -m launch.scaling --config experiments/paper_scale.py \
        --mesh 256x1x1,64x4x1,16x16x1,1x256x1,32x4x2 \
        --out docs/results/DATE_scaling.json

Each `--mesh` shape (sizes of `config.mesh.axes`, e.g. data x fsdp x tensor)
becomes an abstract mesh; the train state is shaped and sharded on it
without allocating anything, and the train step is lowered ahead of time.
On a CPU host the tool makes as many fake CPU devices as the largest mesh
needs, so every step is also compiled and `memory_analysis()` reports its
peak; `--nocompile` lowers only and estimates the peak (`--nolower`: the
shardings and the estimate alone, in seconds). Prints one line per mesh;
`--out` writes the whole report as JSON (docs/scaling.md).
"""

import json
import math
import os
import sys

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
flags.DEFINE_string(
    "mesh", None, "Comma-separated mesh shapes, sizes joined by 'x' (64x4x1,...)."
)
flags.DEFINE_bool(
    "compile", True, "Compile each step (fake CPU devices) for memory_analysis()."
)
flags.DEFINE_bool(
    "lower",
    True,
    "Lower the step on meshes that are not compiled (else: the "
    "shardings and the estimate only).",
)
flags.DEFINE_string("out", None, "Write the JSON report here.")
flags.mark_flags_as_required(["config", "mesh"])
FLAGS = flags.FLAGS


def _fake_devices(count: int) -> None:
    """Asks XLA:CPU for `count` devices (read when JAX's backend starts).

    Only when JAX will run on the CPU (`xla_flags.backend_is_cpu`): an
    accelerator host compiles the meshes its own devices cover and lowers
    the others.
    """
    from imagen_jax import xla_flags

    flag = "--xla_force_host_platform_device_count"
    given = os.environ.get("XLA_FLAGS", "")
    if xla_flags.backend_is_cpu() and flag not in given:
        os.environ["XLA_FLAGS"] = f"{given} {flag}={count}".strip()


def _scaling():
    from imagen_jax import scaling

    config = FLAGS.config
    shapes = scaling.parse_meshes(FLAGS.mesh, config.mesh.axes)
    if FLAGS.compile:
        _fake_devices(max(math.prod(s) for s in shapes))
    report = scaling.analyse(
        config, shapes, compile_up_to=None if FLAGS.compile else 0, lower=FLAGS.lower
    )
    if FLAGS.out:
        report["command"] = "python -m launch.scaling " + " ".join(sys.argv[1:])
        with open(FLAGS.out, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {FLAGS.out}", flush=True)


if __name__ == "__main__":
    # Not distributed: one process plans for the whole pod.
    common.run(_scaling, distributed=False)
