"""Tests of the samplers against independent float64 numpy implementations.

The data are Gaussian, x ~ N(mu, s^2) per dimension, so the exact denoiser is
known in closed form: with z = alpha x + sigma eps,

    E[x | z] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (z - alpha mu).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import guidance, samplers, schedules

SHAPE = (6, 3, 3, 2)  # [B, H, W, C]
_r = np.random.default_rng(0)
MU = _r.uniform(-0.4, 0.4, SHAPE[1:])
S = _r.uniform(0.1, 0.4, SHAPE[1:])

# Float32 tolerance of the numpy comparisons. Each step rounds O(1) values with
# relative error ~6e-8, eps_hat = (z - alpha x0) / sigma amplifies absolute
# errors by at most 1/sigma_t (< 30 at t >= 1/25 on the cosine schedule) before
# the next update multiplies them by sigma_s again, and errors add over <= 25
# steps: measured differences are below 1e-6; 1e-4 leaves room for other
# backends and XLA versions.
TOL = 1e-4


# float64 numpy reference.


def _np_logsnr(t):
    b = np.arctan(np.exp(-10.0))
    a = np.arctan(np.exp(10.0)) - b
    return -2.0 * np.log(np.tan(a * t + b))


def _np_alpha_sigma(t):
    alpha2 = 1.0 / (1.0 + np.exp(-_np_logsnr(t)))
    return np.sqrt(alpha2), np.sqrt(1.0 - alpha2)


def _np_denoise(z, t, i, index_shift):
    alpha, sigma = _np_alpha_sigma(t)
    gain = alpha * S**2 / (alpha**2 * S**2 + sigma**2)
    return MU + gain * (z - alpha * MU) + index_shift * i


def _jax_noise(rng, i, shape):
    """The noise `samplers.sample` documents for step i, as float64."""
    return np.asarray(
        jax.random.normal(jax.random.fold_in(rng, i), shape, jnp.float32), np.float64
    )


def _np_ddpm(x_T, n, rng, index_shift=0.0):
    """Ancestral sampling from q(z_s | z_t, x) written with alpha_{t|s}."""
    z = np.asarray(x_T, np.float64)
    for i in range(n):
        t, s = 1.0 - i / n, 1.0 - (i + 1) / n
        x0 = _np_denoise(z, t, i, index_shift)
        if i == n - 1:
            return x0
        (alpha_t, sigma_t), (alpha_s, sigma_s) = _np_alpha_sigma(t), _np_alpha_sigma(s)
        alpha_ts = alpha_t / alpha_s
        sigma2_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
        mean = (alpha_ts * sigma_s**2 / sigma_t**2) * z + (
            alpha_s * sigma2_ts / sigma_t**2
        ) * x0
        std = np.sqrt(sigma2_ts * sigma_s**2 / sigma_t**2)
        z = mean + std * _jax_noise(rng, i, z.shape)


def _np_ddim(x_T, n, rng, eta=0.0, index_shift=0.0):
    """DDIM in Song et al.'s alpha-bar notation."""
    z = np.asarray(x_T, np.float64)
    for i in range(n):
        t, s = 1.0 - i / n, 1.0 - (i + 1) / n
        x0 = _np_denoise(z, t, i, index_shift)
        if i == n - 1:
            return x0
        abar_t, abar_s = _np_alpha_sigma(t)[0] ** 2, _np_alpha_sigma(s)[0] ** 2
        eps = (z - np.sqrt(abar_t) * x0) / np.sqrt(1 - abar_t)
        sig = eta * np.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        z = np.sqrt(abar_s) * x0 + np.sqrt(1 - abar_s - sig**2) * eps
        if eta:
            z = z + sig * _jax_noise(rng, i, z.shape)


def _np_dpmpp_2m(x_T, n, index_shift=0.0):
    """DPM-Solver++(2M), Algorithm 2 of Lu et al. 2022, lambda = log(alpha/sigma)."""
    z = np.asarray(x_T, np.float64)
    ts = 1.0 - np.arange(n + 1) / n
    alpha, sigma = _np_alpha_sigma(ts)
    lam = np.log(alpha / sigma)
    x0_prev = None
    for i in range(n):
        x0 = _np_denoise(z, ts[i], i, index_shift)
        if i == n - 1:
            return x0
        h = lam[i + 1] - lam[i]
        if i == 0:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        z = sigma[i + 1] / sigma[i] * z - alpha[i + 1] * (np.exp(-h) - 1) * d
        x0_prev = x0


