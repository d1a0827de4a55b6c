"""Train step, EMA, the loop, checkpoints, resume order."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import t2i_shapes
from imagen_jax import (
    checkpointing,
    config_utils,
    optim,
    sampling,
    sharding,
    train,
)
from imagen_jax.data import shapes_world
from imagen_jax.models.imagen import build_model


@functools.cache
def _built(mesh_shape, overrides):
    """`train.setup` once per (mesh, overrides) in this module, with the
    initial state kept on the host: the step donates its state, and each
    test starts from a fresh copy instead of compiling the init and the step
    again."""
    cfg = t2i_shapes.get_config("smoke")
    cfg.mesh.shape = mesh_shape
    for k, v in overrides:
        node, *rest = k.split(".")
        cfg[node][rest[0]] = v
    built, state = train.setup(cfg)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return cfg, built, jax.tree.map(np.asarray, state), shardings


def _setup(mesh_shape=(2, 2, 2), **overrides):
    cfg, built, host_state, shardings = _built(
        tuple(mesh_shape), tuple(sorted(overrides.items()))
    )
    return (
        cfg.copy_and_resolve_references(),
        built.tokenizer,
        built.mesh,
        built.rules,
        jax.device_put(host_state, shardings),
        built.step_fn,
        built.batch_sharding,
    )


def _batch(cfg, tok, n=8, seed=0):
    exs = [shapes_world.make_example("train", i, seed, 32, 1, 1) for i in range(n)]
    ids, mask = tok.encode_batch([e["caption"] for e in exs], cfg.data.max_text_len)
    return {
        "image": np.stack([e["image"] for e in exs]),
        "text_tokens": ids,
        "text_mask": mask,
    }


def test_training_steps_lower_the_loss():
    cfg, tok, mesh, rules, state, step_fn, bs = _setup(
        **{"optim.lr": 3e-3, "optim.decay": "constant"}
    )
    batch = sharding.global_batch(_batch(cfg, tok), bs)
    losses = []
    with mesh, nn.logical_axis_rules(rules):
        for _ in range(40):
            state, metrics = step_fn(state, batch)
            losses.append(float(metrics["loss"]))
    # Noise levels are random per step: compare averages of 10 steps.
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
    assert int(state.step) == 40


def test_step_keeps_shardings_and_moves_ema():
    cfg, tok, mesh, rules, state, step_fn, bs = _setup()
    before = jax.tree.map(lambda x: x.sharding, state.params)
    ema0 = jax.tree.map(np.array, state.ema_params)
    with mesh, nn.logical_axis_rules(rules):
        # The zero-initialised output conv passes gradients on from step 2 on.
        for _ in range(4):
            state, _ = step_fn(state, sharding.global_batch(_batch(cfg, tok), bs))
    assert jax.tree.map(lambda x: x.sharding, state.params) == before
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.ema_params, ema0)
    assert sum(jax.tree.leaves(moved)) > len(jax.tree.leaves(moved)) // 2


def test_position_mask_and_low_snr_marks_reach_the_loss():
    cfg, tok, mesh, rules, state, step_fn, bs = _setup(
        **{
            "data.object_weight": 15.0,
            "diffusion.low_snr_share": 1.0,
            "diffusion.low_snr_shift": -7.0,
        }
    )
    base = _batch(cfg, tok)
    b = base["image"].shape[0]
    centre = np.zeros(base["image"].shape[:3], np.uint8)
    centre[:, 8:24, 8:24] = 1
    keys = {
        "none": {},
        "zeros": {"position_mask": np.zeros_like(centre)},
        "centre": {"position_mask": centre},
        "low_snr_ones": {"low_snr": np.ones(b, np.uint8)},
        "low_snr_zeros": {"low_snr": np.zeros(b, np.uint8)},
    }
    losses = {}
    with mesh, nn.logical_axis_rules(rules):
        for name, extra in keys.items():
            fresh = jax.tree.map(jnp.copy, state)  # the step donates its state
            _, metrics = step_fn(fresh, sharding.global_batch({**base, **extra}, bs))
            losses[name] = float(metrics["loss"])
    # Same step, same noise: a zero mask weighs every pixel 1, as no mask does.
    assert losses["zeros"] == pytest.approx(losses["none"], rel=1e-5)
    assert abs(losses["centre"] - losses["none"]) > 1e-3 * losses["none"], losses
    # Without "low_snr" the share moves every example; marked zeros, none.
    assert losses["low_snr_ones"] == pytest.approx(losses["none"], rel=1e-5)
    assert abs(losses["low_snr_zeros"] - losses["none"]) > 1e-3 * losses["none"]


def test_ema_decay_warms_up():
    d = [float(train.ema_decay(jnp.asarray(s), 0.999)) for s in (0, 10, 100, 10**6)]
    assert d[0] == pytest.approx(0.1) and d[1] == pytest.approx(11 / 20)
    assert d[2] == pytest.approx(101 / 110) and d[3] == pytest.approx(0.999)


def test_frozen_text_encoder_does_not_move():
    cfg, tok, mesh, rules, state, step_fn, bs = _setup(**{"text.frozen": True})
    text0 = jax.tree.map(np.asarray, state.params["text_encoder"])
    unet0 = jax.tree.leaves(state.params["unet"])[3].copy()
    with mesh, nn.logical_axis_rules(rules):
        for _ in range(4):
            state, _ = step_fn(state, sharding.global_batch(_batch(cfg, tok), bs))
    jax.tree.map(
        np.testing.assert_array_equal,
        text0,
        jax.tree.map(np.asarray, state.params["text_encoder"]),
    )
    assert not np.allclose(jax.tree.leaves(state.params["unet"])[3], unet0)


def test_checkpoint_round_trip_onto_another_mesh(tmp_path):
    cfg, tok, mesh, rules, state, step_fn, bs = _setup()
    with mesh, nn.logical_axis_rules(rules):
        state, _ = step_fn(state, sharding.global_batch(_batch(cfg, tok), bs))
    mngr = checkpointing.manager(str(tmp_path / "ckpt"))
    checkpointing.save(mngr, 1, state, {"next_index": 7})
    mngr.wait_until_finished()
    # Restore onto a different mesh layout.
    _, _, _, _, fresh, _, _ = _setup(mesh_shape=(1, 8, 1))
    restored, data_state = checkpointing.restore(
        checkpointing.manager(str(tmp_path / "ckpt")), fresh
    )
    assert data_state == {"next_index": 7}
    assert int(restored.step) == 1
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        restored.params,
        state.params,
    )
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding == jax.tree.leaves(fresh.params)[0].sharding


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg, tok, mesh, rules, state, step_fn, bs = _setup()
    mngr = checkpointing.manager(str(tmp_path / "ckpt"))
    checkpointing.save(mngr, 1, state, None)
    mngr.wait_until_finished()
    for f in (tmp_path / "ckpt" / "1" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(checkpointing.CheckpointError, match="is damaged"):
        checkpointing.restore(checkpointing.manager(str(tmp_path / "ckpt")), state)
    with pytest.raises(checkpointing.CheckpointError, match="no checkpoint"):
        checkpointing.restore(checkpointing.manager(str(tmp_path / "empty")), state)


class _Batches:
    """A stand-in for the grain iterator: endless copies of one batch."""

    def __init__(self, batch):
        self.batch, self.index = batch, 0

    def __next__(self):
        self.index += 1
        return self.batch

    def get_state(self):
        return {"next_index": self.index}


def test_loop_stops_on_non_finite_loss_without_saving_it(tmp_path):
    cfg, tok, mesh, rules, state, step_fn, bs = _setup(
        **{"optim.lr": 1e30, "optim.decay": "constant", "optim.warmup_steps": 1}
    )
    cfg.train.num_steps, cfg.train.checkpoint_every = 50, 1
    model = build_model(cfg, tok.vocab_size)
    mngr = checkpointing.manager(str(tmp_path / "checkpoints"))
    loop = train._Loop(cfg, str(tmp_path), model, tok, mngr, lambda s, h: 0.0)
    with mesh, nn.logical_axis_rules(rules):
        with pytest.raises(train.NonFiniteLossError, match="non-finite loss"):
            loop.run(state, _Batches(_batch(cfg, tok)), step_fn, bs)
    mngr.wait_until_finished()
    saved = mngr.all_steps()
    assert saved and max(saved) < 50  # stopped early, and only finite states saved
    restored, _ = checkpointing.restore(mngr, state)
    assert all(
        np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params)
    )


def test_restore_params_partial_and_shape_errors(tmp_path):
    cfg, tok, mesh, rules, state, step_fn, bs = _setup()
    with mesh, nn.logical_axis_rules(rules):
        for _ in range(3):
            state, _ = step_fn(state, sharding.global_batch(_batch(cfg, tok), bs))
    mngr = checkpointing.manager(str(tmp_path / "checkpoints"))
    checkpointing.save(mngr, 3, state, None)
    mngr.wait_until_finished()
    params, step = checkpointing.restore_params(str(tmp_path), state.params)
    assert step == 3
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        params,
        state.ema_params,
    )
    # A model with an extra parameter: partial keeps its init, strict refuses.
    bigger = {**state.params, "extra": jnp.full((2, 3), 7.0)}
    merged, _ = checkpointing.restore_params(str(tmp_path), bigger, partial=True)
    np.testing.assert_array_equal(merged["extra"], 7.0)
    with pytest.raises(checkpointing.CheckpointError, match="lacks 1 parameters"):
        checkpointing.restore_params(str(tmp_path), bigger)
    wrong = jax.tree.map(lambda x: x, state.params)
    wrong["unet"]["conv_in"]["bias"] = jnp.zeros((5,))
    with pytest.raises(checkpointing.CheckpointError, match=r"conv_in.*shape"):
        checkpointing.restore_params(str(tmp_path), wrong, partial=True)
    # Skipped on purpose (`config.init_skip`): the new shape keeps its init,
    # every other parameter still loads.
    skipped, _ = checkpointing.restore_params(
        str(tmp_path), wrong, partial=True, skip=(r"\['conv_in'\]\['bias'\]",)
    )
    np.testing.assert_array_equal(skipped["unet"]["conv_in"]["bias"], 0.0)
    np.testing.assert_array_equal(
        skipped["unet"]["conv_in"]["kernel"],
        state.ema_params["unet"]["conv_in"]["kernel"],
    )
    with pytest.raises(checkpointing.CheckpointError, match="no parameter matches"):
        checkpointing.restore_params(str(tmp_path), state.params, skip=("nothing",))


def test_budget_horizon():
    # 2 steps/s with 100 s left from step 60 reaches step 260.
    assert train.budget_horizon(60, 2.0, 100.0, 1000) == 260
    assert train.budget_horizon(60, 50.0, 100.0, 1000) == 1000  # it all fits
    assert train.budget_horizon(60, 2.0, -5.0, 1000) == 61  # over budget already


def test_time_budget_moves_the_horizon_without_recompiling(
    tmp_path, monkeypatch, capsys
):
    cfg, tok, mesh, rules, state, step_fn, bs = _setup(**{"train.num_steps": 1000})
    cfg.train.log_every = 5
    cfg.train.checkpoint_every, cfg.train.sample_every = 10_000, 10_000
    cfg.train.time_budget_minutes = 0.5
    assert optim.get_horizon(state.opt_state) == 1000
    # A clock that ticks one second per reading: about one second per step.
    ticks = iter(range(10**6))
    monkeypatch.setattr(train.time, "time", lambda: float(next(ticks)))
    model = build_model(cfg, tok.vocab_size)
    mngr = checkpointing.manager(str(tmp_path / "checkpoints"))
    _, lr_fn = optim.build_optimizer(cfg)
    loop = train._Loop(cfg, str(tmp_path), model, tok, mngr, lr_fn)
    with mesh, nn.logical_axis_rules(rules):
        state = loop.run(state, _Batches(_batch(cfg, tok)), step_fn, bs)
    # 1000 steps at ~1 step/s do not fit 30 s: the schedule now ends inside
    # the budget, the run stopped there, and the state (so the checkpoint)
    # carries the new horizon.
    horizon = optim.get_horizon(state.opt_state)
    assert 6 < horizon < 30 and loop.num_steps == horizon
    assert int(state.step) <= horizon
    # Moving the horizon is data: one compiled program for the whole run.
    assert step_fn._cache_size() == 1
    # The shortened schedule anneals: at its end the LR is the cosine floor.
    assert float(lr_fn(horizon, horizon)) == pytest.approx(0.05 * cfg.optim.lr)
    # Resuming with the same plan keeps the horizon; another num_steps resets it.
    cfg.train.time_budget_minutes = 0.0
    capsys.readouterr()
    with mesh, nn.logical_axis_rules(rules):
        state = loop.run(state, _Batches(_batch(cfg, tok)), step_fn, bs)
        assert loop.num_steps == int(state.step) == horizon
        # and says so, with how to train on to num_steps instead
        assert f"ends at step {horizon}, where an earlier" in capsys.readouterr().out
        cfg.train.num_steps = int(state.step) + 2
        state = loop.run(state, _Batches(_batch(cfg, tok)), step_fn, bs)
    assert loop.num_steps == cfg.train.num_steps == int(state.step)
    planned = optax.tree_utils.tree_get(state.opt_state, "planned")
    assert int(planned) == cfg.train.num_steps  # the new plan is kept


@pytest.mark.parametrize("schedule", config_utils.choices()["diffusion.schedule"])
def test_every_allowed_schedule_trains_and_samples(schedule):
    cfg, tok, mesh, rules, state, step_fn, bs = _setup(
        **{"diffusion.schedule": schedule}
    )
    config_utils.validate(cfg)
    with mesh, nn.logical_axis_rules(rules):
        for _ in range(2):
            state, metrics = step_fn(state, sharding.global_batch(_batch(cfg, tok), bs))
            assert np.isfinite(float(metrics["loss"]))
    model = build_model(cfg, tok.vocab_size)
    batch = sampling.prompt_batch(
        ["a red circle", "a blue square"], tok, cfg, model.conditioning
    )
    generate = sampling.make_generate_fn(model, cfg)
    images = generate(state.params, batch, jax.random.PRNGKey(0), 2, 3.0)
    assert images.shape == (2, 32, 32, 3)
    assert np.isfinite(np.asarray(images)).all()


def test_an_older_iterator_state_restores_at_the_step_batch():
    """The pipeline's state counts batches (one per step); a state that counted
    a per-host shard's examples (before the global-batch pipeline) is moved to
    batch `step`, and a current one passes unchanged."""
    assert train._batch_position({"next_index": 12}, 12) == {"next_index": 12}
    assert train._batch_position({"next_index": 12 * 32}, 12) == {"next_index": 12}


def test_loss_options_carry_the_low_snr_share():
    config = t2i_shapes.get_config("smoke")
    assert train.loss_options(config)["low_snr_share"] == 0.0
    config.diffusion.low_snr_share, config.diffusion.low_snr_shift = 0.3, -7.0
    options = train.loss_options(config)
    assert (options["low_snr_share"], options["low_snr_shift"]) == (0.3, -7.0)


def test_marker_text_loss_adds_to_the_diffusion_loss():
    from imagen_jax import instructions
    from imagen_jax.data import tasks

    weight = 0.5
    cfg, tok, mesh, rules, state, step_fn, bs = _setup(
        **{
            "model.conditioning": "instruction",
            "model.context_marker": True,
            "text.marker_text_loss": weight,
            "data.max_context": 2,
            "data.ctx_text_len": 16,
        }
    )
    d = cfg.data
    examples = [tasks.make_example("style_transfer", i, 0, 32) for i in range(8)]
    rows = [
        instructions.to_arrays(
            e.instruction,
            tok,
            max_context=d.max_context,
            text_len=d.max_text_len,
            ctx_text_len=d.ctx_text_len,
            resolution=32,
        )
        for e in examples
    ]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch["image"] = np.stack([e.target for e in examples])
    with mesh, nn.logical_axis_rules(rules):
        _, metrics = step_fn(state, sharding.global_batch(batch, bs))
    marker = float(metrics["marker_text_loss"])
    # Style transfer's instructions name both items: their texts are scored.
    assert marker > 0.0
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["diffusion_loss"]) + weight * marker, rel=1e-5
    )
