"""Test set-up: 8 fake CPU devices, created before JAX starts."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from imagen_jax import xla_flags  # noqa: E402

# The tests run with the XLA flags the entry points use.
xla_flags.apply_defaults()
