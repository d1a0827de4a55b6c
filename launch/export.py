"""Exports a run for serving: `python -m launch.export --workdir DIR --out BUNDLE`.

Writes a versioned bundle (`imagen_jax.serving_bundle`): the EMA parameters,
the config, the tokenizer and the `jax.export`-serialized sampler of each
batch size, with steps and guidance as runtime inputs. A fresh process serves
it with jax alone (`loader.py` in the bundle).
"""

from absl import flags

from imagen_jax.instructions import LIMITS
from launch import common

flags.DEFINE_string("workdir", None, "Workdir of a training run.")
flags.DEFINE_string("out", None, "Bundle directory to write.")
flags.DEFINE_list(
    "batch_sizes", ["1", "4"], "num_images the bundle serves (one function each)."
)
flags.DEFINE_string(
    "sampler", None, "ddim, ddpm or dpmpp_2m (default: the run's sample.sampler)."
)
flags.DEFINE_string(
    "rule", "chain", "Guidance rule: chain (cfg / dual guidance) or interleaved."
)
flags.DEFINE_integer("resolution", None, "Image side (default: the run's).")
flags.DEFINE_string(
    "param_dtype", "float32", "Storage of the parameters: float32 or bfloat16."
)
flags.DEFINE_integer(
    "max_steps", LIMITS.steps, "Most sampler steps a request may ask for."
)
flags.DEFINE_enum(
    "weights", "ema", ["ema", "trained"], "The EMA weights or the trained ones."
)
flags.DEFINE_list(
    "platforms", [], "jax.export platforms, e.g. cpu,tpu (default: this backend)."
)
flags.DEFINE_bool("overwrite", False, "Replace an existing bundle at --out.")
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS


def _batch_sizes() -> list[int]:
    try:
        return [int(b) for b in FLAGS.batch_sizes]
    except ValueError as e:
        raise ValueError(
            f"--batch_sizes must be integers, got {FLAGS.batch_sizes}"
        ) from e


def _export():
    from imagen_jax import export

    manifest = export.export_bundle(
        FLAGS.workdir,
        FLAGS.out,
        batch_sizes=_batch_sizes(),
        sampler=FLAGS.sampler,
        rule=FLAGS.rule,
        resolution=FLAGS.resolution,
        param_dtype=FLAGS.param_dtype,
        max_steps=FLAGS.max_steps,
        use_ema=FLAGS.weights == "ema",
        platforms=FLAGS.platforms or None,
        overwrite=FLAGS.overwrite,
    )
    sizes = sorted(int(b) for b in manifest["functions"])
    print(
        f"wrote {FLAGS.out}: step {manifest['checkpoint']['step']}, "
        f"{manifest['sampler']} sampler, batch sizes {sizes}, "
        f"{manifest['resolution']} px, {manifest['params']['dtype']} parameters"
    )


if __name__ == "__main__":
    common.run(_export, distributed=False)
