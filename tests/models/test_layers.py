"""Building blocks: the Dense product in its two forms (custom-gradient matmul for
XLA:CPU, stock dot_general) and the `kernels` option choosing between them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import layers


def _plain_grads(x, w, probe):
    def loss(x, w):
        return jnp.sum(
            jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ()))) * probe
        )

    return jax.grad(loss, (0, 1))(x, w)


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5), (2, 3, 4, 5)])
def test_matmul_value_and_gradients_match_autodiff(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(shape[-1], 6)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=shape[:-1] + (6,)), jnp.float32)
    np.testing.assert_allclose(layers.matmul(x, w), x @ w, rtol=1e-6, atol=1e-6)
    got = jax.grad(lambda x, w: jnp.sum(layers.matmul(x, w) * probe), (0, 1))(x, w)
    # float32 sums of at most 42 O(1) products: rounding error ~1e-6 relative.
    for g, want in zip(got, _plain_grads(x, w, probe)):
        assert g.shape == want.shape
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)


def test_matmul_gradients_keep_the_input_dtypes():
    x = jnp.ones((2, 3, 4), jnp.bfloat16)
    w = jnp.ones((4, 5), jnp.bfloat16)
    dx, dw = jax.grad(
        lambda x, w: jnp.sum(layers.matmul(x, w).astype(jnp.float32)), (0, 1)
    )(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    # Each entry is a sum of ones: exact in bfloat16.
    np.testing.assert_array_equal(dx.astype(jnp.float32), 5.0)
    np.testing.assert_array_equal(dw.astype(jnp.float32), 6.0)


@pytest.mark.parametrize("kernels", ["cpu", "stock"])
def test_dense_layer_uses_its_product_and_matches_flax_dense(kernels):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 8)), jnp.float32)
    ours = layers.dense(
        16,
        ("embed", "mlp"),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernels=kernels,
    )
    params = nn.meta.unbox(ours.init(jax.random.PRNGKey(0), x)["params"])
    params["bias"] = params["bias"] + 0.5
    plain = nn.Dense(16)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x)))

    jaxpr = str(jax.make_jaxpr(jax.grad(loss(ours)))(params, x))
    # The CPU form multiplies through `matmul`; the stock one through the
    # `dot_general` every accelerator compiler knows.
    assert ("custom_vjp" in jaxpr) == (kernels == "cpu")
    got = jax.grad(loss(ours), (0, 1))(params, x)
    want = jax.grad(loss(plain), (0, 1))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_dense_dot_general_falls_back_for_other_contractions():
    a = jnp.arange(24.0).reshape(2, 3, 4)
    b = jnp.arange(24.0).reshape(2, 4, 3)
    dims = (((2,), (1,)), ((0,), (0,)))  # a batched contraction: not a Dense
    np.testing.assert_array_equal(
        layers.dense_dot_general(a, b, dims), jax.lax.dot_general(a, b, dims)
    )


def test_kernels_option_resolves_by_backend_and_rejects_unknown_values():
    on_cpu = jax.default_backend() == "cpu"
    assert layers.resolve_kernels("auto") == ("cpu" if on_cpu else "stock")
    assert [layers.resolve_kernels(k) for k in ("cpu", "stock")] == ["cpu", "stock"]
    with pytest.raises(ValueError, match=r"kernels must be one of .*'tpu'"):
        layers.resolve_kernels("tpu")
