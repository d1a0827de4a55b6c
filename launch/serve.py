"""Serves a run or a bundle over HTTP: `python -m launch.serve --workdir DIR`
(or `--bundle BUNDLE_DIR`) `[--port 8000] [--host 127.0.0.1] [--max_batch 8]
[--batch_wait_ms 20]`.

POST /generate takes the request JSON of DESIGN §7 with images as base64 PNG
and answers the PNGs (base64) with the settings used; GET /health reports the
model, the limits and the counters; GET / is a page to try it. Everything is
compiled at start-up; concurrent requests that share the sampler steps run as
one batch. SIGTERM or SIGINT stops accepting, answers the requests in flight
and exits 0.
"""

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "Workdir of a training run (latest checkpoint).")
flags.DEFINE_string("bundle", None, "A serving bundle (launch.export) instead.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
flags.DEFINE_integer("port", 8000, "Port (0: a free one, shown at start-up).")
flags.DEFINE_integer(
    "max_batch",
    8,
    "Most images one call draws, and so one request asks for; compiled for the "
    "powers of two up to it (a bundle serves its exported batch sizes).",
)
flags.DEFINE_float(
    "batch_wait_ms", 20.0, "How long a request waits for others to share its call."
)
flags.DEFINE_string(
    "sampler",
    None,
    "--workdir only: ddim, dpmpp_2m or ddpm (default: the run's sample.sampler).",
)
FLAGS = flags.FLAGS


def _serve():
    from imagen_jax import server

    server.serve(
        workdir=FLAGS.workdir,
        bundle=FLAGS.bundle,
        host=FLAGS.host,
        port=FLAGS.port,
        max_batch=FLAGS.max_batch,
        batch_wait_ms=FLAGS.batch_wait_ms,
        sampler=FLAGS.sampler,
    )


if __name__ == "__main__":
    common.run(_serve, distributed=False)
