"""Tests for the Hugging Face T5 encoder weight converter and directory loader."""

import dataclasses
import json
import os

import chex
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


def _fake_state(config, seed=0):
    rng = np.random.default_rng(seed)
    shapes = t5_import.expected_hf_shapes(config)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _hf_config(config, **changes):
    """config.json of a HF T5 with the shapes of `config`."""
    fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
    hf = {f: getattr(config, f) for f in fields}
    hf.update(model_type="t5", feed_forward_proj=config.feed_forward_proj)
    hf.update(changes)
    return hf


def _write_hf_dir(directory, state, hf_config, shards=1):
    """A HF model directory written without torch: config.json and the
    tensors in `shards` safetensors files (with an index when more than 1)."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
    names = sorted(state)
    if shards == 1:
        safetensors_numpy.save_file(state, os.path.join(directory, "model.safetensors"))
        return
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        safetensors_numpy.save_file(part, os.path.join(directory, file))
        weight_map.update(dict.fromkeys(part, file))
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


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


def test_relu_feed_forward_of_the_original_t5():
    config = dataclasses.replace(CONFIG, feed_forward_proj="relu")
    state = _fake_state(config)
    assert "encoder.block.0.layer.1.DenseReluDense.wi.weight" in state
    params = t5_import.convert_hf_t5_encoder(state, config)
    wi = state["encoder.block.1.layer.1.DenseReluDense.wi.weight"]
    np.testing.assert_array_equal(params["layers_1"]["mlp"]["wi"]["kernel"], wi.T)
    tokens = jnp.ones((1, 4), jnp.int32)
    out = t5.T5Encoder(config).apply({"params": params}, tokens, tokens > 0)
    assert out.shape == (1, 4, CONFIG.d_model)


def test_long_key_lists_are_cut_to_one_short_line():
    state = _fake_state(CONFIG)
    deeper = dataclasses.replace(CONFIG, num_layers=12)
    with pytest.raises(ValueError) as e:
        t5_import.convert_hf_t5_encoder(state, deeper)
    # 10 missing blocks of 9 tensors each: 6 named, the rest counted.
    assert "and 84 more" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("shards", [1, 3])
def test_loads_a_directory_skipping_the_decoder(tmp_path, shards):
    import ml_dtypes

    state = _fake_state(CONFIG)
    # A whole seq2seq checkpoint in bfloat16: the decoder and LM head are skipped.
    stored = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    stored["decoder.block.0.layer.0.SelfAttention.q.weight"] = stored[
        "encoder.block.0.layer.0.SelfAttention.q.weight"
    ]
    stored["lm_head.weight"] = stored["shared.weight"]
    _write_hf_dir(tmp_path, stored, _hf_config(CONFIG), shards=shards)
    config, params = t5_import.load_hf_t5_encoder(str(tmp_path))
    assert config == CONFIG
    rounded = {k: v.astype(np.float32) for k, v in stored.items()}
    want = t5_import.convert_hf_t5_encoder(
        {k: v for k, v in rounded.items() if k in state}, CONFIG
    )
    chex.assert_trees_all_equal(params, want)
    assert params["encoder_norm"]["scale"].dtype == np.float32


def test_tied_embedding_stored_under_the_encoder_name(tmp_path):
    state = _fake_state(CONFIG)
    state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
    _write_hf_dir(tmp_path, state, _hf_config(CONFIG))
    _, params = t5_import.load_hf_t5_encoder(str(tmp_path))
    np.testing.assert_array_equal(
        params["token_embedder"]["embedding"], state["encoder.embed_tokens.weight"]
    )


def _one_line_error(error_type, match, fn, *args):
    with pytest.raises(error_type, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)


def test_directory_errors_are_one_line(tmp_path):
    load = t5_import.load_hf_t5_encoder
    _one_line_error(FileNotFoundError, "does not exist", load, str(tmp_path / "no"))
    _one_line_error(FileNotFoundError, "no config.json", load, str(tmp_path))

    state = _fake_state(CONFIG)
    bert = tmp_path / "bert"
    _write_hf_dir(bert, state, _hf_config(CONFIG, model_type="bert"))
    _one_line_error(ValueError, "model_type 'bert'", load, str(bert))
    silu = tmp_path / "silu"
    _write_hf_dir(silu, state, _hf_config(CONFIG, feed_forward_proj="gated-silu"))
    _one_line_error(ValueError, "feed_forward_proj 'gated-silu'", load, str(silu))
    # Architecture mismatch: config.json says 3 layers, the weights have 2.
    deeper = tmp_path / "deeper"
    _write_hf_dir(deeper, state, _hf_config(CONFIG, num_layers=3))
    _one_line_error(ValueError, f"{deeper}: .*missing.*block.2", load, str(deeper))
    wider = tmp_path / "wider"
    _write_hf_dir(wider, state, _hf_config(CONFIG, d_model=128))
    _one_line_error(
        ValueError, r"shared.weight has shape \(100, 64\)", load, str(wider)
    )

    sharded = tmp_path / "sharded"
    _write_hf_dir(sharded, state, _hf_config(CONFIG), shards=3)
    os.remove(sharded / "model-00002-of-00003.safetensors")
    _one_line_error(FileNotFoundError, "shard model-00002-of-00003", load, str(sharded))

    torch_only = tmp_path / "torch_only"
    _write_hf_dir(torch_only, {}, _hf_config(CONFIG))
    os.remove(torch_only / "model.safetensors")
    (torch_only / "pytorch_model.bin").write_bytes(b"")
    _one_line_error(FileNotFoundError, "only.*pytorch_model.bin", load, str(torch_only))

    truncated = tmp_path / "truncated"
    _write_hf_dir(truncated, state, _hf_config(CONFIG))
    path = truncated / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _one_line_error(ValueError, "truncated", load, str(truncated))

    _one_line_error(
        FileNotFoundError, "no spiece.model", t5_import.hf_spiece_path, str(bert)
    )


def _save_hf_model(directory, hf_config, seq2seq, max_shard_size, bfloat16):
    """Saves a random transformers T5 (random norm scales too) and returns its
    encoder, in float32, as torch runs it."""
    import torch
    import transformers

    torch.manual_seed(0)
    cls = (
        transformers.T5ForConditionalGeneration
        if seq2seq
        else transformers.T5EncoderModel
    )
    model = cls(hf_config).eval()
    with torch.no_grad():
        # Random norm scales, so a mis-mapped norm cannot hide behind init ones.
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
    if bfloat16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    # The reference runs the stored (possibly bfloat16-rounded) weights in float32.
    return model.float().get_encoder()


@pytest.mark.parametrize(
    "seq2seq,feed_forward_proj,max_shard_size,bfloat16",
    [
        (False, "gated-gelu", "50GB", False),  # T5EncoderModel, one file
        (True, "gated-gelu", "60KB", False),  # Flan-T5-like, sharded
        (True, "relu", "60KB", False),  # the original T5, sharded
        (False, "gated-gelu", "50GB", True),  # stored in bfloat16
    ],
)
def test_parity_with_hf_t5_encoder(
    tmp_path, seq2seq, feed_forward_proj, max_shard_size, bfloat16
):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    config = dataclasses.replace(CONFIG, feed_forward_proj=feed_forward_proj)
    hf_config = transformers.T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        feed_forward_proj=feed_forward_proj,
        dropout_rate=0.0,
        layer_norm_epsilon=config.layer_norm_epsilon,
        decoder_start_token_id=0,
    )
    if feed_forward_proj == "gated-gelu":
        assert hf_config.is_gated_act and hf_config.dense_act_fn == "gelu_new"
    encoder = _save_hf_model(tmp_path, hf_config, seq2seq, max_shard_size, bfloat16)
    sharded = max_shard_size != "50GB"
    assert os.path.exists(tmp_path / "model.safetensors.index.json") == sharded
    if sharded:
        assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 3
    loaded_config, params = t5_import.load_hf_t5_encoder(str(tmp_path))
    assert loaded_config == config

    rng = np.random.default_rng(0)
    # Length 40 > max_distance / 4, so the logarithmic buckets are exercised.
    tokens = rng.integers(2, config.vocab_size, size=(3, 40)).astype(np.int32)
    mask = np.arange(40)[None, :] < np.array([[40], [23], [5]])
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    with torch.no_grad():
        want = encoder(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
        ).last_hidden_state.numpy()
    got = jax.jit(t5.T5Encoder(config).apply)({"params": params}, tokens, mask)
    # Both sides run in float32 (eps 1.2e-7). Each output element is a chain of
    # ~10 dot products of length <= 128 over O(1) values (embeddings have std 1;
    # every sub-layer input is RMS-normalised), so rounding differences from a
    # different summation order are ~sqrt(128) * 1.2e-7 * O(1) ~ 1e-6 per
    # matmul, and tanh-GELU / exp / rsqrt implementations differ by a few ulp.
    # Across two residual layers and the final norm this stays ~1e-5 (measured:
    # 2e-6 on outputs of magnitude ~5); 1e-4 leaves a wide margin while a
    # mapping error (transpose, head split, bias layout) gives O(0.1-1) errors.
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], atol=1e-4, rtol=0)
