"""Tests of the parameterisations, min-SNR weights and the diffusion loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import losses, schedules

PARAMS = ("v", "eps", "x0")


def _np_alpha_sigma(logsnr):
    logsnr = np.asarray(logsnr, np.float64)[:, None, None, None]
    return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def _problem(seed=0, batch=6, lo=-6.0, hi=6.0):
    """x, eps, logsnr, z in float64, and the float64 v."""
    r = np.random.default_rng(seed)
    x = r.uniform(-1, 1, (batch, 4, 4, 3))
    eps = r.standard_normal(x.shape)
    logsnr = r.uniform(lo, hi, batch)
    alpha, sigma = _np_alpha_sigma(logsnr)
    return x, eps, logsnr, alpha * x + sigma * eps, alpha * eps - sigma * x


def _f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


@pytest.mark.parametrize("param", PARAMS)
def test_conversions_are_mutually_consistent(param):
    x, eps, logsnr, z, v = _problem()
    x32, eps32, l32, z32 = _f32(x, eps, logsnr, z)
    out = losses.target(x32, eps32, l32, param)
    np.testing.assert_allclose(out, {"x0": x, "eps": eps, "v": v}[param], atol=1e-5)
    # |logsnr| <= 6 keeps 1/alpha, 1/sigma <= 20, so float32 errors stay ~1e-5.
    np.testing.assert_allclose(losses.predict_x0(out, z32, l32, param), x, atol=2e-5)
    np.testing.assert_allclose(losses.predict_eps(out, z32, l32, param), eps, atol=2e-5)
    np.testing.assert_allclose(losses.predict_v(out, z32, l32, param), v, atol=2e-5)


def test_unknown_param_raises():
    x = jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="'epsilon'"):
        losses.predict_x0(x, x, jnp.zeros(2), "epsilon")
    with pytest.raises(ValueError, match="'velocity'"):
        losses.diffusion_loss(
            lambda z, logsnr: z,
            x,
            jax.random.key(0),
            schedule_fn=schedules.cosine_logsnr,
            param="velocity",
        )


@pytest.mark.parametrize("gamma", [5.0, 1.0, None])
def test_min_snr_weights_match_formula(gamma):
    logsnr = np.linspace(-20.0, 20.0, 41)
    snr = np.exp(logsnr)
    clipped = snr if gamma is None else np.minimum(snr, gamma)
    expected = {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}
    for param in PARAMS:
        got = losses.min_snr_weight(jnp.asarray(logsnr, jnp.float32), gamma, param)
        want = np.ones_like(logsnr) if gamma is None else expected[param]
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=param)


def test_min_snr_weighting_is_the_same_loss_in_every_parameterisation():
    """weight * |target error|^2 is min(snr, gamma) |x - x_hat|^2 for all three."""
    x, eps, logsnr, z, v = _problem(seed=1)
    alpha, sigma = _np_alpha_sigma(logsnr)
    x_hat = x + 0.1 * np.random.default_rng(2).standard_normal(x.shape)
    eps_hat = (z - alpha * x_hat) / sigma
    v_hat = alpha * eps_hat - sigma * x_hat
    preds = {"x0": (x_hat, x), "eps": (eps_hat, eps), "v": (v_hat, v)}
    x_err = np.mean((x - x_hat) ** 2, axis=(1, 2, 3))
    expected = np.minimum(np.exp(logsnr), 5.0) * x_err
    for param, (pred, tgt) in preds.items():
        w = losses.min_snr_weight(jnp.asarray(logsnr, jnp.float32), 5.0, param)
        got = np.asarray(w, np.float64) * np.mean((pred - tgt) ** 2, axis=(1, 2, 3))
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=param)


def test_min_snr_plus_one_clips_the_v_loss_weight():
    """plus_one: x0 weight min(snr, gamma) + 1; on v, min(1, (1 + g) / (1 + snr))."""
    logsnr = np.linspace(-20.0, 20.0, 41)
    snr = np.exp(logsnr)
    x0_weight = np.minimum(snr, 5.0) + 1.0
    expected = {"x0": x0_weight, "eps": x0_weight / snr, "v": x0_weight / (snr + 1)}
    for param in PARAMS:
        got = losses.min_snr_weight(
            jnp.asarray(logsnr, jnp.float32), 5.0, param, plus_one=True
        )
        np.testing.assert_allclose(got, expected[param], rtol=1e-5, err_msg=param)
    v = np.asarray(
        losses.min_snr_weight(jnp.asarray(logsnr, jnp.float32), 5.0, "v", True)
    )
    np.testing.assert_allclose(v[snr <= 5.0], 1.0, rtol=1e-6)  # plain v-loss
    np.testing.assert_allclose(v[snr > 5.0], 6.0 / (snr[snr > 5.0] + 1), rtol=1e-5)


def test_gamma_must_be_positive():
    with pytest.raises(ValueError, match="-1.0"):
        losses.min_snr_weight(jnp.zeros(2), -1.0, "v")


def test_stratified_times_cover_the_unit_interval():
    t = np.sort(np.asarray(losses.stratified_uniform(jax.random.key(3), 16)))
    assert np.all((t >= 0) & (t < 1))
    np.testing.assert_allclose(np.diff(t), 1 / 16, atol=1e-6)
    offsets = [
        float(losses.stratified_uniform(jax.random.key(i), 4)[0]) for i in range(200)
    ]
    assert abs(np.mean(offsets) - 0.5) < 0.06  # marginally U(0, 1)


def _oracle(x, param):
    """A network that knows x: recovers eps from z exactly and returns the target."""

    def apply_fn(z, logsnr):
        alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
        eps = (z - alpha * x) / sigma
        return losses.target(x, eps, logsnr, param)

    return apply_fn


SCHEDULE = functools.partial(schedules.linear_logsnr, logsnr_min=-6.0, logsnr_max=6.0)


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("gamma", [5.0, None])
def test_oracle_model_has_zero_loss(param, gamma):
    x = jnp.asarray(_problem()[0], jnp.float32)
    loss, aux = losses.diffusion_loss(
        _oracle(x, param),
        x,
        jax.random.key(0),
        schedule_fn=SCHEDULE,
        param=param,
        min_snr_gamma=gamma,
    )
    assert loss.dtype == jnp.float32 and loss.shape == ()
    assert float(loss) < 1e-9
    assert float(jnp.max(aux["x0_mse"])) < 1e-9
    for key in ("loss", "mse", "x0_mse", "weight", "t", "logsnr"):
        assert aux[key].shape == (x.shape[0],), key


@pytest.mark.parametrize("param", PARAMS)
def test_zero_output_loss_is_the_weighted_target_energy(param):
    x = jnp.asarray(_problem()[0], jnp.float32).astype(jnp.bfloat16)
    loss, aux = jax.jit(
        functools.partial(
            losses.diffusion_loss, schedule_fn=SCHEDULE, param=param, min_snr_gamma=5.0
        ),
        static_argnums=0,
    )(lambda z, logsnr: jnp.zeros_like(z, jnp.bfloat16), x, jax.random.key(1))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(aux["logsnr"], SCHEDULE(aux["t"]), rtol=1e-6)
    w = losses.min_snr_weight(aux["logsnr"], 5.0, param)
    np.testing.assert_allclose(aux["weight"], w, rtol=1e-6)
    np.testing.assert_allclose(loss, jnp.mean(aux["weight"] * aux["mse"]), rtol=1e-6)
    if param == "x0":  # the x0 target does not depend on the noise
        x32 = np.asarray(x, np.float64)
        np.testing.assert_allclose(aux["mse"], np.mean(x32**2, axis=(1, 2, 3)), 1e-6)
    assert float(loss) > 1e-3


def test_pixel_weight_is_a_weighted_mean_of_the_squared_error():
    # x0 output 0: the error is x**2 per pixel and channel, known exactly.
    x = jnp.asarray(_problem()[0], jnp.float32)
    weight = np.ones(x.shape[:3], np.float32)
    weight[:, :2] = 10.0  # the top half of each [4, 4] image weighs 10
    options = dict(schedule_fn=SCHEDULE, param="x0", min_snr_gamma=None)
    zero = lambda z, logsnr: jnp.zeros_like(z)  # noqa: E731
    loss, aux = losses.diffusion_loss(
        zero, x, jax.random.key(2), pixel_weight=weight, **options
    )
    sq = np.asarray(x, np.float64) ** 2
    w = weight[..., None].astype(np.float64)
    expected = (sq * w).sum(axis=(1, 2, 3)) / (3 * w.sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(aux["loss"], expected, rtol=1e-5)
    # "mse" stays the unweighted error; uniform weights give the plain loss.
    np.testing.assert_allclose(aux["mse"], sq.mean(axis=(1, 2, 3)), rtol=1e-5)
    plain, _ = losses.diffusion_loss(zero, x, jax.random.key(2), **options)
    uniform, _ = losses.diffusion_loss(
        zero, x, jax.random.key(2), pixel_weight=np.full(x.shape[:3], 7.0), **options
    )
    np.testing.assert_allclose(uniform, plain, rtol=1e-6)
    assert abs(float(loss) - float(plain)) > 1e-3


def test_shift_share_moves_an_even_share_toward_noise():
    logsnr = jnp.linspace(-4.0, 4.0, 8)
    out = np.asarray(losses.shift_share(logsnr, 0.25, -7.0, -20.0))
    moved = np.flatnonzero(out != np.asarray(logsnr))
    np.testing.assert_array_equal(moved, [3, 7])  # spread, not the batch's end
    np.testing.assert_allclose(out[moved], np.asarray(logsnr)[moved] - 7.0)
    floored = np.asarray(losses.shift_share(logsnr, 1.0, -30.0, -20.0))
    np.testing.assert_allclose(floored, -20.0)  # not below the floor
    np.testing.assert_array_equal(losses.shift_share(logsnr, 0.0, -7.0, -20.0), logsnr)
    with pytest.raises(ValueError, match="share must be in"):
        losses.shift_share(logsnr, 1.5, -7.0, -20.0)


def test_shift_share_moves_only_the_eligible_examples():
    logsnr = jnp.linspace(-4.0, 4.0, 8)
    eligible = jnp.array([1, 1, 0, 1, 0, 0, 1, 1], jnp.uint8)
    out = np.asarray(losses.shift_share(logsnr, 1.0, -7.0, -20.0, eligible))
    moved = out != np.asarray(logsnr)
    np.testing.assert_array_equal(moved, np.asarray(eligible, bool))
    # A share of the eligible: the spread positions (3, 7 at 0.25) among them.
    half = np.asarray(losses.shift_share(logsnr, 0.25, -7.0, -20.0, eligible))
    np.testing.assert_array_equal(np.flatnonzero(half != np.asarray(logsnr)), [3, 7])
    none = losses.shift_share(logsnr, 1.0, -7.0, -20.0, jnp.zeros(8, jnp.uint8))
    np.testing.assert_array_equal(none, logsnr)


def test_low_snr_share_reaches_the_loss_levels():
    schedule = schedules.get_schedule("cosine")
    x = jnp.zeros((16, 4, 4, 3))
    net = lambda z, logsnr: jnp.zeros_like(z)  # noqa: E731
    rng = jax.random.key(0)
    _, plain = losses.diffusion_loss(net, x, rng, schedule_fn=schedule)
    _, moved = losses.diffusion_loss(
        net, x, rng, schedule_fn=schedule, low_snr_share=0.5, low_snr_shift=-7.0
    )
    diff = np.asarray(plain["logsnr"]) - np.asarray(moved["logsnr"])
    assert np.sum(diff > 0) >= 6  # 8 moved, fewer only where the floor clips
    assert np.all((diff == 0)[0::2])  # the others keep their levels
    floor = float(schedule(jnp.ones(())))
    assert np.all(np.asarray(moved["logsnr"]) >= floor - 1e-4)
    # With a mask only its examples move (e.g. one task's).
    mask = jnp.arange(16) < 8
    _, masked = losses.diffusion_loss(
        net,
        x,
        rng,
        schedule_fn=schedule,
        low_snr_share=1.0,
        low_snr_shift=-7.0,
        low_snr_mask=mask,
    )
    diff = np.asarray(plain["logsnr"]) - np.asarray(masked["logsnr"])
    assert np.all(diff[8:] == 0) and np.sum(diff[:8] > 0) >= 6
