"""Runs a command as N JAX processes on this machine, as a pod runs it.

    python -m launch.local --num_processes 2 --devices_per_process 2 -- \\
        python -m launch.train --config experiments/t2i_shapes.py:smoke --workdir DIR

Process i gets the coordinator flags of `launch/common.py` appended to the
command (`--coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=i`), K fake CPU devices (`--xla_force_host_platform_device_count=K`
in `XLA_FLAGS`) and gloo collectives, so the processes form one JAX job of N*K
devices, as the workers of a pod do. Each line of their output is prefixed
with `[i] `. SIGINT and SIGTERM are passed on to every process; when one
fails the others are stopped (a lone survivor would wait for its peers in a
collective forever) and the launcher exits with the failure's status.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import BinaryIO

from absl import app, flags

flags.DEFINE_integer("num_processes", 2, "Processes to start.", lower_bound=1)
flags.DEFINE_integer(
    "devices_per_process", 1, "Fake CPU devices of each process.", lower_bound=1
)
flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1; 0 picks a free one.")
flags.DEFINE_float(
    "grace_seconds",
    30.0,
    "After a process fails, how long the others may take to stop on SIGTERM "
    "before they are killed.",
)
flags.DEFINE_bool("dry_run", False, "Print each process's command; start nothing.")
FLAGS = flags.FLAGS

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict[str, str], devices: int) -> dict[str, str]:
    """`base` with CPU JAX, `devices` fake devices and gloo collectives.

    Any device count already in `XLA_FLAGS` (the tests set 8) is replaced.
    """
    kept = [t for t in base.get("XLA_FLAGS", "").split() if DEVICE_COUNT_FLAG not in t]
    return {
        **base,
        "XLA_FLAGS": " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"]),
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "PYTHONUNBUFFERED": "1",  # lines arrive while they are written
    }


def process_command(
    command: Sequence[str], index: int, num: int, port: int
) -> list[str]:
    """`command` with the coordinator flags of process `index` of `num`."""
    return [
        *command,
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={num}",
        f"--process_id={index}",
    ]


def _exit_status(returncode: int) -> int:
    """A shell's status for a child's return code (signals: 128 + number)."""
    return 128 - returncode if returncode < 0 else returncode


class _Pumps:
    """Copies the children's output to ours, each line prefixed `[i] `."""

    def __init__(self):
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, index: int, source: BinaryIO, sink: BinaryIO) -> None:
        thread = threading.Thread(
            target=self._copy, args=(f"[{index}] ".encode(), source, sink)
        )
        thread.start()
        self._threads.append(thread)

    def _copy(self, prefix: bytes, source: BinaryIO, sink: BinaryIO) -> None:
        for line in iter(source.readline, b""):
            with self._lock:
                sink.write(prefix + line)
                sink.flush()
        source.close()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def _signal(procs: list[subprocess.Popen], signum: int) -> None:
    """Sends `signum` to the running processes and whatever they started (each
    leads a process group), as a terminal sends Ctrl-C."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signum)
            except ProcessLookupError:  # ended meanwhile
                pass


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to the running processes, SIGKILL to those alive after `grace`."""
    _signal(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _signal([p], signal.SIGKILL)
            p.wait()


def launch(
    command: Sequence[str],
    num_processes: int,
    devices_per_process: int,
    port: int = 0,
    grace_seconds: float = 30.0,
) -> int:
    """Runs `command` as `num_processes` processes; returns the exit status.

    0 when every process succeeded, else the status of the first to fail
    (the others stopped). A signal received is passed on and the processes'
    own statuses decide.
    """
    port = port or free_port()
    env = process_env(dict(os.environ), devices_per_process)
    pumps, procs = _Pumps(), []

    def forward(signum, frame):
        del frame
        _signal(procs, signum)

    # Installed first: a signal while the processes start reaches those started.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(num_processes):
            procs.append(_start(process_command(command, i, num_processes, port), env))
            pumps.start(i, procs[-1].stdout, sys.stdout.buffer)
            pumps.start(i, procs[-1].stderr, sys.stderr.buffer)
        return _wait(procs, grace_seconds)
    except OSError as e:  # e.g. no such program: stop the processes started
        _stop(procs, grace_seconds)
        raise ValueError(f"cannot start {command[0]!r}: {e.strerror}") from e
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        pumps.join()


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    # A session of its own: a terminal's Ctrl-C reaches it once, from us
    # (`_signal`).
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _wait(procs: list[subprocess.Popen], grace: float) -> int:
    """Waits for all processes; on the first failure stops the rest."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            index, code = failed[0]
            if None in codes:
                print(
                    f"launch.local: process {index} exited with status "
                    f"{_exit_status(code)}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                _stop(procs, grace)
            return _exit_status(code)
        if None not in codes:
            return 0
        time.sleep(0.1)


def dry_run(
    command: Sequence[str], num_processes: int, devices: int, port: int
) -> None:
    """Prints each process's environment changes and command, one per line."""
    env = process_env({}, devices)
    del env["PYTHONUNBUFFERED"]
    settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    port = port or free_port()
    for i in range(num_processes):
        cmd = shlex.join(process_command(command, i, num_processes, port))
        print(f"[{i}] {settings} {cmd}")


def _main(command: list[str]) -> int:
    if not command:
        raise ValueError(
            "no command: put it after `--`, e.g. "
            "`python -m launch.local --num_processes 2 -- python -m launch.train ...`"
        )
    if FLAGS.dry_run:
        dry_run(command, FLAGS.num_processes, FLAGS.devices_per_process, FLAGS.port)
        return 0
    return launch(
        command,
        FLAGS.num_processes,
        FLAGS.devices_per_process,
        FLAGS.port,
        FLAGS.grace_seconds,
    )


def main(argv: list[str]) -> None:
    # One line and status 2 for a user error, as `launch.common.run_main` (not
    # imported: its flags would clash with these).
    try:
        status = _main(argv[1:])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    app.run(main)
