"""XLA:CPU defaults the project runs with (measured in docs/performance.md).

Two things, both set by `apply_defaults()`:
- flags added to `XLA_FLAGS`. XLA reads them once, when JAX's backend starts,
  so `apply_defaults()` must run before the first JAX computation: the entry
  points in `launch/`, the benchmarks and the tests call it at import. A flag
  the user already set in `XLA_FLAGS` is left as given, so any default can be
  overridden from the shell. The flags only concern the CPU backend.
- `retain_freed_memory()`: glibc's allocator keeps freed memory for reuse
  instead of handing it back to the OS (see there).
"""

from __future__ import annotations

import ctypes
import os
import sys

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


# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def retain_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory; True if it was set.

    XLA:CPU allocates each execution's temporaries (about 2 GB for the peer
    train step) with `posix_memalign` and frees them at the end. glibc serves
    blocks that large with a fresh `mmap` and `munmap`s them on free, so every
    step faults its whole working set back in (about 510k page faults per
    step, 15% of the step on the 2-core VM of docs/performance.md). One arena,
    no `mmap` and no trimming make the freed blocks stay in the heap, where
    the next step reuses them (a few thousand faults per step). The costs:
    the process keeps its peak footprint, and XLA's multi-threaded compiler
    contends for the one arena (the demo's train step compiled in 38-43 s
    instead of 34-35 s; the compile-bound test suite ran 35% slower, so
    tests/conftest.py turns this off). It must run before other
    threads allocate (JAX's worker threads start with its backend): a thread
    that already has an arena of its own keeps `mmap`ing. No-op off glibc,
    and when `IMAGEN_JAX_RETAIN_FREED_MEMORY=0`.
    """
    if os.environ.get("IMAGEN_JAX_RETAIN_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return False
    # -1 disables trimming (mallopt(3)); arenas other than the main one fall
    # back to mmap whatever M_MMAP_MAX says, hence one arena.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def apply_defaults() -> str:
    """Adds the defaults to `os.environ["XLA_FLAGS"]` and sets the allocator.

    Returns the new `XLA_FLAGS`.
    """
    os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
    retain_freed_memory()
    return os.environ["XLA_FLAGS"]
