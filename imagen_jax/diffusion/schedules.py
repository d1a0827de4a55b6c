"""Noise schedules of the continuous-time variance-preserving diffusion.

Time runs over t in [0, 1] (t = 0 data, t = 1 noise). A schedule is a function
t -> logsnr(t), decreasing in t, and the forward process is

    z_t = alpha_t x + sigma_t eps,   alpha^2 = sigmoid(logsnr),
                                     sigma^2 = sigmoid(-logsnr),

so alpha^2 + sigma^2 = 1 and alpha^2 / sigma^2 = exp(logsnr). All schedule maths
runs in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

ScheduleFn = Callable[[jax.Array], jax.Array]


def _as_f32(x: jax.typing.ArrayLike) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _check_range(logsnr_min: float, logsnr_max: float) -> None:
    if isinstance(logsnr_min, int | float) and isinstance(logsnr_max, int | float):
        if not logsnr_min < logsnr_max:
            raise ValueError(
                f"logsnr_min={logsnr_min} must be below logsnr_max={logsnr_max}."
            )


def cosine_logsnr(
    t: jax.typing.ArrayLike, logsnr_min: float = -20.0, logsnr_max: float = 20.0
) -> jax.Array:
    """Cosine schedule (alpha = cos(pi t / 2)), clipped to [logsnr_min, logsnr_max].

    logsnr(t) = -2 log tan(a t + b), with b = arctan(exp(-logsnr_max / 2)) and
    a = arctan(exp(-logsnr_min / 2)) - b, so logsnr(0) = logsnr_max and
    logsnr(1) = logsnr_min.

    Args:
      t: times in [0, 1], any shape.
      logsnr_min: log-SNR at t = 1.
      logsnr_max: log-SNR at t = 0.

    Returns:
      float32 log-SNR, same shape as `t`.
    """
    _check_range(logsnr_min, logsnr_max)
    t = _as_f32(t)
    b = jnp.arctan(jnp.exp(-0.5 * _as_f32(logsnr_max)))
    c = jnp.arctan(jnp.exp(0.5 * _as_f32(logsnr_min)))  # = pi/2 - a - b
    a = 0.5 * jnp.pi - b - c
    # tan(theta) = 1 / tan(pi/2 - theta): near t = 1 the angle a t + b is within
    # float32 rounding of pi/2, so use the complementary angle c + a (1 - t),
    # which stays exact there (1 - t is exact in float32 for t >= 1/2).
    near_data = -2.0 * jnp.log(jnp.tan(a * t + b))
    near_noise = 2.0 * jnp.log(jnp.tan(c + a * (1.0 - t)))
    return jnp.where(t < 0.5, near_data, near_noise)


# "simple diffusion" (Hoogeboom et al. 2023) shifts the cosine schedule of a
# 64x64 model to other sides: its reference side.
SHIFT_BASE_RESOLUTION = 64


def shifted_cosine_logsnr(
    t: jax.typing.ArrayLike,
    resolution: int,
    base_resolution: int = SHIFT_BASE_RESOLUTION,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
) -> jax.Array:
    """Cosine schedule shifted for resolution (simple diffusion).

    logsnr(t) = cosine_logsnr(t) + 2 log(base_resolution / resolution): a
    higher resolution sees more noise at the same t (its pixels average noise
    over more neighbours), a lower one less. The shift is applied after
    clipping, so the range becomes [logsnr_min, logsnr_max] + shift.

    Args:
      t: times in [0, 1], any shape.
      resolution: image side the schedule is used at.
      base_resolution: side at which the shifted schedule equals the cosine one.
      logsnr_min: unshifted log-SNR at t = 1.
      logsnr_max: unshifted log-SNR at t = 0.

    Returns:
      float32 log-SNR, same shape as `t`.

    Raises:
      ValueError: if a resolution is not positive.
    """
    if resolution <= 0 or base_resolution <= 0:
        raise ValueError(
            f"Resolutions must be positive, got resolution={resolution}"
            f" and base_resolution={base_resolution}."
        )
    shift = 2.0 * jnp.log(_as_f32(base_resolution) / _as_f32(resolution))
    return cosine_logsnr(t, logsnr_min, logsnr_max) + shift


def linear_logsnr(
    t: jax.typing.ArrayLike, logsnr_min: float = -10.0, logsnr_max: float = 10.0
) -> jax.Array:
    """Log-SNR linear in t, from logsnr_max at t = 0 to logsnr_min at t = 1."""
    _check_range(logsnr_min, logsnr_max)
    t = _as_f32(t)
    return _as_f32(logsnr_max) + (_as_f32(logsnr_min) - _as_f32(logsnr_max)) * t


_SCHEDULES: dict[str, Callable[..., jax.Array]] = {
    "cosine": cosine_logsnr,
    "shifted_cosine": shifted_cosine_logsnr,
    "linear": linear_logsnr,
}


def get_schedule_names() -> tuple[str, ...]:
    """Names accepted by `get_schedule`."""
    return tuple(sorted(_SCHEDULES))


def get_schedule(name: str, resolution: int | None = None, **kwargs) -> ScheduleFn:
    """Returns the schedule `name` as a function t -> logsnr, options bound.

    Args:
      name: one of `get_schedule_names()`.
      resolution: image side the schedule is used at; given to the schedules
        that depend on it (a `resolution` argument, e.g. "shifted_cosine") and
        ignored by the others.
      **kwargs: other options of that schedule (e.g. `base_resolution=128`).

    Raises:
      ValueError: on an unknown name, an unknown option or a missing one.
    """
    if name not in _SCHEDULES:
        raise ValueError(
            f"Unknown schedule {name!r}; known schedules: {sorted(_SCHEDULES)}."
        )
    fn = _SCHEDULES[name]
    signature = inspect.signature(fn)
    if resolution is not None and "resolution" in signature.parameters:
        kwargs = {"resolution": resolution, **kwargs}
    try:
        bound = signature.bind_partial(None, **kwargs)
    except TypeError as e:
        raise ValueError(f"Bad options {kwargs} for schedule {name!r}: {e}") from e
    missing = [
        p.name
        for p in list(signature.parameters.values())[1:]
        if p.default is inspect.Parameter.empty and p.name not in bound.arguments
    ]
    if missing:
        raise ValueError(f"Schedule {name!r} needs options {missing}.")
    return functools.partial(fn, **kwargs)


def alpha_sigma(logsnr: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Returns (alpha, sigma) in float32: alpha^2 = sigmoid(logsnr) = 1 - sigma^2."""
    logsnr = _as_f32(logsnr)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
