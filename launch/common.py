"""What every entry point shares: multi-host start-up and one-line errors."""

from __future__ import annotations

import logging as pylogging
import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from imagen_jax import xla_flags  # noqa: E402

# Before JAX starts its backend (XLA reads XLA_FLAGS once, then); a no-op
# unless that backend will be the CPU (xla_flags.backend_is_cpu).
xla_flags.apply_defaults()

flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (TPU pods and SLURM find their peers; "
    "elsewhere pass the three flags below).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool(
    "library_logs",
    False,
    "Show the INFO lines of jax, orbax, clu and grain too (warnings and errors "
    "are always shown).",
)

FLAGS = flags.FLAGS

# Errors that mean the user asked for something wrong: one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError)


_OWN_CODE = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
    for d in ("imagen_jax", "launch", "experiments")
)


class _OwnInfo(pylogging.Filter):
    """Keeps INFO lines from this project's code and warnings from anyone."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or record.pathname.startswith(
            _OWN_CODE
        )


def quiet_libraries() -> None:
    """The console shows progress and figures, not the libraries' INFO lines."""
    if not FLAGS.library_logs:
        logging.get_absl_handler().addFilter(_OwnInfo())


def initialize() -> None:
    """Starts multi-host JAX when asked and logs the process/device counts."""
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    logging.info(
        "process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )


def dangling_link(path: str) -> str | None:
    """The first component of `path` that is a symbolic link to nothing
    ("data" -> a directory since deleted), as "LINK -> TARGET"; None if none."""
    parts = os.path.normpath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        head = os.sep.join(parts[:i]) or os.sep
        if os.path.islink(head) and not os.path.exists(head):
            return f"{head} -> {os.readlink(head)}"
    return None


def run_main(fn: Callable[[], None]) -> None:
    """Runs `fn`; a user error exits with status 2 and one line naming it."""
    try:
        fn()
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        link = isinstance(e, FileNotFoundError) and dangling_link(e.filename or "")
        if link:  # mkdir's "No such file" does not say which part is missing
            msg += f" ({link} points to nothing)"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def main(fn: Callable[[], None], distributed: bool = True) -> Callable[[list], None]:
    """An absl `main` running `fn` after `initialize()` (unless not distributed)."""

    def absl_main(argv: list) -> None:
        del argv
        quiet_libraries()
        if distributed:
            initialize()
        run_main(fn)

    return absl_main


def _flag_message(error: Exception, argv: list[str]) -> str:
    """One line for a flag that did not parse, naming the argument at fault."""
    while error.args and isinstance(error.args[0], Exception):  # wrapped errors
        error = error.args[0]
    text = str(error.args[0]) if error.args else type(error).__name__
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if isinstance(error, (AttributeError, KeyError)):  # ml_collections: no field
        field = lines[0].strip("'\"")
        culprit = next(
            (a for a in argv if a.startswith("--config.") and field in a.split("=")[0]),
            None,
        )
        where = f" ({culprit})" if culprit else ""
        hint = f"; {lines[1][0].lower()}{lines[1][1:]}" if len(lines) > 1 else ""
        return f"the config has no field {field!r}{where}{hint}"
    return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, a bad flag or config override ending in one line."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {_flag_message(e, argv)}", file=sys.stderr)
        sys.exit(2)


def run(fn: Callable[[], None], distributed: bool = True) -> None:
    """`app.run` of `fn` (see `main`), bad flags answered in one line."""
    app.run(main(fn, distributed), flags_parser=parse_flags)
