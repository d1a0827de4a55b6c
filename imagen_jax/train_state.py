"""The train state and its initialisation, sharded at birth: `TrainState`, the
params (boxed with their logical axes, or abstract with their shardings) and
the config's logical axis rules."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax import conditioning as conditioning_lib
from imagen_jax import sharding
from imagen_jax.models.imagen import Imagen


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def mesh_rules(config) -> tuple:
    """Logical axis rules from the config as tuples (JSON turns them to lists)."""
    return tuple(
        (name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
        for name, axes in config.mesh.rules
    )


def dummy_batch(
    config, conditioning: conditioning_lib.Conditioning, batch_size: int = 1
) -> dict:
    """A batch of the config's shapes for `conditioning` (for init / tracing):
    zero arrays, every mask set."""
    shapes = conditioning_lib.batch_shapes(config.data, conditioning, batch_size)
    return {
        name: (np.ones if dtype is np.bool_ else np.zeros)(shape, dtype)
        for name, (shape, dtype) in shapes.items()
    }


def init_params(model: Imagen, config) -> Any:
    """Boxed (logically annotated) initial params; call under jit or eval_shape.

    Instruction models also create the context and input-image layers.
    """
    batch = dummy_batch(config, model.conditioning)
    z = jnp.zeros(batch["image"].shape, jnp.float32)
    return model.init(
        jax.random.PRNGKey(config.seed),
        z,
        jnp.zeros((1,)),
        batch,
        method=Imagen.forward,
    )["params"]


def abstract_params(model: Imagen, config, mesh, rules) -> Any:
    """ShapeDtypeStructs of the params with their mesh shardings (no allocation)."""
    boxed = jax.eval_shape(lambda: init_params(model, config))
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed),
        shardings,
    )


def initial_state(model: Imagen, tx, config) -> TrainState:
    """The boxed TrainState at step 0; call under jit or eval_shape.

    Boxed params give the optimizer state the same logical axes.
    """
    params = init_params(model, config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=tx.init(params),
    )


def init_state(model: Imagen, tx, config, mesh, rules) -> tuple[TrainState, Any]:
    """TrainState born sharded; returns it and its shardings."""
    return sharding.sharded_init(lambda: initial_state(model, tx, config), mesh, rules)
