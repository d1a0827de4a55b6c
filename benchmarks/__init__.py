"""Benchmarks and diagnostics: commands that print and record figures."""

import json


def emit(record: dict, out: str | None) -> None:
    """Prints `record` as one JSON line and, given `out`, writes it there."""
    print(json.dumps(record), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
