"""Mesh construction and sharded-at-birth initialisation on 8 fake devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from imagen_jax import sharding

RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("act_batch", ("data", "fsdp")))


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "shape,expected",
    [((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)), ((1, 8, 1), (1, 8, 1))],
)
def test_mesh_shape_fills_one_minus_one(shape, expected):
    assert sharding.mesh_shape(shape, 8) == expected


@pytest.mark.parametrize(
    "shape,match",
    [
        ((-1, -1, 1), "at most one"),
        ((3, -1, 1), "does not divide"),
        ((2, 2, 1), "needs 4 devices"),
    ],
)
def test_mesh_shape_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        sharding.mesh_shape(shape, 8)


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param(
            "w",
            nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")),
            (x.shape[-1], 6),
        )
        odd = self.param(
            "odd",
            nn.with_logical_partitioning(nn.initializers.normal(), ("embed", None)),
            (3, 4),
        )
        return x @ w, odd


def test_sharded_init_places_params_on_their_shards():
    mesh = sharding.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    params, shardings = sharding.sharded_init(
        lambda: _Tiny().init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"],
        mesh,
        RULES,
    )
    # embed (8) over fsdp (2), mlp (6) over tensor (2).
    assert params["w"].sharding.spec == P("fsdp", "tensor")
    assert params["w"].addressable_shards[0].data.shape == (4, 3)
    # A dimension fsdp does not divide (3) is replicated instead of failing.
    assert params["odd"].sharding.spec == P(None, None)
    assert shardings["w"] == params["w"].sharding


def test_sharded_init_compiles_unoptimised_on_cpu_and_draws_the_same_values():
    mesh = sharding.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    assert sharding.init_compiler_options(mesh) == {"xla_backend_optimization_level": 0}
    init = lambda: _Tiny().init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]  # noqa: E731
    params, _ = sharding.sharded_init(init, mesh, RULES)
    # The same draws from the optimised program (XLA's default level 3; the
    # tests' own default is 0, tests/child_env.py): the threefry bits are
    # integer arithmetic, and the float transform of them (erfinv, scale) may
    # round differently by a few float32 ulps (eps 1.2e-7) at most.
    expected = (
        jax.jit(lambda: nn.meta.unbox(init()))
        .lower()
        .compile({"xla_backend_optimization_level": 3})()
    )
    for name in ("w", "odd"):
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-6, atol=1e-7)


def test_global_batch_is_split_over_data_axes():
    mesh = sharding.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"))
    s = sharding.batch_sharding(mesh, ("data", "fsdp"))
    batch = sharding.global_batch({"x": np.arange(16 * 3).reshape(16, 3)}, s)
    assert batch["x"].shape == (16, 3)
    assert {sh.data.shape for sh in batch["x"].addressable_shards} == {(2, 3)}
