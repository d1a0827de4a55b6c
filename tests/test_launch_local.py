"""launch.local: N JAX processes on this machine, joined as the workers of a pod."""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    # The tests' 8 devices stay in XLA_FLAGS: the launcher must replace them.
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _local(*args, command, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "launch.local", *args, "--", *command],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _python(code):
    """A child command: `code` run by this Python (`sys.argv[1:]`: the flags)."""
    return [sys.executable, "-c", code]


def test_each_process_gets_its_flags_devices_and_prefix():
    code = (
        "import os, sys; "
        "print(' '.join(sys.argv[1:]), os.environ['XLA_FLAGS'], "
        "os.environ['JAX_CPU_COLLECTIVES_IMPLEMENTATION'], sep='|')"
    )
    out = _local("--num_processes=3", "--devices_per_process=2", command=_python(code))
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.splitlines())
    assert len(lines) == 3
    ports = set()
    for i, line in enumerate(lines):
        flags, xla_flags, collectives = line.split("|")
        prefix, address, num, pid = flags.split(" ")
        assert prefix == f"[{i}]"
        assert address.startswith("--coordinator_address=127.0.0.1:")
        ports.add(address)
        assert (num, pid) == ("--num_processes=3", f"--process_id={i}")
        # The 8 devices of the tests' XLA_FLAGS are replaced, the rest kept.
        given = os.environ["XLA_FLAGS"].split()
        assert xla_flags.split() == [
            *[f for f in given if "device_count" not in f],
            "--xla_force_host_platform_device_count=2",
        ]
        assert collectives == "gloo"
    assert len(ports) == 1  # one coordinator for all


def test_dry_run_prints_the_commands_and_starts_nothing(tmp_path):
    marker = tmp_path / "started"
    command = _python(f"open({str(marker)!r}, 'w')")
    out = _local("--num_processes=2", "--port=1234", "--dry_run", command=command)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert line.startswith(
            f"[{i}] XLA_FLAGS=--xla_force_host_platform_device_count=1"
        )
        assert line.endswith(
            f"--coordinator_address=127.0.0.1:1234 --num_processes=2 --process_id={i}"
        )


def test_a_failure_stops_the_others_and_is_the_exit_status():
    # Process 1 fails at once; process 0 would wait for it for a minute.
    code = (
        "import sys, time; "
        "sys.exit(3) if sys.argv[-1] == '--process_id=1' else time.sleep(60)"
    )
    start = time.time()
    out = _local("--num_processes=2", "--grace_seconds=5", command=_python(code))
    assert out.returncode == 3
    assert time.time() - start < 30
    assert "process 1 exited with status 3; stopping the others" in out.stderr


def test_no_command_is_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "launch.local", "--num_processes=2"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: no command") and out.stderr.count("\n") == 1


def _lines(stream) -> queue.Queue:
    """The lines of `stream`, read by a thread (None at its end)."""
    lines = queue.Queue()

    def read():
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_sigterm_and_sigint_are_passed_on():
    code = (
        "import signal, sys, time\n"
        "def stop(signum, frame):\n"
        "    print('got', signum, flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch.local", "--num_processes=2", "--"]
            + _python(code),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        lines = _lines(proc.stdout)
        try:
            ready = [lines.get(timeout=60), lines.get(timeout=60)]
            assert sorted(ready) == ["[0] ready\n", "[1] ready\n"]
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 0  # the processes' own status
        finally:
            proc.kill()
            proc.wait()
        rest = [lines.get(timeout=10) for _ in range(3)]
        assert sorted(rest[:2]) == [f"[0] got {sig}\n", f"[1] got {sig}\n"]
        assert rest[2] is None


