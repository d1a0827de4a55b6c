"""Training: the pure sharded train_step and the training loop."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from imagen_jax import (
    checkpointing,
    config_utils,
    optim,
    preemption,
    sampling,
    sharding,
    train_state,
)
from imagen_jax import conditioning as conditioning_lib
from imagen_jax.data import pipeline
from imagen_jax.diffusion import losses, schedules
from imagen_jax.models import t5
from imagen_jax.models.imagen import Imagen, build_model, marker_text_loss
from imagen_jax.text import pretrained
from imagen_jax.text.tokenizers import make_tokenizer
from imagen_jax.train_state import TrainState


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class Preempted(RuntimeError):
    """The run was preempted: it saved its checkpoint at `step` and stopped
    before its end (`train_and_evaluate(..., raise_on_preemption=True)`)."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"{reason} at step {step}")
        self.step = step


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay warmed up with the step, so short runs are not the random init."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def drop_conditions(
    rng: jax.Array, batch: dict, drop, conditioning: conditioning_lib.Conditioning
) -> dict:
    """Classifier-free-guidance dropout, one exclusive choice per example.

    With probability `drop.all` every condition is dropped, else with
    `drop.text` / `drop.context` / `drop.image` only that one. Returns the
    masks to train with (`conditioning.condition_masks`).
    """
    b = batch["text_mask"].shape[0]
    edges = jnp.cumsum(jnp.array([drop.all, drop.text, drop.context, drop.image]))
    choice = jnp.searchsorted(edges, jax.random.uniform(rng, (b,)), side="right")
    return conditioning_lib.condition_masks(
        batch,
        conditioning,
        text=(choice != 0) & (choice != 1),
        context=(choice != 0) & (choice != 2),
        image=(choice != 0) & (choice != 3),
    )