# JAX side.


def _denoise(index_shift=0.0, mu=MU, s=S):
    mu, s2 = jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32) ** 2

    def denoise_fn(z, logsnr, i):
        assert logsnr.shape == (z.shape[0],) and logsnr.dtype == jnp.float32
        alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
        gain = alpha * s2 / (alpha**2 * s2 + sigma**2)
        return mu + gain * (z - alpha * mu) + index_shift * i

    return denoise_fn


@functools.partial(
    jax.jit, static_argnames=("sampler", "eta", "index_shift", "clip_x0")
)
def _run(sampler, x_T, n, rng, eta=0.0, index_shift=0.0, clip_x0="none"):
    # Jitted once per sampler configuration: n, x_T and rng are traced.
    return samplers.sample(
        _denoise(index_shift),
        rng,
        x_T,
        n,
        sampler=sampler,
        schedule_fn=schedules.cosine_logsnr,
        eta=eta,
        clip_x0=clip_x0,
    )


def _x_T(seed=1, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 10, 25])
def test_matches_numpy_float64(n):
    # The index shift makes the denoiser depend on the step index it is given.
    x_T, rng = _x_T(), jax.random.key(7)
    expected = {
        "ddpm": _np_ddpm(x_T, n, rng, index_shift=0.01),
        "ddim": _np_ddim(x_T, n, rng, index_shift=0.01),
        "dpmpp_2m": _np_dpmpp_2m(x_T, n, index_shift=0.01),
    }
    for name, want in expected.items():
        got = _run(name, jnp.asarray(x_T), n, rng, index_shift=0.01)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL, err_msg=name)
    if n > 2:  # the three samplers really differ
        assert np.abs(expected["ddpm"] - expected["ddim"]).max() > 1e-2
        assert np.abs(expected["dpmpp_2m"] - expected["ddim"]).max() > 1e-4


def test_stochastic_ddim_matches_numpy_and_eta_one_is_ddpm():
    x_T, rng = jnp.asarray(_x_T()), jax.random.key(3)

    @jax.jit
    def ddim(eta):  # eta traced: one compilation for both values
        return samplers.sample(
            _denoise(0.01),
            rng,
            x_T,
            12,
            sampler="ddim",
            schedule_fn=schedules.cosine_logsnr,
            eta=eta,
            clip_x0="none",
        )

    want = _np_ddim(x_T, 12, rng, eta=0.5, index_shift=0.01)
    np.testing.assert_allclose(ddim(0.5), want, rtol=TOL, atol=TOL)
    ddpm = _run("ddpm", x_T, 12, rng, index_shift=0.01)
    np.testing.assert_allclose(ddim(1.0), ddpm, rtol=TOL, atol=TOL)
    assert np.abs(ddim(0.5) - ddpm).max() > 1e-3


