"""Preemption: a job told to go checkpoints at the next step boundary and ends.

One process (no `jax.distributed`): SIGTERM sets a flag that the training loop
reads after every step. Multi-host: JAX's preemption service owns SIGTERM (its
notifier replaces any Python handler, so none is installed) and carries a
notice from any host to all of them; `reached_preemption_sync_point` (asked
through the orbax manager) then answers True on every host at the same step.
With that service turned off (`jax_enable_preemption_service=False`) a
multi-host job is not caught: SIGTERM ends it as it would any process.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

# Left in the workdir of a training that was preempted (it saved its
# checkpoint and will go on when run again); a training that reaches its end
# removes it. `launch.table` reads it to tell an unfinished run from a
# finished one, whatever the run's budget.
MARKER = "PREEMPTED"


def mark(workdir: str, reason: str | None) -> None:
    """Writes `reason` to the workdir's MARKER, or removes the marker (None)."""
    marker = os.path.join(workdir, MARKER)
    if reason is not None:
        os.makedirs(workdir, exist_ok=True)
        with open(marker, "w") as f:
            f.write(f"{reason}\n")
    elif os.path.exists(marker):
        os.remove(marker)


class Notice:
    """Whether the job should stop after a step; a context manager.

    Inside the `with`, a single-process job catches SIGTERM; leaving it puts
    the previous handler back. A second SIGTERM ends the job at once (the
    first one restored the previous handler), for a caller who cannot wait.
    """

    def __init__(self, mngr: ocp.CheckpointManager):
        self._mngr = mngr
        self._installed = False
        self._previous: Any = None
        self.signal: str | None = None

    def __enter__(self) -> Notice:
        # Python handlers can only be set from the main thread.
        main = threading.current_thread() is threading.main_thread()
        if main and not jax.distributed.is_initialized():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        self._uninstall()

    def _on_signal(self, signum: int, frame: Any) -> None:
        del frame
        self.signal = signal.Signals(signum).name
        self._uninstall()

    def _uninstall(self) -> None:
        if self._installed:
            # None: the handler was set outside Python; the default is the best guess.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    def reached(self, step: int) -> bool:
        """True at the step to checkpoint and stop at (the same on every host)."""
        return self.signal is not None or self._mngr.reached_preemption(step)

    def reason(self) -> str:
        """What stopped the job, for its last line."""
        return self.signal or "JAX preemption sync point, every host"