def loss_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`losses.diffusion_loss` keyword arguments from `config.diffusion`."""
    d = config.diffusion
    return dict(
        schedule_fn=schedules.get_schedule(d.schedule, config.data.resolution),
        param=d.param,
        min_snr_gamma=d.min_snr_gamma or None,
        min_snr_plus_one=d.get("min_snr_plus_one", False),
        low_snr_share=d.get("low_snr_share", 0.0),
        low_snr_shift=d.get("low_snr_shift", 0.0),
    )


def train_step(state: TrainState, batch: dict, *, model: Imagen, tx, config) -> tuple:
    """One optimisation step. Pure; RNG from fold_in(seed, step)."""
    d = config.diffusion
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
    drop_rng, loss_rng, dropout_rng = jax.random.split(rng, 3)
    x = batch["image"].astype(jnp.float32) / 127.5 - 1.0  # [B, H, W, 3]
    masks = drop_conditions(drop_rng, batch, d.cond_drop, model.conditioning)
    frozen = optim.frozen_leaves(config, state.params)
    pixel_weight = None
    if "position_mask" in batch:  # data.object_weight > 0: objects weigh 1 + w
        pixel_weight = 1.0 + config.data.object_weight * batch["position_mask"]

    def loss_fn(params):
        # No backward pass through a frozen text encoder (its updates are zero).
        params = jax.tree.map(
            lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen
        )
        variables = {"params": params}
        # The context memory: computed once per step, inside the gradient, with
        # dropout masks of its own.
        cond = model.apply(
            variables,
            batch,
            masks,
            train=True,
            method=Imagen.condition,
            rngs={"dropout": jax.random.fold_in(dropout_rng, 1)},
        )
        text, text_mask = cond.pop("text"), cond.pop("text_mask")

        def apply_fn(z, logsnr):
            return model.apply(
                variables,
                z,
                logsnr,
                text,
                text_mask,
                train=True,
                method=Imagen.denoise,
                rngs={"dropout": dropout_rng},
                **cond,
            )

        loss, _ = losses.diffusion_loss(
            apply_fn,
            x,
            loss_rng,
            pixel_weight=pixel_weight,
            low_snr_mask=batch.get("low_snr"),  # data.low_snr_tasks' examples
            **loss_options(config),
        )
        extra = {}
        if marker_weight:
            extra["diffusion_loss"] = loss
            extra["marker_text_loss"] = marker_text_loss(
                t5.token_embedding(params["text_encoder"]),
                batch["text_tokens"],
                masks["text_mask"],
                text,
                batch["ctx_tokens"],
                batch["ctx_text_mask"],
                masks["ctx_mask"],
                form=config.text.get("marker_loss_form", "text"),
            )
            loss = loss + marker_weight * extra["marker_text_loss"]
        return loss, extra

    marker_weight = config.text.get("marker_text_loss", 0.0)
    (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, config.optim.ema_decay)
    # Frozen parameters are kept as they are (the average would round them).
    ema = jax.tree.map(
        lambda e, p, f: e if f else decay * e + (1.0 - decay) * p,
        state.ema_params,
        params,
        frozen,
    )
    metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(params),
        "update_norm": optax.global_norm(updates),
        "ema_decay": decay,
        **extra,
    }
    new_state = TrainState(
        step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state
    )
    return new_state, metrics


def compile_train_step(model, tx, config, mesh, state_shardings):
    data_axes = tuple(a for a in ("data", "fsdp") if a in config.mesh.axes)
    batch_sharding = sharding.batch_sharding(mesh, data_axes)
    step_fn = functools.partial(train_step, model=model, tx=tx, config=config)
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )
    return jitted, batch_sharding


@dataclasses.dataclass(frozen=True)
class Setup:
    """A config's model, mesh, LR schedule and compiled step (`setup`).

    Attributes:
      tokenizer, model: the config's (`make_tokenizer`, `build_model`).
      rules, mesh: the logical-axis rules and the device mesh; run the step
        under `with setup.mesh, nn.logical_axis_rules(setup.rules)`.
      lr_fn: the optimizer's learning-rate schedule.
      step_fn: jitted (state, batch) -> (state, metrics); donates the state.
      batch_sharding: where a global batch goes (`sharding.global_batch`).
    """

    tokenizer: Any
    model: Imagen
    rules: Any
    mesh: jax.sharding.Mesh
    lr_fn: Any
    step_fn: Any
    batch_sharding: jax.sharding.NamedSharding


def setup(config: ml_collections.ConfigDict) -> tuple[Setup, TrainState]:
    """What a train step needs from `config`, and the initial state sharded on
    the mesh (training, benchmarks, tests). The state is apart so that nothing
    holds it once a step has donated it or a checkpoint replaced it."""
    tokenizer = make_tokenizer(config)
    model = build_model(config, tokenizer.vocab_size)
    rules = train_state.mesh_rules(config)
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes)
    tx, lr_fn = optim.build_optimizer(config)
    state, state_shardings = train_state.init_state(model, tx, config, mesh, rules)
    step_fn, batch_sharding = compile_train_step(
        model, tx, config, mesh, state_shardings
    )
    built = Setup(tokenizer, model, rules, mesh, lr_fn, step_fn, batch_sharding)
    return built, state


def restore_or_init(config, workdir, state, mngr, data_iter):
    """The one place that decides where training starts.

    Order: a checkpoint in the workdir (resume this run from its latest
    undamaged step), else `config.resume` (continue another run exactly), else
    `config.init_from` (fine-tune: params and EMA only, missing parameters and
    those matching a regex of `config.init_skip` keep their init), else
    scratch. A run that starts (not resumed) takes a pretrained text encoder
    (`config.text.pretrained`) from its directory.
    """
    starts = mngr.latest_step() is None and not config.resume
    if mngr.latest_step() is not None:
        state, data_state = checkpointing.resume(mngr, state)
        source = f"resumed {workdir} at step {int(state.step)}"
    elif config.resume:
        other = checkpointing.manager(checkpointing._checkpoint_dir(config.resume))
        state, data_state = checkpointing.restore(other, state)
        source = f"resumed from {config.resume} at step {int(state.step)}"
    elif config.init_from:
        params, step = checkpointing.restore_params(
            config.init_from,
            state.params,
            partial=True,
            skip=tuple(config.get("init_skip", ())),
        )
        # Separate buffers: the step donates both trees.
        state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
        data_state, source = None, f"initialised from {config.init_from} (step {step})"
    else:
        data_state, source = None, "from scratch"
    if starts and config.text.get("pretrained"):
        state = pretrained.with_pretrained_text(state, config)
        source += f", text encoder from {config.text.pretrained} (frozen)"
    if data_state is not None:
        data_iter.set_state(_batch_position(data_state, int(state.step)))
    logging.info("Training %s.", source)
    return state


def _batch_position(data_state: dict, step: int) -> dict:
    """A checkpoint's iterator state, which counts batches: one per step.

    Checkpoints written before the global-batch pipeline
    (`pipeline.train_dataset`) counted the elements of a per-host shard; they
    restore at batch `step` of the new stream, with a warning.
    """
    if data_state.get("next_index", step) == step:
        return data_state
    logging.warning(
        "The checkpoint's data iterator state (next_index %s) is not at step %d "
        "(written by an older pipeline that counted examples): the data "
        "continues at batch %d.",
        data_state["next_index"],
        step,
        step,
    )
    return {**data_state, "next_index": step}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, raise_on_preemption=False
) -> TrainState:
    """Trains per `config`, checkpointing, logging and sampling into `workdir`.

    A preemption saves a checkpoint and returns the state (`launch.train`
    exits 0, to be run again), or with `raise_on_preemption` raises
    `Preempted`, so that a caller going on to other work (`launch.table`)
    stops instead of taking the unfinished model for a trained one. Either
    way a preempted run leaves `preemption.MARKER` in `workdir` and a finished one
    removes it.
    """
    config = pretrained.resolve(config)
    config_utils.validate(config)
    if jax.process_index() == 0:  # one writer of the shared file
        checkpointing.save_config(workdir, config)
    built, state = setup(config)
    _warn_cut_texts(config, built.tokenizer)
    data_iter = iter(
        pipeline.train_dataset(
            config,
            built.tokenizer,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    mngr = checkpointing.manager(
        os.path.join(workdir, "checkpoints"), config.train.keep_checkpoints
    )
    state = restore_or_init(config, workdir, state, mngr, data_iter)
    loop = _Loop(config, workdir, built.model, built.tokenizer, mngr, built.lr_fn)
    with built.mesh, nn.logical_axis_rules(built.rules):
        state = loop.run(state, data_iter, built.step_fn, built.batch_sharding)
    stopped = Preempted(int(state.step), loop.preempted) if loop.preempted else None
    if jax.process_index() == 0:  # one writer of the shared file
        preemption.mark(workdir, str(stopped) if stopped else None)
    if raise_on_preemption and stopped is not None:
        raise stopped
    return state


def _warn_cut_texts(config: ml_collections.ConfigDict, tokenizer) -> None:
    """Says on the console when `data.max_text_len` cuts training texts
    (`pipeline.cut_texts`): the tokenizer itself cuts them silently."""
    cut, read, longest = pipeline.cut_texts(config, tokenizer)
    if cut:
        _say(
            f"warning: data.max_text_len={config.data.max_text_len} cuts {cut} of "
            f"the first {read} training texts (the longest is {longest} tokens "
            "with EOS); raise it to keep them whole"
        )


def budget_horizon(step: int, steps_per_s: float, seconds_left: float, num_steps: int):
    """The last step a time budget reaches at the measured rate (<= num_steps)."""
    return min(num_steps, step + max(int(steps_per_s * seconds_left), 1))


def _rate(step: int, first: int, start: float) -> float:
    """Steps/s since `start` (the end of the run's first, compiling, step)."""
    return (step - first - 1) / max(time.time() - start, 1e-9)


def _say(line: str) -> None:
    """Prints a progress line in one write, so log lines from other threads
    (the metric writer, checkpointing) cannot land in the middle of it; on
    process 0 only, so a multi-host job prints each line once."""
    if jax.process_index() == 0:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _Loop:
    """The host-side loop: metrics, progress, sample grids, checkpoints."""

    def __init__(self, config, workdir, model, tokenizer, mngr, lr_fn):
        self.config, self.workdir, self.mngr, self.lr_fn = config, workdir, mngr, lr_fn
        self.num_steps = config.train.num_steps
        self.writer = metric_writers.create_default_writer(
            workdir, just_logging=jax.process_index() > 0
        )
        # No step total: a time budget moves the horizon, and clu's ETA would
        # keep counting to `num_steps`; the progress lines carry the real ETA.
        self.progress = periodic_actions.ReportProgress(writer=self.writer)
        self.model, self.tokenizer = model, tokenizer
        self._generate = None

    def run(self, state, data_iter, step_fn, batch_sharding):
        """Trains to the schedule's horizon, the time budget or a preemption.

        The horizon is `config.train.num_steps` unless a time budget moved it:
        with a budget and a decaying LR, every `log_every` steps the rate so
        far says where the budget will end, and the schedule's horizon (in the
        optimizer state, so no recompilation, and kept by checkpoints) moves
        there, so the run anneals whatever the machine's speed.

        A preemption (SIGTERM, or JAX's multi-host notice; `preemption.Notice`)
        or the end of the budget stops the run after the step under way, with
        a checkpoint of that step and of the data iterator, as a periodic save.
        """
        t = self.config.train
        first = step = int(state.step)
        start = t0 = time.time()
        adapt = bool(t.time_budget_minutes) and self.config.optim.decay != "constant"
        planned = int(optax.tree_utils.tree_get(state.opt_state, "planned"))
        if planned != t.num_steps:  # resumed with another plan: start from it
            opt_state = optim.set_horizon(state.opt_state, t.num_steps, replan=True)
            state = state.replace(opt_state=opt_state)
        self.num_steps = optim.get_horizon(state.opt_state)
        if self.num_steps != t.num_steps and not adapt:
            _say(
                f"the LR schedule ends at step {self.num_steps}, where an earlier "
                f"time budget moved it, not at train.num_steps={t.num_steps}: "
                f"pass another train.num_steps to plan the run anew"
            )
        pending, stop, self.preempted = [], None, None
        with preemption.Notice(self.mngr) as notice:
            while step < self.num_steps and stop is None:
                batch = sharding.global_batch(next(data_iter), batch_sharding)
                state, metrics = step_fn(state, batch)
                step += 1
                if pending:  # the previous step is done by now: no pipeline stall
                    self._check_finite(pending[-1], step - 1)
                if step == first + 1:  # rates exclude compilation
                    jax.block_until_ready(metrics)
                    start = time.time()
                if adapt and step > first + 1 and step % t.log_every == 0:
                    state = self._fit_budget(state, step, first, start, t0)
                self.progress(step)
                pending.append(metrics)
                stop = self._stop_reason(step, t0, notice)
                last = step == self.num_steps or stop is not None
                if step % t.log_every == 0 or last:
                    self._log(step, pending, start, first)
                    pending = []
                if step % t.sample_every == 0:
                    self.write_samples(state, step)
                if step % t.checkpoint_every == 0 or last:
                    self._check_finite(metrics, step)
                    checkpointing.save(self.mngr, step, state, data_iter.get_state())
            self.mngr.wait_until_finished()
            self.writer.flush()
        if stop:
            _say(f"{stop} at step {step}: saved {self.mngr.directory}/{step}")
        return state

    def _stop_reason(
        self, step: int, t0: float, notice: preemption.Notice
    ) -> str | None:
        """Why the run stops after `step`, or None. Asks `notice` every step, as
        JAX's multi-host preemption sync requires."""
        if notice.reached(step):
            self.preempted = f"preempted ({notice.reason()})"
            return self.preempted
        budget = self.config.train.time_budget_minutes
        if budget and time.time() - t0 > budget * 60.0:
            return f"time budget of {budget} min reached"
        return None

    def _fit_budget(self, state, step, first, start, t0):
        rate = _rate(step, first, start)
        left = self.config.train.time_budget_minutes * 60.0 - (time.time() - t0)
        horizon = budget_horizon(step, rate, left, self.config.train.num_steps)
        # Every host must move to the same horizon at the same step.
        horizon = int(multihost_utils.broadcast_one_to_all(np.int32(horizon)))
        if horizon == self.num_steps:
            return state
        if self.num_steps == self.config.train.num_steps:
            _say(
                f"{self.num_steps} steps do not fit the "
                f"{self.config.train.time_budget_minutes} min budget at {rate:.2f} "
                f"steps/s: the LR schedule now ends at step {horizon} (re-estimated "
                f"every {self.config.train.log_every} steps)"
            )
        self.num_steps = horizon
        return state.replace(opt_state=optim.set_horizon(state.opt_state, horizon))

    def _check_finite(self, metrics, step):
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss {loss} at step {step}; stopped without saving it. "
                f"The last checkpoint in {self.workdir}/checkpoints is intact."
            )

    def _log(self, step, pending, start, first):
        metrics = jax.device_get(pending)
        mean = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        mean["lr"] = float(self.lr_fn(step, self.num_steps))
        mean["lr_horizon"] = float(self.num_steps)
        self.writer.write_scalars(step, mean)
        rate = _rate(step, first, start)
        eta = (self.num_steps - step) / max(rate, 1e-9)
        _say(
            f"step {step}/{self.num_steps}  loss {mean['loss']:.4f}  "
            f"{rate:.2f} steps/s  {rate * self.config.data.batch_size:.1f} img/s  "
            f"ETA {eta / 60:.1f} min"
        )

    def write_samples(self, state, step):
        from imagen_jax.data import shapes_world
        from imagen_jax.evaluation import grids

        s = self.config.sample
        prompts = [
            p["caption"]
            for p in shapes_world.eval_prompts(
                s.num_images, seed=0, resolution=self.config.data.resolution
            )
        ]
        if self._generate is None:
            self._generate = sampling.make_generate_fn(self.model, self.config)
        batch = sampling.prompt_batch(
            prompts, self.tokenizer, self.config, self.model.conditioning
        )
        images = self._generate(
            state.ema_params, batch, jax.random.PRNGKey(step), s.steps, s.guidance
        )
        self.writer.write_images(step, {"samples": sampling.to_uint8(images)[:8]})
        if jax.process_index() == 0:  # every host samples; one writes the grid
            path = grids.save_grid(
                sampling.to_uint8(images),
                os.path.join(self.workdir, "samples", f"step_{step}.png"),
            )
            logging.info("Wrote samples to %s", path)