def test_two_processes_form_one_jax_job():
    """Through launch/common.py's coordinator flags and gloo collectives."""
    code = (
        "import sys\n"
        "from launch import common\n"
        "common.parse_flags(sys.argv)\n"
        "common.initialize()\n"
        "import jax, jax.numpy as jnp\n"
        "from jax.experimental import multihost_utils\n"
        "x = multihost_utils.process_allgather(jnp.float32(jax.process_index()))\n"
        # stderr: gloo's C++ writes to stdout may split a line printed there.
        "print('got', jax.process_count(), jax.device_count(), x.tolist(), "
        "file=sys.stderr)\n"
    )
    out = _local("--num_processes=2", "--devices_per_process=2", command=_python(code))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = sorted(line for line in out.stderr.splitlines() if " got " in line)
    assert lines == ["[0] got 2 4 [0.0, 1.0]", "[1] got 2 4 [0.0, 1.0]"]


def _train(workdir, smoke_world, processes, devices):
    """The smoke config's 6 steps (checkpoints at 3 and 6) on processes x devices."""
    return _local(
        f"--num_processes={processes}",
        f"--devices_per_process={devices}",
        command=[
            sys.executable,
            "-m",
            "launch.train",
            "--config",
            "experiments/t2i_shapes.py:smoke",
            "--workdir",
            str(workdir),
            f"--config.data.data_dir={smoke_world}",
            # Batch over the processes, parameters sharded within each.
            "--config.mesh.shape=(2,2,1)",
            "--config.train.log_every=1",
        ],
        timeout=900,
    )


def _losses(workdir) -> dict[int, float]:
    """The loss of every step in the run's TensorBoard file (there must be one)."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    (events,) = [f for f in os.listdir(workdir) if f.startswith("events.out.")]
    loader = event_file_loader.EventFileLoader(os.path.join(workdir, events))
    return {
        event.step: float(tensor_util.make_ndarray(value.tensor))
        for event in loader.Load()
        for value in event.summary.value
        if value.tag == "loss"
    }


@pytest.fixture(scope="module")
def two_then_one(smoke_world, tmp_path_factory):
    """Must-show 1 of issue 16: 2 processes x 2 devices train 6 steps; 1
    process x 4 devices resumes their step-3 checkpoint and trains 4-6.

    Returns the two workdirs and the launcher's outputs.
    """
    two = tmp_path_factory.mktemp("two_processes")
    two_out = _train(two, smoke_world, processes=2, devices=2)
    assert two_out.returncode == 0, two_out.stderr[-3000:]
    one = tmp_path_factory.mktemp("one_process")  # the first run at step 3
    shutil.copytree(
        two / "checkpoints", one / "checkpoints", ignore=shutil.ignore_patterns("6")
    )
    shutil.copy(two / "config.json", one / "config.json")
    one_out = _train(one, smoke_world, processes=1, devices=4)
    assert one_out.returncode == 0, one_out.stderr[-3000:]
    return two, two_out, one, one_out


@pytest.mark.slow
def test_two_processes_checkpoint_and_one_process_resumes(two_then_one):
    two, two_out, one, one_out = two_then_one
    assert "[1] " in two_out.stderr and "process 1/2" in two_out.stderr
    assert sorted(os.listdir(two / "checkpoints")) == ["3", "6"]
    assert os.path.exists(two / "samples" / "step_6.png")
    # Progress lines and the sample grid come from process 0 only.
    both = two_out.stdout + two_out.stderr
    assert "[0] step 6/6" in both and "[1] step " not in both
    assert both.count("Wrote samples to") == 1
    # One TensorBoard file (`_losses` asserts it): process 0's.
    assert sorted(_losses(two)) == [1, 2, 3, 4, 5, 6]
    assert "process 0/1, 4 local / 4 global devices" in one_out.stderr
    assert f"Training resumed {one} at step 3." in one_out.stderr
    assert sorted(_losses(one)) == [4, 5, 6]


@pytest.mark.slow
def test_one_process_resumes_with_the_losses_of_two(two_then_one):
    two, _, one, _ = two_then_one
    two_losses, one_losses = _losses(two), _losses(one)
    # Bitwise equal on this machine; float32 rounding allowed elsewhere.
    np.testing.assert_allclose(
        [one_losses[s] for s in (4, 5, 6)],
        [two_losses[s] for s in (4, 5, 6)],
        rtol=1e-6,
    )
