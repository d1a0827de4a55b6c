"""Tests of the log-SNR schedules against float64 numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import schedules


def _np_cosine(t, logsnr_min=-20.0, logsnr_max=20.0):
    b = np.arctan(np.exp(-logsnr_max / 2))
    a = np.arctan(np.exp(-logsnr_min / 2)) - b
    return -2.0 * np.log(np.tan(a * np.asarray(t, np.float64) + b))


T = np.linspace(0.0, 1.0, 1001)


@pytest.mark.parametrize("lo,hi", [(-20.0, 20.0), (-15.0, 10.0), (-5.0, 5.0)])
def test_cosine_matches_float64(lo, hi):
    got = schedules.cosine_logsnr(T, lo, hi)
    assert got.dtype == jnp.float32
    # float32 keeps ~1e-6 relative precision on the angle, also near t = 1.
    np.testing.assert_allclose(got, _np_cosine(T, lo, hi), rtol=1e-5, atol=1e-5)
    assert float(got[0]) == pytest.approx(hi, abs=1e-4)
    assert float(got[-1]) == pytest.approx(lo, abs=1e-4)
    assert np.all(np.diff(np.asarray(got)) < 0)


def test_cosine_is_alpha_cos_in_the_unclipped_middle():
    t = np.linspace(0.05, 0.95, 19)
    alpha, sigma = schedules.alpha_sigma(schedules.cosine_logsnr(t))
    np.testing.assert_allclose(alpha, np.cos(np.pi * t / 2), atol=1e-4)
    np.testing.assert_allclose(sigma, np.sin(np.pi * t / 2), atol=1e-4)


def test_shifted_cosine_is_cosine_plus_log_ratio():
    shifted = schedules.shifted_cosine_logsnr(T, resolution=256)
    expected = _np_cosine(T) + 2.0 * np.log(64 / 256)
    np.testing.assert_allclose(shifted, expected, rtol=1e-5, atol=1e-5)
    same = schedules.shifted_cosine_logsnr(T, resolution=32, base_resolution=32)
    np.testing.assert_allclose(same, schedules.cosine_logsnr(T), atol=1e-6)
    with pytest.raises(ValueError, match="resolution=0"):
        schedules.shifted_cosine_logsnr(T, resolution=0)


def test_linear_endpoints_and_midpoint():
    got = schedules.linear_logsnr(np.array([0.0, 0.5, 1.0]), -6.0, 4.0)
    np.testing.assert_allclose(got, [4.0, -1.0, -6.0], atol=1e-6)


def test_bad_range_raises():
    with pytest.raises(ValueError, match="logsnr_min=5.0"):
        schedules.cosine_logsnr(0.5, 5.0, -5.0)


def test_get_schedule_binds_options():
    fn = schedules.get_schedule("shifted_cosine", resolution=128)
    np.testing.assert_allclose(fn(T), schedules.shifted_cosine_logsnr(T, 128))
    # The resolution goes to the schedules that take it; the others ignore it.
    np.testing.assert_array_equal(
        schedules.get_schedule("cosine", resolution=32)(T), schedules.cosine_logsnr(T)
    )
    based = schedules.get_schedule("shifted_cosine", 32, base_resolution=128)
    np.testing.assert_allclose(
        based(T), schedules.cosine_logsnr(T) + 2.0 * np.log(4.0), atol=1e-5
    )
    np.testing.assert_allclose(
        jax.jit(schedules.get_schedule("cosine"))(T),
        schedules.cosine_logsnr(T),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("cosin", {}, "known schedules: \\['cosine', 'linear', 'shifted_cosine'\\]"),
        ("cosine", {"shift": 3}, "shift"),
        ("shifted_cosine", {}, "needs options \\['resolution'\\]"),
    ],
)
def test_get_schedule_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedules.get_schedule(name, **kwargs)


def test_alpha_sigma_identities_in_float32():
    logsnr = jnp.linspace(-20.0, 20.0, 81).astype(jnp.bfloat16)
    alpha, sigma = schedules.alpha_sigma(logsnr)
    assert alpha.dtype == sigma.dtype == jnp.float32
    l64 = np.asarray(logsnr, np.float64)
    np.testing.assert_allclose(alpha, np.sqrt(1 / (1 + np.exp(-l64))), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.sqrt(1 / (1 + np.exp(l64))), rtol=1e-6)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
