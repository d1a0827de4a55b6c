"""imagen_jax against imagen-pytorch, timed in turns in one run.

    bash benchmarks/run_peer.sh                      # makes the peer venv, runs this
    python -m benchmarks.compare --peer_python benchmarks/.venv-peer/bin/python

Our side runs in this process (`imagen_jax.bench`, config
`experiments/bench.py:peer`); imagen-pytorch runs in a worker process in its
own virtualenv (`peer_imagen_pytorch.py --worker`), built and warmed up once.
Then, for each round: a few timed train steps of ours, then a few of the
peer's, and so on; the same for sampled batches. Alternating makes the ratio
fair when the machine's load changes during the run. Prints a markdown table
and one JSON line with every time measured.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from imagen_jax import xla_flags

# Our side runs with the project's XLA:CPU defaults (before JAX starts).
xla_flags.apply_defaults()

config_flags.DEFINE_config_file(
    "config", "experiments/bench.py:peer", "Our bench config.", lock_config=True
)
flags.DEFINE_string("peer_python", None, "Python of benchmarks/.venv-peer.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds of train steps.")
flags.DEFINE_integer("reps", 2, "Timed train steps per model per round.")
flags.DEFINE_integer("warmup", 1, "Untimed train steps per model first.")
flags.DEFINE_integer("sample_rounds", 1, "Alternating rounds of sampled batches.")
flags.DEFINE_integer("sample_steps", 64, "Sampler steps per batch.")
flags.DEFINE_float("settle", 1.0, "Seconds of idle before each timed block.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the peak-FLOP/s matmul.")
flags.DEFINE_string("out", None, "Also write the JSON record to this file.")
flags.mark_flags_as_required(["peer_python"])
FLAGS = flags.FLAGS

PEER_SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "peer_imagen_pytorch.py"
)


class PeerWorker:
    """The imagen-pytorch worker process: one command line in, one JSON line out."""

    def __init__(self, python: str, config, sample_steps: int):
        args = [
            python,
            PEER_SCRIPT,
            "--worker",
            f"--batch={config.data.batch_size}",
            f"--res={config.data.resolution}",
            f"--text_len={config.data.max_text_len}",
            f"--text_dim={config.text.d_model}",
            f"--lr={config.optim.lr}",
            f"--sample_batch={config.bench.sample_batch}",
            f"--sample_steps={sample_steps}",
            f"--guidance={config.sample.guidance}",
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer worker exited with {self.proc.wait()}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def alternate(ours, peer: PeerWorker, what: str, rounds: int, reps: int) -> dict:
    """Rounds of `reps` timed runs of ours then the peer's; wall seconds each."""
    from imagen_jax import bench

    times = {"ours": [], "peer": []}
    for r in range(rounds):
        time.sleep(FLAGS.settle)
        times["ours"].append(bench.time_runs(ours.run, reps))
        time.sleep(FLAGS.settle)
        times["peer"].append(peer.ask(f"{what} {reps}")["times"])
        print(
            f"{what} round {r + 1}/{rounds}: ours {times['ours'][-1]} s, "
            f"peer {times['peer'][-1]} s, load {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return times


def _median(rounds: list[list[float]]) -> float:
    return statistics.median(t for r in rounds for t in r)


def summarize(times: dict, images_ours: int, images_peer: int) -> dict:
    ours, peer = _median(times["ours"]), _median(times["peer"])
    per_round = [
        statistics.median(p) / images_peer / (statistics.median(o) / images_ours)
        for o, p in zip(times["ours"], times["peer"])
    ]
    return {
        "ours_seconds": ours,
        "peer_seconds": peer,
        "ours_images_per_s": images_ours / ours,
        "peer_images_per_s": images_peer / peer,
        "speedup": (images_ours / ours) / (images_peer / peer),
        "speedup_per_round": per_round,
        "times": times,
    }


def table(record: dict) -> str:
    """The markdown table of the docs from a compare record."""
    o, p, t = record["ours"], record["peer"], record["train"]
    rows = [
        ("parameters (UNet), M", o["num_params"] / 1e6, p["num_params"] / 1e6, ".2f"),
        (
            "GFLOP / image, train step",
            o["gflop_per_image"],
            p["gflop_per_image"],
            ".2f",
        ),
        ("train step, batch 32 (s)", t["ours_seconds"], t["peer_seconds"], ".2f"),
        ("train images/s", t["ours_images_per_s"], t["peer_images_per_s"], ".2f"),
        ("achieved GFLOP/s", o["gflop_per_s"], p["gflop_per_s"], ".1f"),
        ("MFU (vs measured fp32 matmul peak)", o["mfu"], p["mfu"], ".1%"),
    ]
    ratios = {"train images/s": t["speedup"]}
    if "sample" in record:
        s, steps = record["sample"], record["sample_steps"]
        label = f"{steps}-step sampling, batch 32 (s)"
        rows += [
            (label, s["ours_seconds"], s["peer_seconds"], ".1f"),
            ("sample images/s", s["ours_images_per_s"], s["peer_images_per_s"], ".3f"),
        ]
        ratios["sample images/s"] = s["speedup"]
    lines = ["| | imagen_jax | imagen-pytorch | ours / peer |", "|---|---|---|---|"]
    for label, ours, peer, fmt in rows:
        ratio = f"**{ratios[label]:.2f}x**" if label in ratios else ""
        lines.append(f"| {label} | {ours:{fmt}} | {peer:{fmt}} | {ratio} |")
    return "\n".join(lines)


def compare() -> dict:
    from imagen_jax import bench

    config = FLAGS.config
    record = {
        "machine": bench.machine_info(),
        "load_start": os.getloadavg(),
        "sample_steps": FLAGS.sample_steps,
    }
    peer = PeerWorker(FLAGS.peer_python, config, FLAGS.sample_steps)
    try:
        record["peer"] = peer.ask("info")
        ours = bench.prepare_train(config)
        ours.warm_up(FLAGS.warmup)
        for _ in range(FLAGS.warmup):
            peer.ask("train 0")
        record["train"] = summarize(
            alternate(ours, peer, "train", FLAGS.rounds, FLAGS.reps),
            ours.images,
            config.data.batch_size,
        )
        record["ours"] = {
            "num_params": ours.num_params,
            "gflop_per_image": ours.gflop / ours.images,
            "what": ours.description,
        }
        del ours
        if FLAGS.sample_rounds:
            sampler = bench.prepare_sample(config, FLAGS.sample_steps, "ddim")
            sampler.warm_up()
            peer.ask("sample 0")
            record["sample"] = summarize(
                alternate(sampler, peer, "sample", FLAGS.sample_rounds, 1),
                sampler.images,
                record["peer"]["sample_batch"],
            )
            record["ours"]["sampler"] = sampler.description
            record["peer"]["sampler_run"] = record["peer"].pop("sampler")
    finally:
        peer.close()
    _add_rates(record, bench.matmul_peak_gflops(FLAGS.matmul_size))
    record["load_end"] = os.getloadavg()
    return record


def _add_rates(record: dict, peak: float) -> None:
    t = record["train"]
    record["peak_gflop_per_s"] = peak
    for side, rate in (
        ("ours", t["ours_images_per_s"]),
        ("peer", t["peer_images_per_s"]),
    ):
        achieved = record[side]["gflop_per_image"] * rate
        record[side]["gflop_per_s"] = achieved
        record[side]["mfu"] = achieved / peak


def main(argv):
    del argv
    record = compare()
    print(table(record))
    print(
        f"load average (1, 5, 15 min): start {record['load_start']}, "
        f"end {record['load_end']}; peak fp32 matmul "
        f"{record['peak_gflop_per_s']:.1f} GFLOP/s"
    )
    print(json.dumps(record, sort_keys=True), flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    app.run(main)
