"""Samples a request: `python -m launch.sample --workdir DIR --instruction REQ.json
--out OUT.png` (a grid of `num_images` samples).

A request beyond `instructions.RequestLimits` (checked before the model loads)
or beyond what the model takes (text tokens, context items, image size) ends
in one line naming the field, the value and the limit (exit status 2).
"""

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "Workdir of a training run.")
flags.DEFINE_string("instruction", None, "Request JSON file (DESIGN §7).")
flags.DEFINE_string("out", None, "Output PNG (grid of the samples).")
flags.mark_flags_as_required(["workdir", "instruction", "out"])
FLAGS = flags.FLAGS


def _sample():
    from imagen_jax import generate, inference, instructions
    from imagen_jax.evaluation import grids

    request = instructions.load_request(FLAGS.instruction)
    loaded = inference.load(FLAGS.workdir)
    images = generate.generate_images(loaded, request)
    path = grids.save_grid(images, FLAGS.out)
    print(f"wrote {len(images)} samples of step {loaded.step} to {path}")


if __name__ == "__main__":
    common.run(_sample)
