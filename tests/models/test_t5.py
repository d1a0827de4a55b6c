"""Tests for the Flax T5 v1.1 encoder."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import t5

AXIS_VOCAB = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}
CONFIG = t5.T5Config.tiny(vocab_size=300)


def _inputs(batch=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, CONFIG.vocab_size, size=(batch, length)).astype(np.int32)
    lengths = np.array([length, length // 2])[:batch]
    mask = np.arange(length)[None, :] < lengths[:, None]
    return jnp.asarray(np.where(mask, tokens, 0)), jnp.asarray(mask)


@pytest.fixture(scope="module")
def variables():
    tokens, mask = _inputs()
    return jax.jit(t5.T5Encoder(CONFIG).init)(jax.random.key(0), tokens, mask)


def _ref_bucket(rel, bidirectional, num_buckets, max_distance):
    """T5's bucketing (Mesh TensorFlow / HF) in float64 numpy, one scalar at a time."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        bucket += num_buckets if rel > 0 else 0
        n = abs(rel)
    else:
        n = max(-rel, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(
        np.log(n / max_exact)
        / np.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    )
    return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (64, 256), (8, 20)])
def test_relative_position_bucket_matches_reference(
    bidirectional, num_buckets, max_distance
):
    rel = np.arange(-700, 700)
    got = np.asarray(
        t5.relative_position_bucket(
            jnp.asarray(rel), bidirectional, num_buckets, max_distance
        )
    )
    want = [_ref_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel]
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == num_buckets - 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtype(variables, dtype):
    tokens, mask = _inputs()
    model = t5.T5Encoder(t5.T5Config.tiny(vocab_size=300, dtype=dtype))
    out = jax.jit(model.apply)(variables, tokens, mask)
    chex.assert_shape(out, (2, 12, CONFIG.d_model))
    assert out.dtype == dtype
    chex.assert_tree_all_finite(out)
    # Final RMS norm with unit scale: every position has RMS ~1.
    rms = jnp.sqrt(jnp.mean(jnp.square(out.astype(jnp.float32)), axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=2e-2)


def test_bfloat16_compute_tracks_float32(variables):
    tokens, mask = _inputs()
    f32 = jax.jit(t5.T5Encoder(CONFIG).apply)(variables, tokens, mask)
    bf16_config = t5.T5Config.tiny(vocab_size=300, dtype=jnp.bfloat16)
    bf16 = jax.jit(t5.T5Encoder(bf16_config).apply)(variables, tokens, mask)
    real = np.asarray(mask)
    np.testing.assert_allclose(
        np.asarray(bf16, np.float32)[real], np.asarray(f32)[real], atol=0.15
    )


def test_padding_does_not_affect_real_positions(variables):
    tokens, mask = _inputs()
    apply = jax.jit(t5.T5Encoder(CONFIG).apply)
    out = apply(variables, tokens, mask)
    noisy = jnp.where(mask, tokens, jnp.arange(tokens.size).reshape(tokens.shape) % 250)
    out_noisy = apply(variables, noisy, mask)
    real = np.asarray(mask)
    np.testing.assert_array_equal(np.asarray(out)[real], np.asarray(out_noisy)[real])
    # The padded positions did change, so the check above is not vacuous.
    assert not np.allclose(np.asarray(out)[~real], np.asarray(out_noisy)[~real])


def test_real_tokens_interact(variables):
    tokens, mask = _inputs()
    apply = jax.jit(t5.T5Encoder(CONFIG).apply)
    out = apply(variables, tokens, mask)
    changed = apply(variables, tokens.at[:, 0].set(7), mask)
    assert not np.allclose(out[:, 1:], changed[:, 1:])


def test_every_param_has_logical_axis_names(variables):
    specs = nn.get_partition_spec(variables)["params"]
    params = nn.unbox(variables)["params"]
    flat_specs = jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    assert len(flat_specs) == len(jax.tree.leaves(params))
    for path, spec in flat_specs:
        leaf = params
        for key in path:
            leaf = leaf[key.key]
        assert len(spec) == leaf.ndim, (path, spec)
        assert set(spec) <= AXIS_VOCAB, (path, spec)
    boxed = jax.tree.leaves(
        variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    assert all(isinstance(b, nn.LogicallyPartitioned) for b in boxed)


def test_param_dtype_and_parameter_names(variables):
    params = nn.unbox(variables)["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert set(params) == {
        "token_embedder",
        "relpos_bias",
        "encoder_norm",
        *(f"layers_{i}" for i in range(CONFIG.num_layers)),
    }
    chex.assert_shape(
        params["layers_0"]["attention"]["query"]["kernel"],
        (CONFIG.d_model, CONFIG.num_heads, CONFIG.d_kv),
    )


def test_dropout_active_only_when_not_deterministic(variables):
    tokens, mask = _inputs()
    apply = jax.jit(t5.T5Encoder(CONFIG).apply)
    dropout_model = t5.T5Encoder(t5.T5Config.tiny(vocab_size=300, dropout_rate=0.5))
    apply_dropout = jax.jit(dropout_model.apply, static_argnames="deterministic")
    rngs = {"dropout": jax.random.key(1)}
    reference = apply(variables, tokens, mask)
    np.testing.assert_array_equal(apply_dropout(variables, tokens, mask), reference)
    dropped = apply_dropout(variables, tokens, mask, deterministic=False, rngs=rngs)
    assert not np.allclose(dropped, reference)


def test_pooled_is_masked_mean():
    emb = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(t5.pooled(emb, mask), [[1.0, 2.0], [0.0, 0.0]])


def test_presets_and_bad_values():
    xxl = t5.T5Config.preset("xxl")
    assert (xxl.d_model, xxl.d_ff, xxl.num_heads, xxl.num_layers) == (
        4096,
        10240,
        64,
        24,
    )
    assert t5.T5Config.preset("small", vocab_size=100).vocab_size == 100
    with pytest.raises(ValueError, match="huge"):
        t5.T5Config.preset("huge")
    with pytest.raises(ValueError, match="d_model"):
        t5.T5Config(vocab_size=10, d_model=0, d_kv=4, d_ff=8, num_layers=1, num_heads=1)
    with pytest.raises(ValueError, match="feed_forward_proj='gated-silu'"):
        t5.T5Config.tiny(feed_forward_proj="gated-silu")


def test_relu_feed_forward_has_one_input_projection():
    config = t5.T5Config.tiny(vocab_size=300, feed_forward_proj="relu")
    tokens, mask = _inputs()
    params = jax.eval_shape(t5.T5Encoder(config).init, jax.random.key(0), tokens, mask)
    mlp = nn.unbox(params)["params"]["layers_0"]["mlp"]
    assert set(mlp) == {"wi", "wo"}
    chex.assert_shape(mlp["wi"]["kernel"], (config.d_model, config.d_ff))


def _swap_gap(scale: float, swap=(2, 8)) -> float:
    """How far the encodings of a text with two of its tokens swapped are
    from the original's at those tokens (each token compared with itself)."""
    config = t5.T5Config.tiny(vocab_size=300, relative_attention_init_scale=scale)
    tokens, mask = _inputs(batch=1)
    i, j = swap
    swapped = tokens.at[0, i].set(tokens[0, j]).at[0, j].set(tokens[0, i])
    model = t5.T5Encoder(config)
    variables = model.init(jax.random.key(0), tokens, mask)
    out, out_swapped = (
        np.asarray(model.apply(variables, t, mask)) for t in (tokens, swapped)
    )
    moved = out_swapped[0, [j, i]] - out[0, [i, j]]
    return float(np.abs(moved).max() / np.abs(out[0, [i, j]]).max())


def test_relative_attention_init_scale_sets_how_much_word_order_counts():
    config = t5.T5Config.tiny(vocab_size=300, relative_attention_init_scale=10.0)
    tokens, mask = _inputs()
    params = nn.unbox(t5.T5Encoder(config).init(jax.random.key(0), tokens, mask))
    bias = np.asarray(params["params"]["relpos_bias"]["rel_embedding"])
    # 128 draws: the sample std is within 25% of the set one (about 4 sigma).
    np.testing.assert_allclose(bias.std(), 10.0 * config.d_model**-0.5, rtol=0.25)
    # Without a position bias the encoder reads a bag of words: swapping two
    # tokens swaps their encodings and nothing else (up to float rounding).
    assert _swap_gap(0.0) < 1e-5
    # At T5's scale word order barely counts; ten times it, it counts.
    assert _swap_gap(10.0) > 3 * _swap_gap(1.0) > 0
    with pytest.raises(ValueError, match="relative_attention_init_scale"):
        t5.T5Config.tiny(relative_attention_init_scale=-1.0)
