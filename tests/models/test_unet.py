"""UNet and Imagen model: shapes, dtypes, axis names, conditioning."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import layers
from imagen_jax.models.unet import UNet, UNetConfig
from tests.params import perturbed

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
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    return perturbed(nn.meta.unbox(params))


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


@pytest.mark.parametrize(
    "options", [{}, {"text_pool": "attention", "coord_channels": True}]
)
def test_text_padding_does_not_matter_but_text_does(options):
    model = UNet(dataclasses.replace(CFG, **options))
    z, logsnr, text, mask = _inputs()
    params = _init_perturbed(model, (z, logsnr, text, mask))
    out = model.apply({"params": params}, z, logsnr, text, mask)
    padded_changed = text.at[0, 3:].set(100.0)  # row 0 has 3 valid tokens
    out2 = model.apply({"params": params}, z, logsnr, padded_changed, mask)
    np.testing.assert_allclose(out2, out, atol=1e-5)
    out3 = model.apply({"params": params}, z, logsnr, text.at[0, 0].set(3.0), mask)
    assert float(jnp.abs(out3[0] - out[0]).max()) > 1e-4


def test_attention_pool_starts_as_the_masked_mean_and_ignores_padding():
    from imagen_jax.models.unet import masked_mean

    _, _, text, mask = _inputs(dim=12)
    pool = layers.AttentionPool(num_heads=3)
    params = pool.init(jax.random.PRNGKey(0), text, mask)
    np.testing.assert_allclose(
        pool.apply(params, text, mask), masked_mean(text, mask), atol=1e-6
    )
    query = jax.random.normal(jax.random.PRNGKey(1), (12,))
    trained = {"params": {"query": query}}
    out = pool.apply(trained, text, mask)
    assert float(jnp.abs(out - masked_mean(text, mask)).max()) > 1e-3
    # Row 0 has 3 valid tokens: what the padding holds does not matter.
    np.testing.assert_allclose(
        pool.apply(trained, text.at[0, 3:].set(50.0), mask), out, atol=1e-6
    )
    # Dropped text (all masked) pools to zeros, not nan.
    assert float(jnp.abs(pool.apply(trained, text, mask & False)).max()) == 0.0


def test_coordinate_channels_reach_the_stem():
    from imagen_jax.models.unet import coordinate_maps

    grid = coordinate_maps(jnp.zeros((1, 4, 4, 3)))
    np.testing.assert_allclose(grid[0, 0, 0], [-0.75, -0.75])
    np.testing.assert_allclose(grid[0, 3, 1], [0.75, -0.25])  # (row, column)
    cfg = dataclasses.replace(CFG, coord_channels=True, patch_size=2)
    params = UNet(cfg).init(jax.random.PRNGKey(0), *_inputs())["params"]
    # 2x2 patches of RGB (12 channels) + 2 coordinate channels.
    assert nn.meta.unbox(params)["conv_in"]["kernel"].shape[2] == 14


@pytest.mark.parametrize("attn_blocks, per_level", [("all", 2), ("last", 1)])
def test_attention_blocks_per_level(attn_blocks, per_level):
    cfg = dataclasses.replace(CFG, num_res_blocks=2, attn_blocks=attn_blocks)
    params = UNet(cfg).init(jax.random.PRNGKey(0), *_inputs())["params"]
    for level in ("enc_1", "dec_1"):
        attns = [k for k in params[level] if k.startswith("Attention")]
        # Self- and text cross-attention after each attending ResNet block.
        assert len(attns) == 2 * per_level, (level, sorted(params[level]))
    assert not any(k.startswith("Attention") for k in params["enc_0"])


@pytest.mark.parametrize("field", ["text_pool", "attn_blocks"])
def test_bad_choice_is_a_clear_error(field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CFG, **{field: "max"})


def test_bad_resolution_is_a_clear_error():
    model = UNet(CFG)
    z, logsnr, text, mask = _inputs(res=16)
    with pytest.raises(ValueError, match="divisible by 2"):
        model.init(jax.random.PRNGKey(0), z[:, :15], logsnr, text, mask)


@pytest.mark.parametrize("kernels", ["cpu", "stock"])
def test_attention_matches_numpy(kernels):
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=s) for s in [(2, 3, 2, 4), (2, 5, 2, 4), (2, 5, 2, 4)])
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = layers.attention(
        jnp.asarray(q, jnp.float32),
        jnp.asarray(k, jnp.float32),
        jnp.asarray(v, jnp.float32),
        jnp.asarray(mask),
        kernels,
    )
    logits = np.einsum("bqnd,bknd->bnqk", q, k) / 2.0
    logits = np.where(mask[:, None, None], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ref = np.einsum("bnqk,bknd->bqnd", w, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def _qkv(rng):
    """Random float32 q [2, 3, 2, 4] and k, v [2, 5, 2, 4]."""
    return tuple(
        jnp.asarray(rng.normal(size=s), jnp.float32)
        for s in [(2, 3, 2, 4), (2, 5, 2, 4), (2, 5, 2, 4)]
    )


@pytest.mark.parametrize("kernels", ["cpu", "stock"])
def test_attention_with_every_key_masked_attends_to_nothing(kernels):
    # Dropped text (or no context items) must not reach the output: a plain
    # masked softmax would average all the masked values instead.
    q, k, v = _qkv(np.random.default_rng(2))
    mask = jnp.asarray([[0, 0, 0, 0, 0], [1, 0, 1, 0, 1]], bool)
    out = layers.attention(q, k, v, mask, kernels)
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.abs(np.asarray(out[1])).min() > 0.0
    other_v = v.at[0].set(100.0)
    out_other = layers.attention(q, k, other_v, mask, kernels)
    np.testing.assert_array_equal(out_other[0], 0.0)


@pytest.mark.parametrize("kernels", ["cpu", "stock"])
def test_attention_gradient_matches_plain_softmax(kernels):
    # The deferred normalisation and the stop-gradient max shift ("cpu"), or
    # the masking round `jax.nn.dot_product_attention` ("stock"), must not
    # change the gradient of any input (mask included).
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    probe = jnp.asarray(rng.normal(size=(2, 3, 2, 4)), jnp.float32)

    def plain(q, k, v):
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / 2.0
        logits = jnp.where(mask[:, None, None], logits, -jnp.inf)
        return jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(logits, -1), v)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * probe)

    ours = jax.grad(
        loss(lambda q, k, v: layers.attention(q, k, v, mask, kernels)), (0, 1, 2)
    )
    ref = jax.grad(loss(plain), (0, 1, 2))
    # float32 with O(1) values and sums of at most 5 terms: rounding is ~1e-6.
    for got, want in zip(ours(q, k, v), ref(q, k, v)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


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


def _context(batch=2, k=3, res=16, lc=4, dim=12, valid=((1, 1, 0), (1, 0, 0))):
    from imagen_jax.models.unet import Context

    rng = np.random.default_rng(1)
    return Context(
        images=jnp.asarray(rng.uniform(-1, 1, (batch, k, res, res, 3)), jnp.float32),
        text=jnp.asarray(rng.normal(size=(batch, k, lc, dim)), jnp.float32),
        text_mask=jnp.ones((batch, k, lc), bool),
        mask=jnp.asarray(valid, bool),
    )


def _with_context(module, z, logsnr, text, mask, context, cond_image=None):
    """The context encoded and the noisy image denoised in one call."""
    memory = module.encode_context(context)
    return module(z, logsnr, text, mask, memory=memory, cond_image=cond_image)


def test_zero_init_identity_of_context_and_input_image_layers():
    # A trained text-to-image UNet plus new context / input-image layers gives
    # exactly the text-to-image output until the new layers are trained.
    model = UNet(CFG)
    inputs = _inputs()
    t2i = _init_perturbed(model, inputs)
    ctx = _context()
    cond_image = jnp.ones((2, 16, 16, 3))
    full = nn.meta.unbox(
        model.init(
            jax.random.PRNGKey(2), *inputs, ctx, cond_image, method=_with_context
        )["params"]
    )
    new = set(full) - set(t2i)
    assert "cond_image_in" in new and "mid_ctx_attn" in new
    assert "ctx_attn_0" in full["enc_1"] and "ctx_attn_0" not in t2i["enc_1"]
    merged = jax.tree.map(lambda x: x, full)
    for key, value in t2i.items():
        merged[key] = {**full[key], **value} if isinstance(value, dict) else value
    out_t2i = model.apply({"params": t2i}, *inputs)
    out_full = model.apply(
        {"params": merged}, *inputs, ctx, cond_image, method=_with_context
    )
    np.testing.assert_allclose(out_full, out_t2i, atol=1e-6)


def _context_params(model, inputs, ctx):
    params = nn.meta.unbox(
        model.init(jax.random.PRNGKey(0), *inputs, ctx, method=_with_context)["params"]
    )
    return perturbed(params)


def test_padded_context_item_changes_nothing():
    model = UNet(CFG)
    inputs = _inputs()
    ctx = _context()
    params = _context_params(model, inputs, ctx)

    def apply(context):
        return model.apply({"params": params}, *inputs, context, method=_with_context)

    out = apply(ctx)
    # Change everything about the padded items (row 0: item 2; row 1: items 1-2).
    noisy = ctx.replace(
        images=ctx.images.at[0, 2].set(0.7).at[1, 1:].set(-0.3),
        text=ctx.text.at[1, 1:].set(5.0),
    )
    np.testing.assert_allclose(apply(noisy), out, atol=1e-5)
    # A real item does change the output.
    diff = apply(ctx.replace(images=ctx.images.at[0, 0].set(0.7))) - out
    assert float(jnp.abs(diff[0]).max()) > 1e-4
    np.testing.assert_allclose(diff[1], 0.0, atol=1e-5)  # other example untouched


def test_memory_is_the_encoder_output_per_item_and_reusable():
    # The memory of a context batch holds each item's last encoder features,
    # whatever the other items; computed once (jitted on its own, as a
    # sampler does) it gives the denoiser the output of encoding inline.
    model = UNet(CFG)
    inputs = _inputs()
    ctx = _context()
    params = _context_params(model, inputs, ctx)
    variables = {"params": params}
    memory = jax.jit(lambda c: model.apply(variables, c, method=UNet.encode_context))(
        ctx
    )
    # 16 px, one down-sampling: 8x8 tokens of 32 channels per item.
    assert memory.tokens.shape == (2, 3 * 64, 32) and memory.mask.shape == (2, 192)
    np.testing.assert_array_equal(memory.mask[0], np.repeat([1, 1, 0], 64))
    item = jax.tree.map(lambda x: x[:1, 1:2], ctx)  # row 0's item 1 alone
    alone = model.apply(variables, item, method=UNet.encode_context)
    # float32 convolutions over other batch sizes: reassociation only (~1e-6).
    np.testing.assert_allclose(
        alone.tokens[0], memory.tokens[0, 64:128], rtol=1e-5, atol=1e-5
    )
    inline = model.apply(variables, *inputs, ctx, method=_with_context)
    denoised = jax.jit(lambda m: model.apply(variables, *inputs, memory=m))(memory)
    # Same ops on the same values, split over two programs; the UNet's output is
    # O(1), so float32 reassociation stays far below 1e-5.
    np.testing.assert_allclose(denoised, inline, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(denoised - model.apply(variables, *inputs)).max()) > 1e-3


def test_context_level_chooses_the_memory_features():
    # context_level=0: the memory is the first (16x16, 16-channel) level's
    # output, and the coarser level is not run on the context items.
    model = UNet(dataclasses.replace(CFG, context_level=0))
    inputs, ctx = _inputs(), _context()
    params = _context_params(model, inputs, ctx)
    memory, state = model.apply(
        {"params": params},
        ctx,
        method=UNet.encode_context,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    assert memory.tokens.shape == (2, 3 * 256, 16)
    np.testing.assert_array_equal(memory.mask[1], np.repeat([1, 0, 0], 256))
    levels = state["intermediates"]
    (level_0,) = levels["enc_0"]["__call__"]
    np.testing.assert_array_equal(memory.tokens, level_0.reshape(2, 3 * 256, 16))
    assert "enc_1" not in levels
    # Python indexing: -2 is level 0 of two; the denoiser reads that memory.
    same = UNet(dataclasses.replace(CFG, context_level=-2))
    again = same.apply({"params": params}, ctx, method=UNet.encode_context)
    np.testing.assert_array_equal(again.tokens, memory.tokens)
    out = model.apply({"params": params}, *inputs, memory=memory)
    assert out.shape == inputs[0].shape
    with pytest.raises(ValueError, match="context_level"):
        dataclasses.replace(CFG, context_level=2)


def test_context_norm_normalises_each_memory_token():
    inputs, ctx = _inputs(), _context()
    plain = _context_params(UNet(CFG), inputs, ctx)
    assert "memory_norm" not in plain  # the option adds parameters, off by default
    model = UNet(dataclasses.replace(CFG, context_norm=True))
    params = _context_params(model, inputs, ctx)
    norm = params.pop("memory_norm")
    # Unit scale and zero bias: each real token comes out with zero mean and
    # unit variance over its channels (LayerNorm's epsilon 1e-6 aside).
    params["memory_norm"] = jax.tree.map(jnp.ones_like, norm)
    params["memory_norm"]["bias"] = jnp.zeros_like(norm["bias"])
    memory = model.apply({"params": params}, ctx, method=UNet.encode_context)
    raw = UNet(CFG).apply({"params": plain}, ctx, method=UNet.encode_context)
    tokens = np.asarray(memory.tokens)[np.asarray(memory.mask)]
    np.testing.assert_allclose(tokens.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(tokens.var(-1), 1.0, rtol=1e-4)
    raw_tokens = np.asarray(raw.tokens)[np.asarray(raw.mask)]
    assert np.abs(raw_tokens.var(-1) - 1.0).max() > 0.1  # without it: not unit


def test_context_item_text_moves_each_item_by_its_own_text():
    inputs, ctx = _inputs(), _context()
    assert "item_text" not in _context_params(UNet(CFG), inputs, ctx)  # opt-in
    model = UNet(dataclasses.replace(CFG, context_item_text=True))
    params = _context_params(model, inputs, ctx)  # the projection perturbed

    def tokens(context, p=params):
        memory = model.apply({"params": p}, context, method=UNet.encode_context)
        return np.asarray(memory.tokens).reshape(2, 3, -1, memory.tokens.shape[-1])

    base = tokens(ctx)
    # Zero-initialised: a model loaded from a checkpoint without it (a text
    # start) encodes its items as before.
    zero = dict(params, item_text=jax.tree.map(jnp.zeros_like, params["item_text"]))
    plain = UNet(CFG).apply(
        {"params": {k: v for k, v in zero.items() if k != "item_text"}},
        ctx,
        method=UNet.encode_context,
    )
    np.testing.assert_allclose(
        tokens(ctx, zero).reshape(plain.tokens.shape),
        plain.tokens,
        rtol=1e-6,
        atol=1e-6,
    )
    # The option's whole effect: each item's tokens shifted by one vector (the
    # same at every position), the projection of that item's pooled text.
    shift = base - tokens(ctx, zero)
    p = params["item_text"]
    want = np.asarray(ctx.text.mean(2) @ p["kernel"] + p["bias"])  # [B, K, C]
    valid = np.asarray(ctx.mask)
    np.testing.assert_allclose(
        shift[valid], np.broadcast_to(want[:, :, None], shift.shape)[valid], atol=1e-5
    )
    assert np.abs(want[0, 0] - want[0, 1]).max() > 1e-2  # items told apart


def _param_shapes(config) -> dict[str, list[int]]:
    from imagen_jax import train_state
    from imagen_jax.models.imagen import build_model
    from imagen_jax.text.tokenizers import make_tokenizer

    model = build_model(config, make_tokenizer(config).vocab_size)
    boxed = jax.eval_shape(lambda: train_state.init_params(model, config))
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(boxed))[0]
    return {"/".join(k.key for k in path): list(x.shape) for path, x in flat}


@pytest.mark.parametrize("kernels", ["cpu", "stock"])
@pytest.mark.parametrize("conditioning", ["text", "instruction"])
def test_param_names_and_shapes_are_those_checkpoints_hold(conditioning, kernels):
    # Recorded from the model before `encode_context` became a method of its
    # own (commit 56ef986): checkpoints written then must restore, whichever
    # kernels run the model.
    import json
    import pathlib

    from experiments import t2i_shapes

    config = t2i_shapes.get_config("smoke")
    config.model.conditioning = conditioning
    config.model.kernels = kernels
    config.data.max_context, config.data.ctx_text_len = 2, 8
    path = pathlib.Path(__file__).with_name("smoke_param_shapes.json")
    expected = json.loads(path.read_text())[conditioning]
    assert _param_shapes(config) == expected


def test_packed_context_encoding_matches_the_full_one_in_training():
    # 3 real items of 6; 1.5 slots per example = 3 slots: every item fits.
    model, inputs, ctx = UNet(CFG), _inputs(), _context()
    params = _context_params(model, inputs, ctx)
    packed = UNet(dataclasses.replace(CFG, context_slots=1.5))

    def memory(module, train):
        return module.apply({"params": params}, ctx, train, method=UNet.encode_context)

    full, slotted = memory(model, True), memory(packed, True)
    np.testing.assert_array_equal(slotted.mask, full.mask)
    valid = np.asarray(full.mask)
    # Same convolutions on a differently stacked batch: float32 rounding only.
    np.testing.assert_allclose(
        np.asarray(slotted.tokens)[valid], np.asarray(full.tokens)[valid], atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(slotted.tokens)[~valid], 0.0)
    # One slot per example (2 slots) drops the third item, as if masked.
    fewer = UNet(dataclasses.replace(CFG, context_slots=1.0))
    dropped = memory(fewer, True).mask.reshape(2, 3, -1)[..., 0]
    np.testing.assert_array_equal(dropped, [[True, True, False], [False, False, False]])
    # Sampling encodes every item whatever the setting.
    np.testing.assert_array_equal(memory(fewer, False).mask, full.mask)


# The XLA:CPU forms (custom-VJP Dense product, deferred-norm attention) and
# the stock ones differ in the order of float32 operations only, so in
# rounding only. A float32 sum of n terms is off by at most about
# n * u * sum|terms| (u = 2**-24), and, rounding errors having random signs,
# in practice by about sqrt(n) * u * sum|terms| (Higham & Mary, SIAM J. Sci.
# Comput. 41(5), 2019). The longest sums here have n ~ 600 terms (a 3x3 conv
# over 64 channels; 512 tokens in a Dense kernel gradient), an output or a
# gradient is reached through about 100 of them (context encoder, forward,
# backward), and each of the two forms rounds on its own:
# 2 * 100 * sqrt(600) * u ~ 3e-4, relative to the size of the values summed.
# That is the largest output (or gradient) of the network, not each entry:
# the conv biases in front of a GroupNorm have an exact gradient of 0, and
# what is computed there is the rounding of O(1) terms. (Measured: ~5e-7. A
# real difference, a scale or a mask, shows at 1e-2 or more.)
KERNELS_RTOL = 2 * 100 * 600**0.5 * 2.0**-24


def _assert_same_up_to_rounding(got, want):
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=KERNELS_RTOL * scale)


def test_cpu_and_stock_kernels_give_the_same_outputs_and_gradients():
    inputs, ctx = _inputs(), _context()  # padded text and context items
    params = _context_params(UNet(CFG), inputs, ctx)
    probe = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 16, 3))

    def value_and_grad(kernels):
        model = UNet(dataclasses.replace(CFG, kernels=kernels))

        def loss(params):
            args = (*inputs, ctx)
            out = model.apply({"params": params}, *args, method=_with_context)
            return jnp.sum(out * probe), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, out_cpu), grads_cpu = value_and_grad("cpu")
    (_, out_stock), grads_stock = value_and_grad("stock")
    _assert_same_up_to_rounding(out_stock, out_cpu)
    _assert_same_up_to_rounding(grads_stock, grads_cpu)
    assert float(jnp.abs(out_cpu).max()) > 0.1  # not trivially equal


def test_kernels_leave_parameters_alone_and_checkpoints_load_either_way(tmp_path):
    from imagen_jax import checkpointing

    inputs, ctx = _inputs(), _context()
    key = jax.random.PRNGKey(0)

    def init(kernels):
        model = UNet(dataclasses.replace(CFG, kernels=kernels))
        return model.init(key, *inputs, ctx, method=_with_context)["params"]

    boxed_cpu, boxed_stock = init("cpu"), init("stock")
    # Same names, shapes, logical axes and initial values.
    assert jax.tree.structure(boxed_cpu) == jax.tree.structure(boxed_stock)
    for a, b in zip(jax.tree.leaves(boxed_cpu), jax.tree.leaves(boxed_stock)):
        np.testing.assert_array_equal(a, b)
    # Trained with the CPU forms (here: perturbed), saved, restored into the
    # stock model's parameters.
    cpu = UNet(dataclasses.replace(CFG, kernels="cpu"))
    trained = _context_params(cpu, inputs, ctx)
    mngr = checkpointing.manager(str(tmp_path / "ckpt"))
    checkpointing.save(mngr, 1, {"params": trained}, None)
    mngr.wait_until_finished()
    restored, _ = checkpointing.restore(mngr, {"params": nn.meta.unbox(boxed_stock)})
    jax.tree.map(np.testing.assert_array_equal, restored["params"], trained)
    stock = UNet(dataclasses.replace(CFG, kernels="stock"))
    out = stock.apply(restored, *inputs, ctx, method=_with_context)
    want = cpu.apply({"params": trained}, *inputs, ctx, method=_with_context)
    _assert_same_up_to_rounding(out, want)


def test_kernels_auto_follows_the_backend_when_the_model_is_built():
    from experiments import t2i_shapes
    from imagen_jax.models.imagen import build_model

    config = t2i_shapes.get_config("smoke")
    assert config.model.kernels == "auto"
    on_cpu = jax.default_backend() == "cpu"
    assert build_model(config, 259).unet_config.kernels == (
        "cpu" if on_cpu else "stock"
    )
    config.model.kernels = "stock"
    assert build_model(config, 259).unet_config.kernels == "stock"
    config.model.kernels = "gpu"
    with pytest.raises(ValueError, match=r"kernels must be one of .*'gpu'"):
        build_model(config, 259)
    with pytest.raises(ValueError, match="kernels"):
        dataclasses.replace(CFG, kernels="gpu")
