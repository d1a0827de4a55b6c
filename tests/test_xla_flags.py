"""The project's XLA:CPU defaults: merged into XLA_FLAGS, in effect, and
applied only when JAX will start on its CPU backend."""

import json
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
    monkeypatch.setattr(xla_flags, "backend_is_cpu", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "")
    once = xla_flags.apply_defaults()
    assert xla_flags.apply_defaults() == once
    assert len(once.split()) == len(xla_flags.CPU_DEFAULTS)


@pytest.mark.parametrize("given", [None, "--xla_dump_to=/tmp/dump"])
def test_off_the_cpu_neither_flags_nor_allocator_are_set(monkeypatch, given):
    monkeypatch.setattr(xla_flags, "backend_is_cpu", lambda: False)
    calls = []
    monkeypatch.setattr(xla_flags, "retain_freed_memory", lambda: calls.append(1))
    if given is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", given)
    assert xla_flags.apply_defaults() == (given or "")
    assert os.environ.get("XLA_FLAGS") == given
    assert not calls


# Run in a fresh interpreter: the answer has to come before JAX is imported.
_BACKEND_BEFORE_START = """
import importlib, json, os, sys
from imagen_jax import xla_flags

out = {}
def case(name, platforms=None, **env):
    for key in ("JAX_PLATFORMS", "TPU_LIBRARY_PATH"):
        os.environ.pop(key, None)
    if platforms is not None:
        os.environ["JAX_PLATFORMS"] = platforms
    os.environ.update(env)
    importlib.invalidate_caches()
    out[name] = [xla_flags.backend_is_cpu(), xla_flags.accelerator_plugins()]

case("nothing_requested")
case("cpu", "cpu")
case("cpu_first", "cpu,cuda")
case("cuda", "cuda")
case("tpu_first", "tpu,cpu")
case("tpu_library", TPU_LIBRARY_PATH="/opt/libtpu.so")
os.environ["XLA_FLAGS"] = "--xla_dump_to=/tmp/dump"
case("gpu_then_apply", "gpu")
out["xla_flags_on_gpu"] = xla_flags.apply_defaults()
sys.path.insert(0, sys.argv[1])  # a fake libtpu and a fake jax_plugins module
case("fake_plugins")
case("fake_plugins_but_cpu_asked", "cpu")
out["jax_imported"] = "jax" in sys.modules
import jax  # imported, not started: its config is what counts now
jax.config.update("jax_platforms", "cuda")
case("jax_config_over_env", "cpu")
print(json.dumps(out))
"""


def test_backend_is_told_before_jax_starts(tmp_path):
    (tmp_path / "libtpu").mkdir()
    (tmp_path / "libtpu" / "__init__.py").write_text("")
    (tmp_path / "jax_plugins" / "xla_fake").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "xla_fake" / "__init__.py").write_text("")
    out = subprocess.run(
        [sys.executable, "-c", _BACKEND_BEFORE_START, str(tmp_path)],
        env={k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got = json.loads(out.splitlines()[-1])
    assert not got["jax_imported"]  # the question itself does not import JAX
    # The first requested platform decides, whatever is installed.
    assert got["cpu"][0] and got["cpu_first"][0]
    assert not got["cuda"][0] and not got["tpu_first"][0]
    assert not got["gpu_then_apply"][0]
    assert got["xla_flags_on_gpu"] == "--xla_dump_to=/tmp/dump"
    assert got["fake_plugins_but_cpu_asked"][0]
    assert not got["jax_config_over_env"][0]
    # Nothing requested: CPU unless JAX would load an accelerator plugin.
    nothing_requested, installed = got["nothing_requested"]
    assert nothing_requested == (not installed)
    assert "TPU_LIBRARY_PATH" in got["tpu_library"][1]
    assert not got["tpu_library"][0]
    plugins = got["fake_plugins"][1]
    assert "libtpu" in plugins and "jax_plugins.xla_fake" in plugins
    assert not got["fake_plugins"][0]


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
