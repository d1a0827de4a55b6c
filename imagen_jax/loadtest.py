"""Load test of the HTTP server (`launch.loadtest`).

`run_load` sends requests from concurrent clients, back to back, for a
bounded time and measures latency, throughput and the server's CPU time.
`compare` starts `launch.serve` twice on the same model, one request a call
(`--max_batch 1`) and batched, loads them in alternating rounds (so that both
share whatever else the machine runs) and reports the batching gain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from imagen_jax import machine

# ShapesWorld-style prompts, so that a demo model draws something sensible.
PROMPTS = tuple(
    f"a {size} {colour} {shape} at the {place}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square", "triangle")
    for place in ("center", "top left", "bottom right")
)


def _http(url: str, method: str, path: str, body: Any = None, timeout: float = 600):
    """-> (status, decoded JSON answer)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def health(url: str, timeout: float = 10) -> dict[str, Any]:
    status, answer = _http(url, "GET", "/health", timeout=timeout)
    if status != 200:
        raise ValueError(f"{url}/health answered {status}: {answer}")
    return answer


def _client(
    url: str,
    index: int,
    deadline: float,
    request: dict[str, Any],
    prompts: Sequence[str],
    out: list,
) -> None:
    """Sends `request`s of random prompts and seeds back to back until
    `deadline`; appends one record each."""
    rng = random.Random(index)
    num_images = request["num_images"]
    while time.monotonic() < deadline:
        body = {
            **request,
            "text": rng.choice(prompts),
            "seed": rng.randrange(2**31),
        }
        start = time.monotonic()
        try:
            status, answer = _http(url, "POST", "/generate", body)
            error = None if status == 200 else f"{status}: {answer.get('error')}"
        except (OSError, ValueError) as e:  # refused, reset, timed out, not JSON
            status, answer, error = None, {}, f"{type(e).__name__}: {e}"
        if error is None and len(answer.get("images", ())) != num_images:
            error = f"{len(answer.get('images', ()))} images, not {num_images}"
        out.append(
            {
                "seconds": time.monotonic() - start,
                "error": error,
                "batch_images": answer.get("batch", {}).get("images", 0),
            }
        )


@dataclasses.dataclass
class _Tally:
    """What one server answered in the load's rounds."""

    records: list[dict] = dataclasses.field(default_factory=list)
    wall: float = 0.0
    cpu_seconds: float = 0.0
    batches: int = 0
    rounds: list[float] = dataclasses.field(default_factory=list)  # images/s


