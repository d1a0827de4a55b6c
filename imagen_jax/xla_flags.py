"""XLA:CPU flags the project runs with by default (measured in docs/performance.md).

XLA reads `XLA_FLAGS` once, when JAX's backend starts, so `apply_defaults()`
must run before the first JAX computation: the entry points in `launch/`, the
benchmarks and the tests call it at import. A flag the user already set in
`XLA_FLAGS` is left as given, so any default can be overridden from the shell.
The flags only concern the CPU backend; GPU and TPU ignore them.
"""

from __future__ import annotations

import os

# On jax 0.10's XLA:CPU, 3x3 convolutions and dots handed to YNNPACK (its
# default) run fwd+bwd 2-8x slower than XLA's own kernels at our shapes;
# XNNPACK's greedy graph fusion then speeds up the GroupNorm/softmax
# elementwise chains. Together: 1.8x images/s on the peer train step.
CPU_DEFAULTS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution,-individual_dot",
    "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY",
}


def with_defaults(xla_flags: str, defaults: dict[str, str] = CPU_DEFAULTS) -> str:
    """`xla_flags` plus every default whose flag name it does not already set."""
    given = {
        token.lstrip("-").split("=", 1)[0]
        for token in xla_flags.split()
        if token.startswith("--")
    }
    extra = [f"--{k}={v}" for k, v in defaults.items() if k not in given]
    return " ".join([xla_flags.strip(), *extra]).strip()


def apply_defaults() -> str:
    """Adds the defaults to `os.environ["XLA_FLAGS"]`; returns the new value."""
    os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
    return os.environ["XLA_FLAGS"]
