"""Converts Hugging Face `T5EncoderModel` weights to `imagen_jax.models.t5` params.

Usage (torch and transformers are needed only to read the checkpoint):

    state = {k: v.float().numpy() for k, v in hf_model.state_dict().items()}
    params = convert_hf_t5_encoder(state, T5Config.preset("xxl"))
    T5Encoder(config).apply({"params": params}, tokens, mask)

Torch `Linear` weights are stored [out, in]; Flax kernels are [in, out] with the
head axis split out, so every projection is transposed and reshaped here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from imagen_jax.models.t5 import T5Config

_SHARED = "shared.weight"
# HF state dicts also hold the tied copy of the shared embedding under this name.
_TIED_EMBED = "encoder.embed_tokens.weight"
_REL_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
_FINAL_NORM = "encoder.final_layer_norm.weight"


def _block_shapes(config: T5Config, i: int) -> dict[str, tuple[int, ...]]:
    """HF tensor names and [out, in] shapes of encoder block `i`."""
    inner = config.num_heads * config.d_kv
    prefix = f"encoder.block.{i}.layer"
    shapes = {
        f"{prefix}.0.SelfAttention.{p}.weight": (inner, config.d_model) for p in "qkv"
    }
    shapes[f"{prefix}.0.SelfAttention.o.weight"] = (config.d_model, inner)
    shapes[f"{prefix}.0.layer_norm.weight"] = (config.d_model,)
    for p in ("wi_0", "wi_1"):
        shapes[f"{prefix}.1.DenseReluDense.{p}.weight"] = (config.d_ff, config.d_model)
    shapes[f"{prefix}.1.DenseReluDense.wo.weight"] = (config.d_model, config.d_ff)
    shapes[f"{prefix}.1.layer_norm.weight"] = (config.d_model,)
    return shapes


def expected_hf_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """The required HF tensor names of an encoder with `config`, and their shapes."""
    shapes = {
        _SHARED: (config.vocab_size, config.d_model),
        _REL_BIAS: (config.relative_attention_num_buckets, config.num_heads),
        _FINAL_NORM: (config.d_model,),
    }
    for i in range(config.num_layers):
        shapes.update(_block_shapes(config, i))
    return shapes


def _check_keys_and_shapes(
    state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Raises ValueError on missing, unexpected or mis-shaped tensors."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - {_TIED_EMBED})
    if missing or unexpected:
        raise ValueError(
            f"T5 encoder state dict does not match the config: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise ValueError(f"{name} has shape {state[name].shape}, expected {shape}")
    if _TIED_EMBED in state and not np.array_equal(state[_TIED_EMBED], state[_SHARED]):
        raise ValueError(f"{_TIED_EMBED} differs from {_SHARED}; expected tied weights")


def _convert_block(
    state: Mapping[str, np.ndarray], config: T5Config, i: int
) -> dict[str, Any]:
    """Flax params of block `i` (kernels transposed to [in, out], heads split)."""
    heads, d_kv = config.num_heads, config.d_kv
    attn = f"encoder.block.{i}.layer.0.SelfAttention"
    mlp = f"encoder.block.{i}.layer.1.DenseReluDense"

    def qkv(p: str) -> dict[str, np.ndarray]:
        return {
            "kernel": state[f"{attn}.{p}.weight"].T.reshape(config.d_model, heads, d_kv)
        }

    return {
        "pre_attention_layer_norm": {
            "scale": state[f"encoder.block.{i}.layer.0.layer_norm.weight"]
        },
        "attention": {
            "query": qkv("q"),
            "key": qkv("k"),
            "value": qkv("v"),
            "out": {
                "kernel": state[f"{attn}.o.weight"].T.reshape(
                    heads, d_kv, config.d_model
                )
            },
        },
        "pre_mlp_layer_norm": {
            "scale": state[f"encoder.block.{i}.layer.1.layer_norm.weight"]
        },
        "mlp": {
            p: {"kernel": state[f"{mlp}.{p}.weight"].T} for p in ("wi_0", "wi_1", "wo")
        },
    }


def convert_hf_t5_encoder(
    state_dict: Mapping[str, np.ndarray], config: T5Config
) -> dict[str, Any]:
    """Maps a Hugging Face `T5EncoderModel` state dict to `T5Encoder` params.

    Args:
      state_dict: Tensor name -> array (numpy or anything `np.asarray` accepts;
        convert bfloat16 torch tensors with `.float()` first).
      config: The encoder config the weights were trained with.

    Returns:
      The `params` collection of `T5Encoder(config)`: a nested dict of numpy
      arrays in `config.param_dtype` (apply as `{"params": params}`).

    Raises:
      ValueError: Naming missing, unexpected or mis-shaped tensors.
    """
    state = {name: np.asarray(value) for name, value in state_dict.items()}
    _check_keys_and_shapes(state, expected_hf_shapes(config))
    params: dict[str, Any] = {
        "token_embedder": {"embedding": state[_SHARED]},
        "relpos_bias": {"rel_embedding": state[_REL_BIAS].T},
        "encoder_norm": {"scale": state[_FINAL_NORM]},
    }
    for i in range(config.num_layers):
        params[f"layers_{i}"] = _convert_block(state, config, i)
    dtype = np.dtype(config.param_dtype)
    return jax.tree.map(lambda x: np.ascontiguousarray(x, dtype=dtype), params)
