"""The optimizer: gradient clipping, AdamW or Adafactor, and an LR schedule
whose end (the horizon) is data in the optimizer state; a frozen text encoder
gets zero updates and no state."""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


class LRState(NamedTuple):
    """State of `scale_by_lr_schedule`.

    `horizon` is the step at which the schedule ends; it is data, not a
    constant of the compiled step, so a time budget can move it while training
    (`set_horizon`) without recompiling. `planned` is the `num_steps` it was
    created for, so a resumed run with another `num_steps` starts over from it.
    """

    count: jax.Array
    horizon: jax.Array
    planned: jax.Array


def learning_rate(optim: ml_collections.ConfigDict, step, horizon) -> jax.Array:
    """Linear warm-up to `optim.lr`, then constant or cosine to 5% at `horizon`."""
    step = jnp.asarray(step, jnp.float32)
    warmup = optim.warmup_steps
    ramp = jnp.minimum(step / max(warmup, 1), 1.0)
    if optim.decay == "constant":
        return optim.lr * ramp
    frac = (step - warmup) / jnp.maximum(jnp.asarray(horizon, jnp.float32) - warmup, 1)
    cosine = 0.05 + 0.95 * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(frac, 0.0, 1.0)))
    return optim.lr * jnp.where(step < warmup, ramp, cosine)


def scale_by_lr_schedule(optim, num_steps: int) -> optax.GradientTransformation:
    """Multiplies updates by -learning_rate(count, horizon) (gradient descent)."""

    def init(params):
        del params
        n = jnp.asarray(num_steps, jnp.int32)
        return LRState(jnp.zeros([], jnp.int32), n, n)

    def update(updates, state, params=None):
        del params
        lr = learning_rate(optim, state.count, state.horizon)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        count = optax.safe_int32_increment(state.count)
        return updates, state._replace(count=count)

    return optax.GradientTransformation(init, update)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> Any:
    """Warm-up then constant or cosine LR; AdamW or Adafactor; clipping.

    Returns the transformation and `lr_fn(step, horizon)`.
    """
    if optim.decay not in ("constant", "cosine"):
        raise ValueError(
            f"unknown optim.decay {optim.decay!r}; use ['constant', 'cosine']"
        )
    if optim.name == "adamw":
        opt = optax.chain(
            optax.scale_by_adam(optim.b1, optim.b2),
            optax.add_decayed_weights(optim.weight_decay),
        )
    elif optim.name == "adafactor":
        # The LR applies after Adafactor's momentum (as AdamW's after Adam's).
        opt = optax.chain(
            optax.adafactor(None, momentum=optim.b1, decay_rate=optim.b2),
            optax.scale(-1.0),
        )
    else:
        raise ValueError(
            f"unknown optim.name {optim.name!r}; use 'adamw' or 'adafactor'"
        )
    tx = optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        opt,
        scale_by_lr_schedule(optim, num_steps),
    )
    return tx, functools.partial(learning_rate, optim)


def get_horizon(opt_state) -> int:
    """Where the LR schedule of this optimizer state ends."""
    return int(optax.tree_utils.tree_get(opt_state, "horizon"))


def set_horizon(opt_state, horizon: int, replan: bool = False):
    """The optimizer state with its LR schedule ending at `horizon`.

    With `replan`, `horizon` is also the new plan (`LRState.planned`).
    """
    sharding = optax.tree_utils.tree_get(opt_state, "horizon").sharding

    def put():  # one buffer per leaf: the step donates the state's buffers
        return jax.device_put(np.asarray(horizon, np.int32), sharding)

    fields = {"horizon": put(), "planned": put()} if replan else {"horizon": put()}
    return optax.tree_utils.tree_set(opt_state, **fields)


def text_leaves(params) -> Any:
    """Per-leaf flag of `params`: True in the text encoder."""

    def flag(path, _):
        return bool(path) and getattr(path[0], "key", None) == "text_encoder"

    return jax.tree_util.tree_map_with_path(flag, params)


def frozen_leaves(config, params) -> Any:
    """Per-leaf flag of `params`: True where the parameter is frozen (the text
    encoder, with `config.text.frozen`)."""
    frozen = bool(config.text.frozen)
    return jax.tree.map(lambda t: frozen and t, text_leaves(params))


def text_lr_multiplier(scale: float, full_steps: int) -> optax.GradientTransformation:
    """Multiplies updates by `scale`, or by 1 during the first `full_steps`
    steps (the text encoder at the full LR, then at `scale` of it)."""
    if not full_steps:
        return optax.scale(scale)
    return optax.scale_by_schedule(
        lambda count: jnp.where(count < full_steps, 1.0, scale)
    )


def build_optimizer(config):
    """The optimizer; a frozen text encoder gets zero updates (and no state),
    a trained one its updates times `optim.text_lr_scale` (after the first
    `optim.text_full_lr_steps` steps, which it trains at the full LR)."""
    opt, lr = make_optimizer(config.optim, config.train.num_steps)
    text_lr = config.optim.get("text_lr_scale", 1.0)
    full_steps = config.optim.get("text_full_lr_steps", 0)
    if not config.text.frozen:
        if text_lr != 1.0:  # the state of the default optimizer is unchanged
            multiplier = text_lr_multiplier(text_lr, full_steps)
            opt = optax.chain(opt, optax.masked(multiplier, text_leaves))
        return opt, lr
    frozen = functools.partial(frozen_leaves, config)

    def trained(params):
        return jax.tree.map(operator.not_, frozen(params))

    return optax.chain(
        optax.masked(opt, trained), optax.masked(optax.set_to_zero(), frozen)
    ), lr
