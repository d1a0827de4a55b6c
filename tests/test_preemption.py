"""Preemption: SIGTERM (or JAX's multi-host notice) -> a checkpoint at the next
step boundary -> exit 0; the resumed run sees the batches and gives the losses
an uninterrupted run does. A damaged latest checkpoint falls back to the one
before it, still with the same losses."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

from experiments import t2i_shapes
from imagen_jax import checkpointing, optim, preemption, train, train_state
from tests.child_env import child_env
from tests.test_checkpoint_integrity import _damage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `launch.train` runs: SIGTERM once step SIGTERM_AFTER is logged, between the
# periodic saves at CHECKPOINT_EVERY.
NUM_STEPS, CHECKPOINT_EVERY, SIGTERM_AFTER = 20, 5, 7


# The loop in-process, around a stand-in step: the control flow, no model.


class _Batches:
    """Batch i holds i; `on_next(i)` runs as batch i is drawn."""

    def __init__(self, on_next=lambda index: None):
        self.index, self.on_next = 0, on_next

    def __next__(self):
        self.index += 1
        self.on_next(self.index)
        return {"x": np.full((8,), self.index, np.float32)}

    def get_state(self):
        return {"next_index": self.index}


def _step(state, batch):
    loss = jnp.mean(batch["x"])
    params = {"w": state.params["w"] + loss}
    return state.replace(step=state.step + 1, params=params), {"loss": loss}


def _run_loop(tmp_path, data_iter, num_steps=10, checkpoint_every=5):
    cfg = t2i_shapes.get_config("smoke")
    cfg.train.num_steps, cfg.train.checkpoint_every = num_steps, checkpoint_every
    cfg.train.log_every, cfg.train.sample_every = 1, 10**6
    tx, lr_fn = optim.build_optimizer(cfg)
    params = {"w": jnp.zeros((8,))}
    state = train_state.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=tx.init(params),
    )
    mngr = checkpointing.manager(str(tmp_path / "checkpoints"))
    loop = train._Loop(cfg, str(tmp_path), None, None, mngr, lr_fn)
    mesh = jax.make_mesh((8,), ("data",))
    state = loop.run(
        state, data_iter, jax.jit(_step), NamedSharding(mesh, PartitionSpec("data"))
    )
    return state, mngr, loop


def test_sigterm_saves_the_step_under_way_and_returns(tmp_path, capsys):
    later = []

    def callers_handler(signum, frame):
        later.append(signum)

    def sigterm(index):
        if index == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            assert not later  # the loop caught the first one ...
            os.kill(os.getpid(), signal.SIGTERM)
            assert later == [signal.SIGTERM]  # ... and left the next to its caller

    original = signal.signal(signal.SIGTERM, callers_handler)
    try:
        state, mngr, loop = _run_loop(tmp_path, _Batches(sigterm))
        assert signal.getsignal(signal.SIGTERM) is callers_handler
    finally:
        signal.signal(signal.SIGTERM, original)
    # Step 3 (drawn when the signal came) finished and was saved; no more.
    assert int(state.step) == 3 and mngr.all_steps() == [3]
    restored, data_state = checkpointing.restore(mngr, state)
    assert int(restored.step) == 3 and data_state == {"next_index": 3}
    np.testing.assert_array_equal(restored.params["w"], 1.0 + 2.0 + 3.0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"preempted (SIGTERM) at step 3: saved {tmp_path}/checkpoints/3"
    assert loop.preempted == "preempted (SIGTERM)"  # `train_and_evaluate` reads it


def test_no_signal_runs_to_the_end_and_leaves_the_handler(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    handlers = []
    state, mngr, loop = _run_loop(
        tmp_path, _Batches(lambda i: handlers.append(signal.getsignal(signal.SIGTERM)))
    )
    assert int(state.step) == 10 and mngr.all_steps() == [5, 10]
    assert "preempted" not in capsys.readouterr().out
    assert loop.preempted is None
    assert handlers[0] is not before  # caught while training ...
    assert signal.getsignal(signal.SIGTERM) is before  # ... and only then


def test_multi_host_stops_at_the_sync_point_without_a_python_handler(
    tmp_path, capsys, monkeypatch
):
    # Under jax.distributed, JAX's preemption service owns SIGTERM and names
    # one step for every host: orbax's `reached_preemption` asks it.
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    asked = []

    def reached(step):
        asked.append(step)
        return step == 4

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", reached)
    before = signal.getsignal(signal.SIGTERM)
    handlers = []
    state, mngr, loop = _run_loop(
        tmp_path, _Batches(lambda i: handlers.append(signal.getsignal(signal.SIGTERM)))
    )
    # Every step, as the sync protocol requires (orbax's save asks too).
    assert sorted(set(asked)) == [1, 2, 3, 4]
    assert int(state.step) == 4 and mngr.all_steps() == [4]
    assert all(h is before for h in handlers)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (
        "preempted (JAX preemption sync point, every host) at step 4: "
        f"saved {tmp_path}/checkpoints/4"
    )
    assert loop.preempted == "preempted (JAX preemption sync point, every host)"


# `launch.train` as a user runs it, SIGTERM from outside.


def _train(
    workdir: str,
    smoke_world: str,
    *flags: str,
    num_steps: int = NUM_STEPS,
    env: dict | None = None,
    **popen,
) -> subprocess.Popen:
    """`launch.train` of the smoke config; `flags` and `env` add to the
    defaults."""
    env = child_env(**(env or {}))  # one CPU device, as a user's first run
    args = [
        "--config=experiments/t2i_shapes.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={smoke_world}",
        f"--config.train.num_steps={num_steps}",
        f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
        "--config.train.log_every=1",
        "--config.train.sample_every=1000000",
        *flags,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "launch.train", *args],
        cwd=ROOT,
        env=env,
        text=True,
        **popen,
    )


def _run_to_end(workdir: str, smoke_world: str) -> str:
    """Trains (or resumes) in `workdir` to NUM_STEPS; returns stderr."""
    proc = _train(workdir, smoke_world, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"step {NUM_STEPS}/{NUM_STEPS}" in out, out
    return err


def _losses(workdir: str) -> dict[int, list[float]]:
    """Every loss in the workdir's TensorBoard events, by step (a step run
    twice, after a fallback to an older checkpoint, has two)."""
    losses = {}
    for name in sorted(os.listdir(workdir)):
        if not name.startswith("events.out.tfevents"):
            continue
        loader = event_file_loader.EventFileLoader(os.path.join(workdir, name))
        for event in loader.Load():
            for value in event.summary.value:
                if value.tag == "loss":
                    loss = float(tensor_util.make_ndarray(value.tensor))
                    losses.setdefault(event.step, []).append(loss)
    return losses


@pytest.fixture(scope="module")
def uninterrupted(smoke_world, tmp_path_factory) -> dict[int, float]:
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _run_to_end(workdir, smoke_world)
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    assert all(len(values) == 1 for values in losses.values())
    return {step: values[0] for step, values in losses.items()}


@pytest.fixture(scope="module")
def preempted(smoke_world, tmp_path_factory) -> tuple[str, int]:
    """A run sent SIGTERM once it logged step SIGTERM_AFTER: (workdir, the
    step it saved)."""
    workdir = str(tmp_path_factory.mktemp("preempted"))
    with open(os.path.join(workdir, "stderr.txt"), "w") as stderr:
        proc = _train(workdir, smoke_world, stdout=subprocess.PIPE, stderr=stderr)
        guard = threading.Timer(600, proc.kill)
        guard.start()
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"step {SIGTERM_AFTER}/"):
                proc.send_signal(signal.SIGTERM)
        proc.wait()
        guard.cancel()
    with open(os.path.join(workdir, "stderr.txt")) as f:
        err = f.read()
    assert proc.returncode == 0, "".join(lines)[-2000:] + err[-3000:]
    last = lines[-1].strip()
    match = re.fullmatch(r"preempted \(SIGTERM\) at step (\d+): saved (\S+)", last)
    assert match, lines[-5:]
    step = int(match[1])
    assert match[2] == os.path.join(workdir, "checkpoints", str(step))
    assert SIGTERM_AFTER <= step < NUM_STEPS
    return workdir, step


def _periodic_before(step: int) -> int:
    return (step - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY


def test_sigterm_saves_model_and_data_state_at_the_step_reached(preempted):
    workdir, step = preempted
    ckpt_dir = os.path.join(workdir, "checkpoints")
    # The last periodic save before it, and the step reached (keep 2).
    before = _periodic_before(step)
    assert checkpointing.manager(ckpt_dir).all_steps() == [before, step]
    # Finalised like any save: checksummed, with the iterator state beside the
    # model.
    step_dir = os.path.join(ckpt_dir, str(step))
    assert os.path.exists(os.path.join(step_dir, checkpointing.CHECKSUMS))
    checkpointing.verify(step_dir)
    assert os.listdir(os.path.join(step_dir, "data"))
    logged = _losses(workdir)
    assert sorted(logged) == list(range(1, step + 1))
    # Marked unfinished, for whoever takes the run's checkpoint (launch.table).
    with open(os.path.join(workdir, preemption.MARKER)) as f:
        assert f.read() == f"preempted (SIGTERM) at step {step}\n"


def test_resumed_run_has_the_losses_of_an_uninterrupted_one(
    preempted, uninterrupted, smoke_world, tmp_path
):
    workdir = str(tmp_path / "run")
    shutil.copytree(preempted[0], workdir)
    assert os.path.exists(os.path.join(workdir, preemption.MARKER))
    err = _run_to_end(workdir, smoke_world)
    assert f"Training resumed {workdir} at step {preempted[1]}." in err
    assert not os.path.exists(os.path.join(workdir, preemption.MARKER))  # finished
    # Exactly: the same batches, in the same order, to the same weights.
    assert _losses(workdir) == {s: [loss] for s, loss in uninterrupted.items()}


def test_damaged_latest_checkpoint_falls_back_to_the_one_before(
    preempted, uninterrupted, smoke_world, tmp_path
):
    workdir = str(tmp_path / "run")
    shutil.copytree(preempted[0], workdir)
    step = preempted[1]
    damaged = os.path.join(workdir, "checkpoints", str(step))
    name = _damage(damaged)
    previous = _periodic_before(step)
    err = _run_to_end(workdir, smoke_world)
    # One line naming the damaged step, its file and the step resumed from.
    (line,) = [x for x in err.splitlines() if "is damaged" in x]
    assert f"checkpoint {damaged} is damaged: {name} does not match" in line
    assert line.endswith(f"moved to {damaged}.damaged, resuming from step {previous}")
    # Steps after `previous` ran twice (before and after the fallback): every
    # loss of both runs is the uninterrupted run's.
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    for s, values in losses.items():
        assert values == [uninterrupted[s]] * (2 if previous < s <= step else 1), s


@pytest.mark.slow  # two processes training on two cores: about two minutes
def test_sigterm_to_one_host_stops_every_host_at_one_step(smoke_world, tmp_path):
    # Two processes on loopback (gloo collectives), as two hosts of a pod;
    # only process 1 is told to go, through JAX's preemption service.
    workdir, num_steps = str(tmp_path / "run"), 200
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    logs = [tmp_path / f"stderr{i}.txt" for i in range(2)]
    with contextlib.ExitStack() as stack:
        procs = [
            _train(
                workdir,
                smoke_world,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                num_steps=num_steps,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stack.enter_context(open(logs[i], "w")),
            )
            for i in range(2)
        ]
        guard = threading.Timer(600, lambda: [p.kill() for p in procs])
        guard.start()
        # Progress lines come from process 0 only; the signal goes to 1.
        lines0, lines1 = [], []
        reader = threading.Thread(target=lambda: lines1.extend(procs[1].stdout))
        reader.start()
        for line in procs[0].stdout:
            lines0.append(line)
            if line.startswith(f"step {SIGTERM_AFTER}/"):
                procs[1].send_signal(signal.SIGTERM)
        reader.join()
        codes = [p.wait() for p in procs]
        guard.cancel()
    errors = [log.read_text()[-2000:] for log in logs]
    assert codes == [0, 0], (lines0[-5:], lines1[-5:], errors)
    assert not [line for line in lines1 if line.startswith(("step ", "preempted"))]
    match = re.fullmatch(
        r"preempted \(JAX preemption sync point, every host\) at step (\d+): "
        r"saved (\S+)",
        lines0[-1].strip(),
    )
    assert match, lines0[-5:]
    step = int(match[1])
    assert SIGTERM_AFTER <= step < num_steps
    assert (
        checkpointing.manager(os.path.join(workdir, "checkpoints")).all_steps()[-1]
        == step
    )
