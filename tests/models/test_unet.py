"""UNet and Imagen model: shapes, dtypes, axis names, conditioning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import layers
from imagen_jax.models.unet import UNet, UNetConfig

CFG = UNetConfig(
    base_channels=16,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attn_levels=(False, True),
    num_heads=2,
    head_dim=8,
    cond_dim=32,
)


def _inputs(batch=2, res=16, length=5, dim=12):
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(batch, res, res, 3)), jnp.float32)
    logsnr = jnp.asarray(rng.normal(size=(batch,)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(batch, length, dim)), jnp.float32)
    mask = jnp.asarray(np.arange(length)[None] < np.array([[3], [5]]))
    return z, logsnr, text, mask


def _init_perturbed(model, inputs):
    """Init, then perturb the zero-initialised layers so outputs are non-trivial."""
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), *inputs)["params"])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtype(dtype):
    model = UNet(CFG, dtype=dtype)
    inputs = _inputs()
    params = _init_perturbed(model, inputs)
    out = model.apply({"params": params}, *inputs)
    assert out.shape == (2, 16, 16, 3)
    assert out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_every_param_has_logical_axes():
    boxed = UNet(CFG).init(jax.random.PRNGKey(0), *_inputs())["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim


def test_fresh_model_predicts_zero():
    # conv_out is zero-initialised: a fresh model starts at "predict 0".
    model = UNet(CFG)
    inputs = _inputs()
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    assert float(jnp.abs(model.apply({"params": params}, *inputs)).max()) == 0.0


def test_text_padding_does_not_matter_but_text_does():
    model = UNet(CFG)
    z, logsnr, text, mask = _inputs()
    params = _init_perturbed(model, (z, logsnr, text, mask))
    out = model.apply({"params": params}, z, logsnr, text, mask)
    padded_changed = text.at[0, 3:].set(100.0)  # row 0 has 3 valid tokens
    out2 = model.apply({"params": params}, z, logsnr, padded_changed, mask)
    np.testing.assert_allclose(out2, out, atol=1e-5)
    out3 = model.apply({"params": params}, z, logsnr, text.at[0, 0].set(3.0), mask)
    assert float(jnp.abs(out3[0] - out[0]).max()) > 1e-4


def test_bad_resolution_is_a_clear_error():
    model = UNet(CFG)
    z, logsnr, text, mask = _inputs(res=16)
    with pytest.raises(ValueError, match="divisible by 2"):
        model.init(jax.random.PRNGKey(0), z[:, :15], logsnr, text, mask)


def test_attention_matches_numpy():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=s) for s in [(2, 3, 2, 4), (2, 5, 2, 4), (2, 5, 2, 4)])
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = layers.attention(
        jnp.asarray(q, jnp.float32),
        jnp.asarray(k, jnp.float32),
        jnp.asarray(v, jnp.float32),
        jnp.asarray(mask),
    )
    logits = np.einsum("bqnd,bknd->bnqk", q, k) / 2.0
    logits = np.where(mask[:, None, None], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ref = np.einsum("bnqk,bknd->bqnd", w, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_remat_policy_gives_same_output():
    inputs = _inputs()
    params = _init_perturbed(UNet(CFG), inputs)
    import dataclasses

    remat = UNet(dataclasses.replace(CFG, remat_policy="nothing_saveable"))
    np.testing.assert_allclose(
        remat.apply({"params": params}, *inputs),
        UNet(CFG).apply({"params": params}, *inputs),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="unknown remat policy"):
        UNet(dataclasses.replace(CFG, remat_policy="bogus")).init(
            jax.random.PRNGKey(0), *inputs
        )