def _load_round(
    url: str,
    clients: int,
    seconds: float,
    request: dict[str, Any],
    prompts: Sequence[str],
    tally: _Tally,
    seed: int,
) -> None:
    """`clients` threads load `url` for `seconds`; adds what happened to `tally`."""
    before = health(url)
    records: list[dict] = []
    start = time.monotonic()
    threads = [
        threading.Thread(
            target=_client,
            args=(url, seed + i, start + seconds, request, prompts, records),
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    after = health(url)
    tally.records += records
    tally.wall += wall
    tally.cpu_seconds += after["cpu_seconds"] - before["cpu_seconds"]
    tally.batches += after["batches_served"] - before["batches_served"]
    done = sum(r["error"] is None for r in records)
    tally.rounds.append(round(done * request["num_images"] / wall, 3))


def _figures(tally: _Tally, num_images: int) -> dict[str, Any]:
    ok = [r for r in tally.records if r["error"] is None]
    latency = np.array([r["seconds"] for r in ok]) if ok else np.zeros(1)
    errors = sorted({r["error"] for r in tally.records if r["error"] is not None})
    return {
        "requests": len(tally.records),
        "failed": len(tally.records) - len(ok),
        "errors": errors[:5],
        "images": len(ok) * num_images,
        "wall_seconds": round(tally.wall, 2),
        "images_per_s": round(len(ok) * num_images / tally.wall, 3),
        "images_per_s_by_round": tally.rounds,
        "latency_s": {
            "p50": round(float(np.percentile(latency, 50)), 3),
            "p95": round(float(np.percentile(latency, 95)), 3),
            "mean": round(float(latency.mean()), 3),
        },
        "mean_batch_images": round(
            float(np.mean([r["batch_images"] for r in ok])) if ok else 0.0, 2
        ),
        "server_batches": tally.batches,
        "server_cpu_s_per_image": round(
            tally.cpu_seconds / max(len(ok) * num_images, 1), 4
        ),
    }


def run_load(
    urls: dict[str, str],
    clients: int,
    seconds: float,
    steps: int,
    num_images: int = 1,
    rounds: int = 1,
    prompts: Sequence[str] = PROMPTS,
) -> dict[str, dict[str, Any]]:
    """Loads each server of `urls` (name -> URL) from `clients` threads for
    `seconds`, in `rounds` turns taken one server after the other (so that
    they share whatever else the machine runs).

    Each client sends its next request (a random prompt of `prompts` and seed)
    when the previous one is answered and stops sending at the end of its
    turn; a turn lasts until its last answer.

    Returns:
      Per server: requests, failed (with the first errors), images, wall
      seconds, images/s (also by round), latency p50/p95/mean (seconds), the
      mean images of the calls that served the requests, the server's batches
      and its CPU seconds per image (all its threads; unlike images/s, about
      independent of what else the machine runs).
    """
    if clients < 1 or seconds <= 0 or rounds < 1:
        raise ValueError(
            f"need clients >= 1, seconds > 0 and rounds >= 1, got {clients}, "
            f"{seconds}, {rounds}"
        )
    request = {"steps": steps, "num_images": num_images}
    tallies = {name: _Tally() for name in urls}
    for r in range(rounds):
        for name, url in urls.items():
            _load_round(
                url,
                clients,
                seconds / rounds,
                request,
                prompts,
                tallies[name],
                seed=1000 * r,
            )
    return {name: _figures(t, num_images) for name, t in tallies.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(
    workdir: str, max_batch: int, batch_wait_ms: float, log: str, timeout: float
) -> Iterator[str]:
    """`launch.serve` of `workdir` in a child process -> its URL once /health
    answers; stopped with SIGTERM on exit (its exit status must be 0)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "launch.serve",
        f"--workdir={workdir}",
        f"--port={port}",
        f"--max_batch={max_batch}",
        f"--batch_wait_ms={batch_wait_ms}",
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(log, "w") as f:
        process = subprocess.Popen(command, cwd=root, stdout=f, stderr=f)
    try:
        _wait_ready(url, process, log, timeout)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    if code != 0:
        raise RuntimeError(f"launch.serve exited with status {code}; see {log}")


def _wait_ready(url: str, process, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"launch.serve exited at start-up; see {log}")
        try:
            health(url, timeout=5)
            return
        except (OSError, ValueError):
            time.sleep(1)
    raise RuntimeError(f"launch.serve did not answer within {timeout} s; see {log}")


def _machine() -> dict[str, Any]:
    return {
        "cpu": machine.cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def compare(
    workdir: str,
    clients: int,
    seconds: float,
    steps: int,
    num_images: int = 1,
    max_batch: int = 8,
    batch_wait_ms: float = 20.0,
    rounds: int = 4,
    start_timeout: float = 1800.0,
) -> dict[str, Any]:
    """Starts `launch.serve --workdir` one request a call (--max_batch=1) and
    batched, and loads both for `seconds` each (`run_load`, in `rounds`).

    Returns:
      Each server's figures (with its compiled batch sizes and compile time)
      and the batching gain: batched over one-at-a-time images/s, and
      one-at-a-time over batched server CPU seconds per image.
    """
    logs = tempfile.mkdtemp(prefix="loadtest_")
    servers = {"one_at_a_time": 1, "batched": max_batch}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, batch in servers.items():
            log = os.path.join(logs, f"serve_{name}.log")
            print(f"{name}: starting launch.serve --max_batch={batch} (log {log})")
            urls[name] = stack.enter_context(
                serving(workdir, batch, batch_wait_ms, log, start_timeout)
            )
        healths = {name: health(url) for name, url in urls.items()}
        print(f"loading each for {seconds} s in {rounds} rounds, {clients} clients")
        runs = run_load(urls, clients, seconds, steps, num_images, rounds)
    for name, run in runs.items():
        run.update(
            max_batch=servers[name],
            batch_sizes=healths[name]["batch_sizes"],
            compile_seconds=healths[name]["compile_seconds"],
        )
        print(f"{name}: {summary(run)}")
    one, batched = runs["one_at_a_time"], runs["batched"]
    gain = batched["images_per_s"] / max(one["images_per_s"], 1e-9)
    cpu_gain = one["server_cpu_s_per_image"] / max(
        batched["server_cpu_s_per_image"], 1e-9
    )
    return {
        "model": healths["batched"]["model"],
        "rounds": rounds,
        "runs": runs,
        "batching_gain": round(gain, 2),
        "batching_gain_cpu_per_image": round(cpu_gain, 2),
    }


def summary(run: dict[str, Any]) -> str:
    lat = run["latency_s"]
    return (
        f"{run['requests']} requests ({run['failed']} failed), "
        f"{run['images_per_s']} images/s, latency p50 {lat['p50']} s / p95 "
        f"{lat['p95']} s, {run['mean_batch_images']} images a call, "
        f"{run['server_cpu_s_per_image']} server CPU s an image"
    )


def main(
    out: str,
    *,
    url: str | None = None,
    workdir: str | None = None,
    clients: int = 8,
    seconds: float = 60.0,
    steps: int = 10,
    num_images: int = 1,
    max_batch: int = 8,
    batch_wait_ms: float = 20.0,
    rounds: int = 4,
) -> dict[str, Any]:
    """Loads a running server (`url`) or compares batching on `workdir`
    (`compare`); writes the record to `out` and returns it.

    Raises:
      ValueError: neither or both of `url` and `workdir`.
    """
    if (url is None) == (workdir is None):
        raise ValueError("load a running server (--url) or a --workdir, exactly one")
    record: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m launch.loadtest " + " ".join(sys.argv[1:]),
        "clients": clients,
        "seconds": seconds,
        "steps": steps,
        "num_images": num_images,
        "machine": _machine(),
    }
    if url is not None:
        record.update(url=url, model=health(url)["model"])
        record["run"] = run_load({url: url}, clients, seconds, steps, num_images)[url]
        print(summary(record["run"]))
    else:
        record.update(workdir=workdir, batch_wait_ms=batch_wait_ms)
        record.update(
            compare(
                workdir,
                clients,
                seconds,
                steps,
                num_images,
                max_batch,
                batch_wait_ms,
                rounds,
            )
        )
        print(
            f"batching gain: {record['batching_gain']}x images/s, "
            f"{record['batching_gain_cpu_per_image']}x in server CPU time an image"
        )
    record["machine_after"] = _machine()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {out}")
    return record
