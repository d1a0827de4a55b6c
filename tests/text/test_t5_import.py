"""Tests for the Hugging Face T5 encoder weight converter."""

import dataclasses
import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import t5
from imagen_jax.text import t5_import

# A 2-layer, 64-wide encoder: small enough to build and run in a second.
CONFIG = t5.T5Config(
    vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4
)

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


def _fake_state(config, seed=0):
    rng = np.random.default_rng(seed)
    shapes = t5_import.expected_hf_shapes(config)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_converted_tree_matches_model_params():
    params = t5_import.convert_hf_t5_encoder(_fake_state(CONFIG), CONFIG)
    tokens = jnp.zeros((1, 4), jnp.int32)
    abstract = jax.eval_shape(
        t5.T5Encoder(CONFIG).init, jax.random.key(0), tokens, tokens > 0
    )
    expected = nn.unbox(abstract)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    assert shapes == jax.tree.map(lambda x: (x.shape, x.dtype), expected)


def test_converter_transposes_and_splits_heads():
    state = _fake_state(CONFIG)
    params = t5_import.convert_hf_t5_encoder(state, CONFIG)
    q = state["encoder.block.1.layer.0.SelfAttention.q.weight"]  # [H * d_kv, d_model]
    # Output feature h * d_kv + d of torch's q is kernel[:, h, d] in Flax.
    np.testing.assert_array_equal(
        params["layers_1"]["attention"]["query"]["kernel"][:, 2, 5], q[2 * 16 + 5]
    )
    o = state["encoder.block.0.layer.0.SelfAttention.o.weight"]  # [d_model, H * d_kv]
    np.testing.assert_array_equal(
        params["layers_0"]["attention"]["out"]["kernel"][3, 1], o[:, 3 * 16 + 1]
    )
    rel = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    np.testing.assert_array_equal(params["relpos_bias"]["rel_embedding"], rel.T)


def test_converter_casts_to_param_dtype():
    config = dataclasses.replace(CONFIG, param_dtype=jnp.bfloat16)
    params = t5_import.convert_hf_t5_encoder(_fake_state(config), config)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_missing_and_unexpected_keys_are_named():
    state = _fake_state(CONFIG)
    del state["encoder.final_layer_norm.weight"]
    state["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((64, 64))
    with pytest.raises(ValueError, match="final_layer_norm.*decoder.block.0"):
        t5_import.convert_hf_t5_encoder(state, CONFIG)


def test_wrong_shape_and_untied_embedding_raise():
    state = _fake_state(CONFIG)
    state["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((128, 64))
    with pytest.raises(
        ValueError, match=r"block.1.layer.1.DenseReluDense.wo.*\(64, 128\)"
    ):
        t5_import.convert_hf_t5_encoder(state, CONFIG)
    state = _fake_state(CONFIG)
    state["encoder.embed_tokens.weight"] = state["shared.weight"].copy()
    t5_import.convert_hf_t5_encoder(state, CONFIG)  # The tied copy is accepted.
    state["encoder.embed_tokens.weight"][0, 0] += 1.0
    with pytest.raises(ValueError, match="tied"):
        t5_import.convert_hf_t5_encoder(state, CONFIG)


@pytest.mark.skipif(
    not HAVE_TORCH,
    reason="torch and transformers are not installed (requirements-test-parity.txt)",
)
def test_parity_with_hf_t5_encoder():
    import torch
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.T5Config(
        vocab_size=CONFIG.vocab_size,
        d_model=CONFIG.d_model,
        d_kv=CONFIG.d_kv,
        d_ff=CONFIG.d_ff,
        num_layers=CONFIG.num_layers,
        num_heads=CONFIG.num_heads,
        relative_attention_num_buckets=CONFIG.relative_attention_num_buckets,
        relative_attention_max_distance=CONFIG.relative_attention_max_distance,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        layer_norm_epsilon=CONFIG.layer_norm_epsilon,
    )
    assert hf_config.is_gated_act and hf_config.dense_act_fn == "gelu_new"
    model = transformers.T5EncoderModel(hf_config).eval()
    with torch.no_grad():
        # Random norm scales, so a mis-mapped norm cannot hide behind init ones.
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = t5_import.convert_hf_t5_encoder(state, CONFIG)

    rng = np.random.default_rng(0)
    # Length 40 > max_distance / 4, so the logarithmic buckets are exercised.
    tokens = rng.integers(2, CONFIG.vocab_size, size=(3, 40)).astype(np.int32)
    mask = np.arange(40)[None, :] < np.array([[40], [23], [5]])
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
        ).last_hidden_state.numpy()
    got = jax.jit(t5.T5Encoder(CONFIG).apply)({"params": params}, tokens, mask)
    # Both sides run in float32 (eps 1.2e-7). Each output element is a chain of
    # ~10 dot products of length <= 128 over O(1) values (embeddings have std 1;
    # every sub-layer input is RMS-normalised), so rounding differences from a
    # different summation order are ~sqrt(128) * 1.2e-7 * O(1) ~ 1e-6 per
    # matmul, and tanh-GELU / exp / rsqrt implementations differ by a few ulp.
    # Across two residual layers and the final norm this stays ~1e-5 (measured:
    # 2e-6 on outputs of magnitude ~5); 1e-4 leaves a wide margin while a
    # mapping error (transpose, head split, bias layout) gives O(0.1-1) errors.
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], atol=1e-4, rtol=0)
