"""Samplers of the variance-preserving diffusion, each one jitted-friendly loop.

The time grid is t_i = 1 - i / N for i = 0..N, built inside the loop, so the
number of steps N is a traced value: a jitted caller does not recompile when N,
or a guidance scale it passes into the denoiser, changes. Step i calls the
denoiser once at t_i, thresholds its x0 prediction and moves z from t_i to
t_{i+1}; the result is the thresholded x0 prediction of the last step (t = 1/N),
i.e. the last move to t = 0 is first order for every sampler.

Typical use, everything traced but the sampler's configuration:

    @jax.jit
    def generate(params, batch, rng, x_T, num_steps, scale):
        def denoise_fn(z, logsnr, i):
            return guided_x0(params, batch, z, logsnr, scale)
        return sample(denoise_fn, rng, x_T, num_steps, sampler="ddim",
                      schedule_fn=schedule_fn)

Stochastic samplers draw the noise of step i as
`jax.random.normal(jax.random.fold_in(rng, i), x_T.shape, jnp.float32)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from imagen_jax.diffusion import schedules

DenoiseFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

THRESHOLDS = ("static", "dynamic", "none")


def dynamic_threshold(x0: jax.Array, percentile: float = 0.995) -> jax.Array:
    """Imagen's dynamic thresholding of an x0 prediction [B, ...].

    s = max(1, quantile_p(|x0|)) per example, then x0 <- clip(x0, -s, s) / s.
    """
    flat = jnp.abs(jnp.reshape(x0, (x0.shape[0], -1)))  # [B, D]
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)  # [B]
    s = jnp.reshape(s, s.shape + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) / s


def threshold_x0(
    x0: jax.Array, method: str = "dynamic", percentile: float = 0.995
) -> jax.Array:
    """Thresholds an x0 prediction: "static" (clip to [-1, 1]), "dynamic", "none".

    Raises:
      ValueError: on an unknown method.
    """
    if method == "static":
        return jnp.clip(x0, -1.0, 1.0)
    if method == "dynamic":
        return dynamic_threshold(x0, percentile)
    if method == "none":
        return x0
    raise ValueError(f"Unknown clip_x0 {method!r}; expected one of {THRESHOLDS}.")


class Step(NamedTuple):
    """What one solver step sees: the move of z from time t to the earlier s.

    Log-SNRs are [B, 1, ..., 1] so they broadcast against z.
    """

    z: jax.Array  # [B, ...] z_t
    x0: jax.Array  # [B, ...] thresholded x0 prediction at t
    x0_prev: jax.Array  # [B, ...] x0 prediction of the previous step
    logsnr_prev: jax.Array  # of the previous step's time (= logsnr_t at step 0)
    logsnr_t: jax.Array
    logsnr_s: jax.Array
    first: jax.Array  # bool scalar: step 0
    key: jax.Array  # PRNG key of this step


def _noise(step: Step) -> jax.Array:
    return jax.random.normal(step.key, step.z.shape, jnp.float32)


def ddpm_step(step: Step, eta: jax.typing.ArrayLike = 1.0) -> jax.Array:
    """Ancestral step: a draw from the posterior q(z_s | z_t, x = x0) (VDM form).

    With snr_t / snr_s = exp(logsnr_t - logsnr_s) and c = 1 - snr_t / snr_s,
    mean = alpha_s ((snr_t / snr_s) z_t / alpha_t + c x0) and variance =
    c sigma_s^2. `eta` is ignored (the posterior variance is fixed).
    """
    del eta
    alpha_t, _ = schedules.alpha_sigma(step.logsnr_t)
    alpha_s, sigma_s = schedules.alpha_sigma(step.logsnr_s)
    # Both from the log-SNR gap: 1 - c would round to 0 in float32 at t = 1.
    snr_ratio = jnp.exp(step.logsnr_t - step.logsnr_s)
    c = -jnp.expm1(step.logsnr_t - step.logsnr_s)
    mean = alpha_s * (snr_ratio * step.z / alpha_t + c * step.x0)
    return mean + jnp.sqrt(c) * sigma_s * _noise(step)


def ddim_step(step: Step, eta: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """DDIM step: z_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps_hat + std noise.

    eps_hat = (z_t - alpha_t x0) / sigma_t and std = eta sigma_s sqrt(c), with c
    as in `ddpm_step`: eta = 0 is deterministic, eta = 1 is ancestral sampling.
    """
    alpha_t, sigma_t = schedules.alpha_sigma(step.logsnr_t)
    alpha_s, sigma_s = schedules.alpha_sigma(step.logsnr_s)
    eps_hat = (step.z - alpha_t * step.x0) / sigma_t
    if isinstance(eta, int | float) and eta == 0:
        return alpha_s * step.x0 + sigma_s * eps_hat
    eta2 = jnp.square(jnp.asarray(eta, jnp.float32))
    c = -jnp.expm1(step.logsnr_t - step.logsnr_s)
    # 1 - eta^2 c, written so that it does not round to 0 when eta = 1, c ~ 1.
    keep = (1.0 - eta2) + eta2 * jnp.exp(step.logsnr_t - step.logsnr_s)
    return (
        alpha_s * step.x0
        + sigma_s * jnp.sqrt(keep) * eps_hat
        + sigma_s * jnp.sqrt(eta2 * c) * _noise(step)
    )


def dpmpp_2m_step(step: Step, eta: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """DPM-Solver++(2M) step (Lu et al. 2022), multistep on x0 predictions.

    In lambda = logsnr / 2 = log(alpha / sigma), with h = lambda_s - lambda_t,
    z_s = (sigma_s / sigma_t) z_t - alpha_s expm1(-h) D, where D = x0 on the
    first step and D = x0 + (h / (2 h_prev)) (x0 - x0_prev) afterwards.
    `eta` is ignored.
    """
    del eta
    _, sigma_t = schedules.alpha_sigma(step.logsnr_t)
    alpha_s, sigma_s = schedules.alpha_sigma(step.logsnr_s)
    h = 0.5 * (step.logsnr_s - step.logsnr_t)
    h_prev = 0.5 * (step.logsnr_t - step.logsnr_prev)
    ratio = jnp.where(step.first, 0.0, h / jnp.where(step.first, 1.0, 2.0 * h_prev))
    d = step.x0 + ratio * (step.x0 - step.x0_prev)
    return (sigma_s / sigma_t) * step.z - alpha_s * jnp.expm1(-h) * d


_SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "ddpm": ddpm_step,
    "ddim": ddim_step,
    "dpmpp_2m": dpmpp_2m_step,
}


def get_sampler_names() -> tuple[str, ...]:
    """Names accepted by `sample(..., sampler=...)`."""
    return tuple(sorted(_SAMPLERS))


def _check_args(sampler: str, num_steps, clip_x0: str) -> None:
    if sampler not in _SAMPLERS:
        raise ValueError(
            f"Unknown sampler {sampler!r}; expected one of {get_sampler_names()}."
        )
    if clip_x0 not in THRESHOLDS:
        raise ValueError(f"Unknown clip_x0 {clip_x0!r}; expected one of {THRESHOLDS}.")
    if isinstance(num_steps, int) and num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}.")


def sample(
    denoise_fn: DenoiseFn,
    rng: jax.Array,
    x_T: jax.Array,
    num_steps: jax.typing.ArrayLike,
    *,
    sampler: str = "ddim",
    schedule_fn: schedules.ScheduleFn,
    eta: jax.typing.ArrayLike = 0.0,
    clip_x0: str = "dynamic",
    dynamic_percentile: float = 0.995,
) -> jax.Array:
    """Runs `sampler` for `num_steps` steps from x_T (z at t = 1) to an x0.

    Args:
      denoise_fn: (z [B, ...] float32, logsnr [B] float32, step_index int32
        scalar) -> x0 prediction [B, ...] (guidance applied inside it).
      rng: PRNG key; step i uses `fold_in(rng, i)`.
      x_T: starting noise, [B, ...], standard normal.
      num_steps: number of denoiser calls N >= 1; may be traced.
      sampler: "ddpm", "ddim" or "dpmpp_2m".
      schedule_fn: t -> logsnr, as used in training.
      eta: DDIM noise level in [0, 1] (0 deterministic, 1 ancestral); the
        other samplers ignore it.
      clip_x0: thresholding of each x0 prediction: "dynamic", "static", "none".
      dynamic_percentile: quantile of |x0| used by dynamic thresholding.

    Returns:
      The thresholded x0 prediction of the last step, float32 [B, ...]; in
      [-1, 1] unless clip_x0 is "none".

    Raises:
      ValueError: on an unknown sampler or clip_x0, or a concrete num_steps < 1.
    """
    _check_args(sampler, num_steps, clip_x0)
    step_fn = _SAMPLERS[sampler]
    num_steps = jnp.asarray(num_steps, jnp.int32)
    n = num_steps.astype(jnp.float32)
    batch = x_T.shape[0]
    bshape = (batch,) + (1,) * (x_T.ndim - 1)

    def logsnr_at(i: jax.Array) -> jax.Array:  # [B] at t_i = 1 - i / N
        t = 1.0 - i.astype(jnp.float32) / n
        return jnp.full((batch,), schedule_fn(t), jnp.float32)

    def body(i, carry):
        z, x0_prev, logsnr_prev = carry
        logsnr_t, logsnr_s = logsnr_at(i), logsnr_at(i + 1)
        x0 = denoise_fn(z, logsnr_t, i).astype(jnp.float32)
        x0 = threshold_x0(x0, clip_x0, dynamic_percentile)
        step = Step(
            z=z,
            x0=x0,
            x0_prev=x0_prev,
            logsnr_prev=jnp.reshape(logsnr_prev, bshape),
            logsnr_t=jnp.reshape(logsnr_t, bshape),
            logsnr_s=jnp.reshape(logsnr_s, bshape),
            first=i == 0,
            key=jax.random.fold_in(rng, i),
        )
        return step_fn(step, eta), x0, logsnr_t

    z = x_T.astype(jnp.float32)
    init = (z, jnp.zeros_like(z), logsnr_at(jnp.int32(0)))
    _, x0, _ = jax.lax.fori_loop(jnp.int32(0), num_steps, body, init)
    return x0
