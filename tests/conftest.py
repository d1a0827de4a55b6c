"""Test set-up: 8 fake CPU devices and the tests' XLA options
(`tests.child_env`), set before JAX starts."""

import os

from tests import child_env

os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        child_env.XLA_FLAGS,
    ]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests compile far more than they step: with one malloc arena XLA's
# multi-threaded compiler ran them 35% slower (xla_flags.retain_freed_memory).
os.environ.setdefault("IMAGEN_JAX_RETAIN_FREED_MEMORY", "0")

from imagen_jax import xla_flags  # noqa: E402

# The tests run with the XLA flags the entry points use (allocator: above).
xla_flags.apply_defaults()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """A small ShapesWorld of the smoke config's variant (96 train, 8 test,
    32 px) for tests that run `launch.train` on it; built once per session."""
    from experiments import t2i_shapes
    from imagen_jax.data.tfds import shapes_world as shapes_world_tfds

    d = tmp_path_factory.mktemp("smoke_world")
    variant = t2i_shapes.get_config("smoke").data.variant
    shapes_world_tfds.build(
        str(d), resolution=32, num_train=96, num_test=8, variant=variant
    )
    return str(d)
