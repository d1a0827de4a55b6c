"""XLA:CPU defaults the project runs with (measured in docs/performance.md).

Two things, both set by `apply_defaults()`, and only when JAX will run on
its CPU backend (`backend_is_cpu()`):
- flags added to `XLA_FLAGS`. XLA reads them once, when JAX's backend starts,
  so `apply_defaults()` must run before the first JAX computation: the entry
  points in `launch/`, the benchmarks and the tests call it at import. A flag
  the user already set in `XLA_FLAGS` is left as given, so any default can be
  overridden from the shell.
- `retain_freed_memory()`: glibc's allocator keeps freed memory for reuse
  instead of handing it back to the OS (see there).

Which backend JAX will start on cannot be asked of JAX before it starts, and
by then the flags are read. `backend_is_cpu()` answers from what decides it:
the platforms the user asked for (`JAX_PLATFORMS`, or `jax_platforms` once
JAX is imported), whose first is JAX's default backend; else whether
an accelerator plugin is installed where JAX looks for one (`libtpu` or
`TPU_LIBRARY_PATH` for TPUs; modules of the `jax_plugins` namespace package,
`jax_plugins` entry points or `PJRT_NAMES_AND_LIBRARY_PATHS` for CUDA, ROCm
and other PJRT plugins). An installed plugin counts as an accelerator even if
its device is missing, when JAX itself falls back to the CPU: such a run goes
without the CPU tuning unless `JAX_PLATFORMS=cpu` says so.

Both settings are skipped off the CPU, not only the allocator. The flags name
XLA:CPU options only, so on a GPU or TPU host they would tune nothing but
JAX's host-side CPU client; and they are not harmless there: each XLA build
parses `XLA_FLAGS` when it starts and aborts on a name it does not know
(jaxlib 0.10.2: "Unknown flag in XLA_FLAGS"), libtpu and the GPU plugins are
built apart from jaxlib, and these are experimental flags that come and go
between XLA versions. The single malloc arena would make the host threads
that feed an accelerator (input pipeline, transfers) contend, for a gain
that only XLA:CPU's per-step temporaries give.

The model's kernels shaped for XLA:CPU are chosen apart, once JAX has
started and can be asked (`config.model.kernels`, `models.layers.KERNELS`).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
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
    tests/conftest.py turns this off). Off the CPU backend the costs would
    stay and the gain go, so `apply_defaults()` calls this on CPU only. It
    must run before other threads allocate (JAX's worker threads start with
    its backend): a thread that already has an arena of its own keeps
    `mmap`ing. No-op off glibc, and when `IMAGEN_JAX_RETAIN_FREED_MEMORY=0`.
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


def _requested_platforms() -> str:
    """The platforms JAX will try, as it will read them ("" = its own choice)."""
    jax = sys.modules.get("jax")  # imported: its config holds the value
    if jax is not None:
        return jax.config.jax_platforms or ""
    return os.environ.get("JAX_PLATFORMS", "")


def accelerator_plugins() -> list[str]:
    """Accelerator plugins JAX would load when it starts (empty: none).

    Looked up where JAX looks, without importing any of them.
    """
    found = [
        name
        for name in ("TPU_LIBRARY_PATH", "PJRT_NAMES_AND_LIBRARY_PATHS")
        if os.environ.get(name)
    ]
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations:
        locations = list(namespace.submodule_search_locations)
        found += [f"jax_plugins.{m.name}" for m in pkgutil.iter_modules(locations)]
    found += [e.value for e in importlib.metadata.entry_points(group="jax_plugins")]
    return found


def backend_is_cpu() -> bool:
    """Whether JAX's default backend will be XLA:CPU, told before it starts.

    The first of the requested platforms (`JAX_PLATFORMS`) if any, else CPU
    exactly when no accelerator plugin is installed (module docstring).
    """
    platforms = _requested_platforms().strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not accelerator_plugins()


def apply_defaults() -> str:
    """On the CPU backend: adds the defaults to `os.environ["XLA_FLAGS"]` and
    sets the allocator. Elsewhere changes nothing.

    Returns the `XLA_FLAGS` JAX will start with.
    """
    if backend_is_cpu():
        os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
        retain_freed_memory()
    return os.environ.get("XLA_FLAGS", "")
