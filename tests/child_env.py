"""XLA options of the tests, and the environment of the processes they start."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests compile far more than they run. Without XLA:CPU's backend (LLVM)
# optimisations, two train-step tests took 121 CPU s instead of 183 and the
# UNet forward tests 59 instead of 90 (session 34, docs/performance.md); the
# numerics are those of the same HLO.
XLA_FLAGS = "--xla_backend_optimization_level=0"


def child_env(**extra: str) -> dict[str, str]:
    """`os.environ` for a process a test starts, plus `extra`: one CPU device
    (without the tests' 8 fake ones), the tests' XLA options, and the
    repository importable."""
    return {**os.environ, "PYTHONPATH": ROOT, **extra, "XLA_FLAGS": XLA_FLAGS}
