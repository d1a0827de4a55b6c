"""The project's XLA:CPU defaults: merged into XLA_FLAGS, and in effect."""

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
