"""Converts Hugging Face T5 encoder weights to `imagen_jax.models.t5` params.

From a local Hugging Face directory of a T5, T5 v1.1 or Flan-T5 model (a
`T5EncoderModel` or a whole `T5ForConditionalGeneration`; no torch needed):

    config, params = load_hf_t5_encoder("/models/flan-t5-xl")
    T5Encoder(config).apply({"params": params}, tokens, mask)

The directory holds `config.json` and the weights as `model.safetensors`, or
as `model.safetensors.index.json` and the shards it names; only the encoder's
tensors are read (memory-mapped). From a state dict already in memory:

    state = {k: v.float().numpy() for k, v in hf_model.state_dict().items()}
    params = convert_hf_t5_encoder(state, T5Config.preset("xxl"))

Torch `Linear` weights are stored [out, in]; Flax kernels are [in, out] with the
head axis split out, so every projection is transposed and reshaped here.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np

from imagen_jax.models.t5 import FEED_FORWARD_PROJS, T5Config

_SHARED = "shared.weight"
# HF state dicts also hold the tied copy of the shared embedding under this name.
_TIED_EMBED = "encoder.embed_tokens.weight"
_REL_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
_FINAL_NORM = "encoder.final_layer_norm.weight"


def _mlp_inputs(config: T5Config) -> tuple[str, ...]:
    """Names of the feed-forward input projections (HF and T5X alike)."""
    return ("wi_0", "wi_1") if config.feed_forward_proj == "gated-gelu" else ("wi",)


def _block_shapes(config: T5Config, i: int) -> dict[str, tuple[int, ...]]:
    """HF tensor names and [out, in] shapes of encoder block `i`."""
    inner = config.num_heads * config.d_kv
    prefix = f"encoder.block.{i}.layer"
    shapes = {
        f"{prefix}.0.SelfAttention.{p}.weight": (inner, config.d_model) for p in "qkv"
    }
    shapes[f"{prefix}.0.SelfAttention.o.weight"] = (config.d_model, inner)
    shapes[f"{prefix}.0.layer_norm.weight"] = (config.d_model,)
    for p in _mlp_inputs(config):
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


def _some(names: list[str], shown: int = 6) -> str:
    """The first `shown` names and how many more: one readable line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{names[:shown]}{more}"