@pytest.mark.parametrize(
    "sampler,n,bias", [("ddim", 256, 0.01), ("dpmpp_2m", 64, 0.01), ("ddpm", 256, 0.03)]
)
def test_exact_denoiser_reproduces_data_distribution(sampler, n, bias):
    """Noise -> samples whose per-dimension mean/std match the data (B = 8192)."""
    batch, mu, s = 8192, np.array([0.2, -0.1]), np.array([0.3, 0.5])
    x_T = _x_T(seed=11, shape=(batch, 1, 1, 2))
    out = samplers.sample(
        _denoise(mu=mu, s=s),
        jax.random.key(5),
        jnp.asarray(x_T),
        n,
        sampler=sampler,
        schedule_fn=schedules.cosine_logsnr,
        clip_x0="none",
    )
    out = np.asarray(out, np.float64).reshape(batch, 2)
    # The output is E[x | z] at t = 1/n, whose std is s alpha s / sqrt(alpha^2 s^2
    # + sigma^2) when z has the exact marginal.
    alpha, sigma = _np_alpha_sigma(1.0 / n)
    std = s * alpha * s / np.sqrt(alpha**2 * s**2 + sigma**2)
    # Standard errors: s / sqrt(B) for the mean, s / sqrt(2B) for the std, plus
    # the solver's discretisation bias on the std (measured in float64 on this
    # uniform-t grid: DDIM -0.8%, DPM++(2M) +0.7%, DDPM about -2%).
    np.testing.assert_array_less(np.abs(out.mean(0) - mu), 4 * s / np.sqrt(batch))
    np.testing.assert_array_less(
        np.abs(out.std(0) - std), 4 * s / np.sqrt(2 * batch) + bias * s
    )


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_steps_and_guidance_scale_do_not_recompile(sampler):
    traces = []

    def generate(rng, x_T, num_steps, scale):
        traces.append(1)  # runs only when jax traces
        cond, uncond = _denoise(), _denoise(mu=-MU)

        def denoise_fn(z, logsnr, i):
            s = guidance.oscillating_scale(i, scale)
            return guidance.cfg(cond(z, logsnr, i), uncond(z, logsnr, i), s)

        return samplers.sample(
            denoise_fn,
            rng,
            x_T,
            num_steps,
            sampler=sampler,
            schedule_fn=schedules.cosine_logsnr,
            clip_x0="dynamic",
        )

    jitted = jax.jit(generate)
    x_T, rng = jnp.asarray(_x_T()), jax.random.key(0)
    runs = [(4, 1.0), (8, 3.0), (16, 7.5), (8, 1.0)]
    outs = [jitted(rng, x_T, n, s) for n, s in runs]
    assert len(traces) == 1
    assert jitted._cache_size() == 1
    assert np.abs(outs[0] - outs[2]).max() > 1e-3  # the step count took effect
    assert np.abs(outs[1] - outs[3]).max() > 1e-3  # and so did the scale


def test_dynamic_threshold_matches_numpy():
    r = np.random.default_rng(4)
    x0 = (
        r.standard_normal((5, 4, 4, 3))
        * np.array([0.2, 0.5, 1.0, 2.0, 4.0])[:, None, None, None]
    )
    p = 0.9
    s = np.maximum(np.quantile(np.abs(x0).reshape(5, -1), p, axis=1), 1.0)
    s = s[:, None, None, None]
    want = np.clip(x0, -s, s) / s
    got = samplers.threshold_x0(jnp.asarray(x0, jnp.float32), "dynamic", p)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0], x0[0], rtol=1e-5)  # s = 1: unchanged
    assert np.abs(np.asarray(got)).max() <= 1.0


def test_static_and_none_thresholds():
    x0 = jnp.linspace(-3.0, 3.0, 12).reshape(2, 6)
    np.testing.assert_array_equal(
        samplers.threshold_x0(x0, "static"), np.clip(x0, -1, 1)
    )
    np.testing.assert_array_equal(samplers.threshold_x0(x0, "none"), x0)
    with pytest.raises(ValueError, match="'clip'"):
        samplers.threshold_x0(x0, "clip")


@pytest.mark.parametrize("clip_x0", ["static", "dynamic"])
def test_thresholded_output_is_in_range(clip_x0):
    def overshoot(z, logsnr, i):
        return 3.0 * z + 2.0

    out = samplers.sample(
        overshoot,
        jax.random.key(0),
        jnp.asarray(_x_T()),
        5,
        sampler="dpmpp_2m",
        schedule_fn=schedules.cosine_logsnr,
        clip_x0=clip_x0,
    )
    assert np.abs(np.asarray(out)).max() <= 1.0
    assert np.abs(np.asarray(out)).max() > 0.5


def test_bad_arguments_raise():
    run = functools.partial(
        samplers.sample,
        _denoise(),
        jax.random.key(0),
        jnp.zeros(SHAPE),
        schedule_fn=schedules.cosine_logsnr,
    )
    with pytest.raises(ValueError, match="'euler'.*'ddim', 'ddpm', 'dpmpp_2m'"):
        run(4, sampler="euler")
    with pytest.raises(ValueError, match="'clamp'"):
        run(4, clip_x0="clamp")
    with pytest.raises(ValueError, match="got 0"):
        run(0)
    assert samplers.get_sampler_names() == ("ddim", "ddpm", "dpmpp_2m")
