"""The project's XLA:CPU defaults: merged into XLA_FLAGS, and in effect."""

import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from imagen_jax import xla_flags


def test_defaults_are_appended_to_other_flags():
    out = xla_flags.with_defaults("--xla_force_host_platform_device_count=8")
    assert out.split()[0] == "--xla_force_host_platform_device_count=8"
    for name, value in xla_flags.CPU_DEFAULTS.items():
        assert f"--{name}={value}" in out.split()


def test_a_flag_the_user_set_is_kept():
    name = "xla_cpu_experimental_ynn_fusion_type"
    out = xla_flags.with_defaults(f"--{name}=+individual_dot")
    assert [t for t in out.split() if name in t] == [f"--{name}=+individual_dot"]


def test_applying_twice_adds_nothing(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    once = xla_flags.apply_defaults()
    assert xla_flags.apply_defaults() == once
    assert len(once.split()) == len(xla_flags.CPU_DEFAULTS)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU flags")
def test_convolutions_run_on_xla_kernels_not_ynnpack():
    # conftest applied the defaults before JAX started: XLA keeps the
    # convolution instead of handing it to a YNNPACK fusion.
    # (Small convolutions stay on XLA either way: this one is big enough.)
    x, w = jnp.ones((8, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    hlo = conv.lower(x, w).compile().as_text()
    assert "convolution(" in hlo
    assert "ynn_fusion" not in hlo


_FAULTS_OF_A_REUSED_BLOCK = """
import ctypes, resource, threading
from imagen_jax import xla_flags
print(xla_flags.retain_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 64 << 20

def touch_and_free():
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)

def churn(out):
    # A 64 MB block from a worker thread, as XLA allocates its temporaries
    # (plain malloc: numpy would ask for huge pages): touched and freed, then
    # allocated and touched again.
    touch_and_free()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    touch_and_free()
    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

out = []
worker = threading.Thread(target=churn, args=(out,))
worker.start()
worker.join()
print(out[0])
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)"
)
@pytest.mark.parametrize("retain", ["1", "0"])
def test_retained_memory_is_reused_without_page_faults(retain):
    env = dict(os.environ, IMAGEN_JAX_RETAIN_FREED_MEMORY=retain)
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_A_REUSED_BLOCK],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    applied, faults = out[0] == "True", int(out[1])
    pages = (64 << 20) // resource.getpagesize()
    if retain == "1":
        assert applied
        # The freed block is reused as it is: no page is faulted in again.
        assert faults < pages // 10, faults
    else:
        # Without it glibc mmaps the block afresh and every page faults.
        assert not applied
        assert faults >= pages // 2, faults
