"""Load test of the server: `python -m launch.loadtest --workdir DIR
--clients 8 --seconds 60 --steps 10 --out FILE.json`.

With --workdir it starts `launch.serve` on the run twice, one request a call
(--max_batch=1) and batched (--max_batch), loads each from --clients
concurrent clients on 127.0.0.1 for --seconds (in --rounds turns, the two
servers alternating) and writes one record: failed requests, p50/p95
latency, images/s and server CPU seconds per image of each, and the batching
gain. With --url it loads a server already running (no ratio).
"""

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "Run to serve twice and compare batching on.")
flags.DEFINE_string("url", None, "Or: a running server, e.g. http://127.0.0.1:8000.")
flags.DEFINE_integer("clients", 8, "Concurrent clients, each sending back to back.")
flags.DEFINE_float("seconds", 60.0, "How long the clients send requests.")
flags.DEFINE_integer("steps", 10, "Sampler steps of every request.")
flags.DEFINE_integer("num_images", 1, "Images per request.")
flags.DEFINE_integer("max_batch", 8, "--workdir: the batched server's --max_batch.")
flags.DEFINE_float("batch_wait_ms", 20.0, "--workdir: the servers' --batch_wait_ms.")
flags.DEFINE_integer("rounds", 4, "--workdir: turns each server's load is cut in.")
flags.DEFINE_string("out", None, "JSON record to write.")
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def _loadtest():
    from imagen_jax import loadtest

    loadtest.main(
        FLAGS.out,
        url=FLAGS.url,
        workdir=FLAGS.workdir,
        clients=FLAGS.clients,
        seconds=FLAGS.seconds,
        steps=FLAGS.steps,
        num_images=FLAGS.num_images,
        max_batch=FLAGS.max_batch,
        batch_wait_ms=FLAGS.batch_wait_ms,
        rounds=FLAGS.rounds,
    )


if __name__ == "__main__":
    common.run(_loadtest, distributed=False)
