"""Random parameter values for tests, drawn by NumPy on the host.

A `jax.random` draw per parameter compiles a threefry program per leaf shape,
and XLA:CPU takes seconds to optimise each (a jitted draw of 100 normals:
minutes); the tests need values off the init, not JAX's random stream.
"""

import jax
import numpy as np


def normal_like(tree, scale: float, seed: int = 1):
    """N(0, scale^2) NumPy arrays shaped and typed as `tree`'s leaves (arrays
    or `jax.ShapeDtypeStruct`s), each leaf its own draw."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (scale * rng.standard_normal(x.shape)).astype(x.dtype), tree
    )


def perturbed(params, scale: float = 0.05, seed: int = 1, only_zero: bool = False):
    """`params` plus `normal_like` noise, each leaf kept on its sharding.

    Moves the zero-initialised layers (the output, the context and
    input-image layers) off zero, where they would hide what they read.
    With `only_zero`, only the all-zero leaves are replaced by the noise.
    """

    def move(x, noise):
        host = np.asarray(x)
        if only_zero and np.any(host):
            return x
        value = noise if only_zero else host + noise
        return jax.device_put(value, x.sharding)

    return jax.tree.map(move, params, normal_like(params, scale, seed))
