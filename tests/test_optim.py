"""The optimizer: LR schedule, choices, a frozen text encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import t2i_shapes
from imagen_jax import optim


def test_unknown_optimizer_is_a_clear_error():
    cfg = t2i_shapes.get_config("smoke")
    cfg.optim.name = "sgdx"
    with pytest.raises(ValueError, match="sgdx"):
        optim.build_optimizer(cfg)


def test_lr_schedule_matches_optax_warmup_cosine():
    cfg = t2i_shapes.get_config("smoke")
    o = cfg.optim
    o.warmup_steps, o.decay = 10, "cosine"
    reference = optax.join_schedules(
        [
            optax.linear_schedule(0.0, o.lr, 10),
            optax.cosine_decay_schedule(o.lr, 90, alpha=0.05),
        ],
        [10],
    )
    steps = np.arange(120)
    ours = np.array([optim.learning_rate(o, s, 100) for s in steps])
    theirs = np.array([reference(s) for s in steps])
    # float32 arithmetic on values <= lr: a few ulps.
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * o.lr)


def test_frozen_text_encoder_gets_zero_updates_and_no_state():
    cfg = t2i_shapes.get_config("smoke")
    cfg.text.frozen = True
    params = {"text_encoder": {"a": jnp.ones(2)}, "unet": {"b": jnp.ones(3)}}
    tx, _ = optim.build_optimizer(cfg)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(2):  # the warm-up's LR is 0 at the first step
        updates, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["text_encoder"]["a"], 0.0)
    assert np.all(np.asarray(updates["unet"]["b"]) != 0.0)
    mu = optax.tree_utils.tree_get(state, "mu")
    assert jax.tree.leaves(mu["text_encoder"]) == []  # MaskedNodes only
    assert jax.tree.structure(mu["unet"]) == jax.tree.structure(params["unet"])


def _text_updates(scale, full_steps=0, steps=3):
    """The updates of `steps` optimizer steps on ones, with the text encoder's
    LR scale and full-LR steps."""
    params = {"text_encoder": {"a": jnp.ones(2)}, "unet": {"b": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = t2i_shapes.get_config("smoke")
    cfg.optim.text_lr_scale, cfg.optim.text_full_lr_steps = scale, full_steps
    tx, _ = optim.build_optimizer(cfg)
    state, out = tx.init(params), []
    for _ in range(steps):
        update, state = tx.update(grads, state, params)
        out.append(update)
    return out


def test_text_lr_scale_scales_the_text_encoders_updates_only():
    # the last of 3 steps: the warm-up's LR is 0 at the first step
    base, scaled = _text_updates(1.0)[-1], _text_updates(0.25)[-1]
    assert np.all(np.asarray(base["text_encoder"]["a"]) != 0.0)
    np.testing.assert_allclose(
        scaled["text_encoder"]["a"], 0.25 * base["text_encoder"]["a"], rtol=1e-6
    )
    np.testing.assert_array_equal(scaled["unet"]["b"], base["unet"]["b"])


def test_text_full_lr_steps_delays_the_text_lr_scale():
    base, delayed = _text_updates(1.0, steps=6), _text_updates(0.25, 4, steps=6)
    for step in range(6):  # steps 0-3 at the full LR, then a quarter of it
        factor = 1.0 if step < 4 else 0.25
        np.testing.assert_allclose(
            delayed[step]["text_encoder"]["a"],
            factor * base[step]["text_encoder"]["a"],
            rtol=1e-6,
        )
        np.testing.assert_array_equal(
            delayed[step]["unet"]["b"], base[step]["unet"]["b"]
        )
    assert np.all(np.asarray(base[5]["text_encoder"]["a"]) != 0.0)
