"""Parameterisations of the denoiser output and the diffusion training loss.

With z = alpha x + sigma eps (see `schedules`), a network output `out` is read
as one of

    "x0":  out = x                     (data prediction)
    "eps": out = eps                   (noise prediction)
    "v":   out = alpha eps - sigma x   (velocity; Salimans & Ho 2022)

and each converts to the others given (z, logsnr):

    x = (z - sigma eps) / alpha = alpha z - sigma v
    eps = (z - alpha x) / sigma = sigma z + alpha v

Every conversion is affine in `out` for fixed (z, logsnr).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from imagen_jax.diffusion import schedules

PARAMETERISATIONS = ("v", "eps", "x0")

ApplyFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_param(param: str) -> None:
    if param not in PARAMETERISATIONS:
        raise ValueError(
            f"Unknown parameterisation {param!r}; expected one of {PARAMETERISATIONS}."
        )


def _per_example(logsnr: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """alpha, sigma of a [B] logsnr, shaped [B, 1, ..., 1] to broadcast on `like`."""
    logsnr = jnp.reshape(logsnr, jnp.shape(logsnr) + (1,) * (like.ndim - 1))
    return schedules.alpha_sigma(logsnr)


def predict_x0(
    out: jax.Array, z: jax.Array, logsnr: jax.Array, param: str
) -> jax.Array:
    """Reads the network output `out` [B, ...] at (z [B, ...], logsnr [B]) as x."""
    _check_param(param)
    out = out.astype(jnp.float32)
    alpha, sigma = _per_example(logsnr, z)
    if param == "x0":
        return out
    if param == "eps":
        return (z - sigma * out) / alpha
    return alpha * z - sigma * out


def predict_eps(
    out: jax.Array, z: jax.Array, logsnr: jax.Array, param: str
) -> jax.Array:
    """Reads the network output `out` [B, ...] at (z [B, ...], logsnr [B]) as eps."""
    _check_param(param)
    out = out.astype(jnp.float32)
    alpha, sigma = _per_example(logsnr, z)
    if param == "eps":
        return out
    if param == "x0":
        return (z - alpha * out) / sigma
    return sigma * z + alpha * out


def predict_v(out: jax.Array, z: jax.Array, logsnr: jax.Array, param: str) -> jax.Array:
    """Reads the network output `out` [B, ...] at (z [B, ...], logsnr [B]) as v."""
    _check_param(param)
    if param == "v":
        return out.astype(jnp.float32)
    alpha, sigma = _per_example(logsnr, z)
    x0 = predict_x0(out, z, logsnr, param)
    eps = predict_eps(out, z, logsnr, param)
    return alpha * eps - sigma * x0


def target(x: jax.Array, eps: jax.Array, logsnr: jax.Array, param: str) -> jax.Array:
    """The regression target of parameterisation `param` for data x and noise eps."""
    _check_param(param)
    if param == "x0":
        return x
    if param == "eps":
        return eps
    alpha, sigma = _per_example(logsnr, x)
    return alpha * eps - sigma * x


def min_snr_weight(
    logsnr: jax.Array, gamma: float | None, param: str, plus_one: bool = False
) -> jax.Array:
    """Min-SNR-gamma loss weight (Hang et al. 2023) on the `param` target's MSE.

    The min-SNR weighting of the x0 error is min(snr, gamma). Since
    |eps - eps_hat|^2 = snr |x - x_hat|^2 and |v - v_hat|^2 = (1 + snr) |x - x_hat|^2,
    the same weighting on the eps and v errors is min(snr, gamma) / snr and
    min(snr, gamma) / (1 + snr).

    With `plus_one` the x0 weighting is min(snr, gamma) + 1 = min(1 + snr,
    1 + gamma): the plain v-loss's own x0 weight, 1 + snr, clipped. On the v
    error that is min(1, (1 + gamma) / (1 + snr)): weight 1 at high noise, where
    plain min-SNR's weight falls to ~snr and the layout (object positions) gets
    almost no signal, and min-SNR's clipping at low noise.

    Args:
      logsnr: [B] log-SNR of each example.
      gamma: the clip value; None gives weight 1 (plain L2 on the target).
      param: parameterisation of the error being weighted.
      plus_one: clip 1 + snr instead of snr (see above).

    Returns:
      [B] float32 weights.
    """
    _check_param(param)
    logsnr = jnp.asarray(logsnr, jnp.float32)
    if gamma is None:
        return jnp.ones_like(logsnr)
    if isinstance(gamma, int | float) and gamma <= 0:
        raise ValueError(f"min_snr_gamma must be positive or None, got {gamma}.")
    snr = jnp.exp(logsnr)
    extra = 1.0 if plus_one else 0.0
    if param == "x0":
        return jnp.minimum(snr, gamma) + extra
    if param == "eps":  # = (min(snr, gamma) + extra) / snr
        return jnp.minimum(1.0, gamma * jnp.exp(-logsnr)) + extra * jnp.exp(-logsnr)
    # 1 / (1 + snr) = sigmoid(-logsnr)
    return (jnp.minimum(snr, gamma) + extra) * jax.nn.sigmoid(-logsnr)


def stratified_uniform(rng: jax.Array, batch_size: int) -> jax.Array:
    """[B] times in [0, 1): one uniform offset plus the grid i / B, wrapped (VDM).

    Every example is marginally U(0, 1) while the batch covers [0, 1) evenly,
    which lowers the variance of the batch loss.
    """
    u = jax.random.uniform(rng, (), jnp.float32)
    return jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)


def shift_share(
    logsnr: jax.Array,
    share: float,
    shift: float,
    floor: jax.Array | float,
    eligible: jax.Array | None = None,
) -> jax.Array:
    """`logsnr` [B] with a `share` of the examples moved by `shift`, not below
    `floor` (the schedule's noisiest level); with `eligible` (bool [B]) only
    those examples can move, a `share` of them on average.

    The moved examples are spread evenly over the batch (example i when
    floor((i + 1) share) > floor(i share)), so with stratified times they
    cover the schedule as the others do. A negative `shift` trains more at
    high noise, where an image's lowest frequencies are decided: the mean
    colour of a 32 px image stays readable in z_t down to log-SNR about -7
    (its 1024 pixels average the noise away), so a whole-image answer (the
    classification task's red or blue) is decided below that, where the
    plain schedule puts under 1% of the training times.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the shifted share must be in [0, 1], got {share}")
    if not share:
        return logsnr
    i = jnp.arange(logsnr.shape[0], dtype=jnp.float32)
    moved = jnp.floor((i + 1) * share) > jnp.floor(i * share)
    if eligible is not None:
        moved = moved & eligible.astype(bool)
    return jnp.where(moved, jnp.maximum(logsnr + shift, floor), logsnr)


def _mean_over_example(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def diffusion_loss(
    apply_fn: ApplyFn,
    x: jax.Array,
    rng: jax.Array,
    *,
    schedule_fn: schedules.ScheduleFn,
    param: str = "v",
    min_snr_gamma: float | None = 5.0,
    min_snr_plus_one: bool = False,
    pixel_weight: jax.Array | None = None,
    low_snr_share: float = 0.0,
    low_snr_shift: float = 0.0,
    low_snr_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Denoising loss: L2 between the network output and the `param` target.

    Args:
      apply_fn: the network, (z [B, ...], logsnr [B] float32) -> out [B, ...].
      x: clean data [B, H, W, C] in [-1, 1].
      rng: PRNG key for times and noise.
      schedule_fn: t -> logsnr (see `schedules.get_schedule`).
      param: how the network output is read: "v", "eps" or "x0".
      min_snr_gamma: min-SNR-gamma weighting; None for uniform weights.
      min_snr_plus_one: clip 1 + snr instead of snr (see `min_snr_weight`).
      pixel_weight: optional [B, H, W] weight of each pixel's squared error
        (the loss is its weighted mean over the pixels and channels); None
        weighs every pixel alike.
      low_snr_share, low_snr_shift: that share of each batch has its log-SNR
        moved by the shift, not below the schedule's noisiest level
        (`shift_share`); 0 moves none.
      low_snr_mask: optional [B], nonzero for the examples that share is
        taken from (e.g. one task's); None takes it from every example.

    Returns:
      (loss, aux): the float32 scalar batch mean of the weighted loss, and [B]
      arrays "loss" (weighted, per example), "mse" (unweighted error of the
      target), "x0_mse" (error of the implied x0), "weight", "t" and "logsnr".
    """
    _check_param(param)
    x = x.astype(jnp.float32)
    t_rng, eps_rng = jax.random.split(rng)
    t = stratified_uniform(t_rng, x.shape[0])  # [B]
    logsnr = jnp.asarray(schedule_fn(t), jnp.float32)  # [B]
    if low_snr_share:
        floor = jnp.asarray(schedule_fn(jnp.ones(())), jnp.float32)
        logsnr = shift_share(logsnr, low_snr_share, low_snr_shift, floor, low_snr_mask)
    eps = jax.random.normal(eps_rng, x.shape, jnp.float32)
    alpha, sigma = _per_example(logsnr, x)
    z = alpha * x + sigma * eps  # [B, H, W, C]
    out = apply_fn(z, logsnr).astype(jnp.float32)
    error = jnp.square(out - target(x, eps, logsnr, param))  # [B, H, W, C]
    mse = _mean_over_example(error)
    weighted = mse
    if pixel_weight is not None:
        w = jnp.asarray(pixel_weight, jnp.float32)[..., None]
        weighted = _mean_over_example(error * w) / _mean_over_example(w)
    weight = min_snr_weight(logsnr, min_snr_gamma, param, min_snr_plus_one)
    x0_mse = _mean_over_example(jnp.square(predict_x0(out, z, logsnr, param) - x))
    per_example = weight * weighted
    aux = {
        "loss": per_example,
        "mse": mse,
        "x0_mse": x0_mse,
        "weight": weight,
        "t": t,
        "logsnr": logsnr,
    }
    return jnp.mean(per_example), aux