def _check_keys_and_shapes(
    state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Raises ValueError on missing, unexpected or mis-shaped tensors."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - {_TIED_EMBED})
    if missing or unexpected:
        raise ValueError(
            "T5 encoder state dict does not match the config: missing keys "
            f"{_some(missing)}, unexpected keys {_some(unexpected)}"
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
            p: {"kernel": state[f"{mlp}.{p}.weight"].T}
            for p in (*_mlp_inputs(config), "wo")
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


HF_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SPIECE = "spiece.model"

# safetensors dtype names -> numpy dtypes (the float types checkpoints use).
_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}


def hf_t5_config(directory: str, **overrides) -> T5Config:
    """The `T5Config` of the encoder described by `directory/config.json`.

    Args:
      directory: A Hugging Face model directory.
      **overrides: Other `T5Config` fields, e.g. `dtype=jnp.bfloat16`.

    Raises:
      FileNotFoundError: No such directory, or no config.json in it.
      ValueError: The model is not a T5 (`model_type`), or its feed-forward
        network is not one `T5Encoder` has.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"T5 directory {directory} does not exist")
    path = os.path.join(directory, HF_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no {HF_CONFIG}: not a HF model")
    with open(path) as f:
        hf = json.load(f)
    if hf.get("model_type") != "t5":
        raise ValueError(
            f"{path} has model_type {hf.get('model_type')!r}; expected a T5, "
            "T5 v1.1 or Flan-T5 model ('t5')"
        )
    # Older T5 configs predate these fields; HF's defaults apply.
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARD_PROJS:
        raise ValueError(
            f"{path} has feed_forward_proj {proj!r}; T5Encoder has {FEED_FORWARD_PROJS}"
        )
    return T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        d_kv=hf["d_kv"],
        d_ff=hf["d_ff"],
        num_layers=hf["num_layers"],
        num_heads=hf["num_heads"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=proj,
        **overrides,
    )


def hf_spiece_path(directory: str) -> str:
    """The sentencepiece model of a HF T5 directory's tokenizer.

    Raises:
      FileNotFoundError: The directory has no spiece.model.
    """
    path = os.path.join(directory, SPIECE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{directory} has no {SPIECE} (the sentencepiece model of its tokenizer)"
        )
    return path


def _safetensors_header(path: str) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        (size,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
        raw = f.read(size) if size and size < 100 << 20 else b""
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path} is not a safetensors file (unreadable header)") from e
    header.pop("__metadata__", None)
    return header, 8 + size


def read_safetensors(path: str, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Tensors `names` of a safetensors file, memory-mapped (read when used).

    Raises:
      ValueError: An unreadable or truncated file, a name it lacks, or a
        dtype other than F64/F32/F16/BF16.
    """
    header, start = _safetensors_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name in names:
        if name not in header:
            raise ValueError(f"{path} has no tensor {name}")
        info = header[name]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(
                f"{name} in {path} has dtype {info['dtype']}; expected one of "
                f"{sorted(_SAFETENSORS_DTYPES)}"
            )
        begin, end = (start + offset for offset in info["data_offsets"])
        if end > data.size or end - begin != dtype.itemsize * np.prod(info["shape"]):
            raise ValueError(f"{path} is truncated or damaged at tensor {name}")
        out[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return out


def _weight_files(directory: str) -> dict[str, str]:
    """Tensor name -> the safetensors file holding it, from the index (sharded
    checkpoints) or the single file's header."""
    index = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {k: os.path.join(directory, v) for k, v in weight_map.items()}
    single = os.path.join(directory, SAFETENSORS)
    if os.path.exists(single):
        return dict.fromkeys(_safetensors_header(single)[0], single)
    others = sorted(
        f for f in os.listdir(directory) if f.endswith((".bin", ".msgpack", ".h5"))
    )
    raise FileNotFoundError(
        f"{directory} has no {SAFETENSORS} or {SAFETENSORS_INDEX}"
        + (
            f" (only {others}: re-save the model with transformers' save_pretrained)"
            if others
            else ""
        )
    )


def read_hf_encoder_state(directory: str) -> dict[str, np.ndarray]:
    """The encoder tensors of a HF T5 directory (decoder and LM head skipped).

    A checkpoint that stored the tied embedding only as
    `encoder.embed_tokens.weight` gives it as `shared.weight`.

    Raises:
      FileNotFoundError: No safetensors weights, or a shard the index names
        is missing.
      ValueError: As `read_safetensors`.
    """
    files = _weight_files(directory)
    by_file: dict[str, list[str]] = {}
    for name, path in files.items():
        if name == _SHARED or name.startswith("encoder."):
            by_file.setdefault(path, []).append(name)
    state = {}
    for path, names in sorted(by_file.items()):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"shard {os.path.basename(path)} named in {SAFETENSORS_INDEX} is "
                f"missing from {directory}"
            )
        state.update(read_safetensors(path, names))
    if _SHARED not in state and _TIED_EMBED in state:
        state[_SHARED] = state.pop(_TIED_EMBED)
    return state


def load_hf_t5_encoder(directory: str, **overrides) -> tuple[T5Config, dict[str, Any]]:
    """The config and converted params of the T5 encoder in a HF directory.

    Args:
      directory: Holds config.json and model.safetensors (or
        model.safetensors.index.json and its shards).
      **overrides: Other `T5Config` fields (e.g. `param_dtype`).

    Raises:
      FileNotFoundError, ValueError: Naming the missing file, the mismatched
        tensor or the unsupported architecture in one line.
    """
    config = hf_t5_config(directory, **overrides)
    state = read_hf_encoder_state(directory)
    try:
        return config, convert_hf_t5_encoder(state, config)
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from e
