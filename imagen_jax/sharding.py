"""Device mesh, logical axis rules and sharded-at-birth initialisation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills the one `-1` of `shape` so that the product is `num_devices`."""
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} may contain at most one -1")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"mesh shape {tuple(shape)} does not divide {num_devices} devices"
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
            f"have {num_devices}"
        )
    return tuple(shape)


def make_mesh(shape: Sequence[int], axes: Sequence[str]) -> Mesh:
    """A mesh over all devices (all hosts) with one `-1` in `shape` filled in."""
    if len(shape) != len(axes):
        raise ValueError(f"mesh shape {tuple(shape)} and axes {tuple(axes)} differ")
    devices = jax.devices()
    full = mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices).reshape(full), tuple(axes))


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide a dimension (e.g. 3 RGB channels)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = []
        for name in names:
            size = mesh.shape[name] * math.prod(mesh.shape[k] for k in kept)
            if dim % size == 0:
                kept.append(name)
        fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*fitted)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of (possibly logically boxed) abstract arrays."""
    specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract_tree))
    return jax.tree.map(
        lambda spec, shape: NamedSharding(mesh, _fit_spec(spec, shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def init_compiler_options(mesh: Mesh) -> dict[str, Any] | None:
    """XLA options for a program that runs once, such as an init, on `mesh`.

    On XLA:CPU, compiling an init is mostly LLVM optimising the threefry hash
    of every parameter's random draw: a jitted draw of 100 normals took
    minutes to compile. Its backend optimisations buy nothing for a program
    that runs once, and without them the smoke model's sharded init takes
    2.9x less CPU time (docs/performance.md). Other backends keep theirs.
    """
    if mesh.devices.flat[0].platform != "cpu":
        return None
    return {"xla_backend_optimization_level": 0}


def sharded_init(
    init_fn: Callable[[], Any], mesh: Mesh, rules: Rules
) -> tuple[Any, Any]:
    """Runs `init_fn` under jit with every output born on its shard.

    Returns the unboxed tree and its shardings.
    """
    abstract = jax.eval_shape(init_fn)
    shardings = logical_shardings(abstract, mesh, rules)
    with mesh, nn.logical_axis_rules(rules):
        tree = jax.jit(
            lambda: nn.meta.unbox(init_fn()),
            out_shardings=shardings,
            compiler_options=init_compiler_options(mesh),
        )()
    return tree, shardings


def batch_sharding(mesh: Mesh, data_axes: Sequence[str]) -> NamedSharding:
    """Sharding of a batch: leading dimension over `data_axes`."""
    return NamedSharding(mesh, PartitionSpec(tuple(data_axes)))


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Assembles each host's local batch into global sharded arrays."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local.items()
    }
