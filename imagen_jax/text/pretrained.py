"""A pretrained Hugging Face T5 as the frozen text encoder of a training run.

    python -m launch.train --config experiments/t2i_own_data.py:res=64 \\
        --workdir runs/photos --config.data.dataset=photos \\
        --config.text.pretrained=/models/flan-t5-base

`config.text.pretrained` names a local Hugging Face directory of a T5, T5 v1.1
or Flan-T5 model (`t5_import.load_hf_t5_encoder`: config.json, safetensors
weights, sharded or not, and spiece.model). `resolve` writes the encoder's
architecture, its sentencepiece tokenizer and `frozen=True` into
`config.text`, so the run's config.json describes the network without the
directory's config.json; a run that starts (from scratch or `init_from`)
loads the encoder's weights with `with_pretrained_text`. A frozen encoder gets
no optimizer state and no updates, and no gradient flows into it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax.text import t5_import

# `T5Config` fields that `config.text` holds under the same names.
ARCH_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_heads",
    "feed_forward_proj",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "layer_norm_epsilon",
)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config`, or a copy whose `text` section is the pretrained encoder's.

    Raises:
      FileNotFoundError, ValueError: The directory, its config.json or its
        spiece.model is missing, or the model is not a T5 (one line each).
    """
    directory = config.text.get("pretrained", "")
    if not directory:
        return config
    t5_config = t5_import.hf_t5_config(directory)
    out = ml_collections.ConfigDict(config.to_dict())
    for field in ARCH_FIELDS:
        out.text[field] = getattr(t5_config, field)
    out.text.tokenizer = "sentencepiece"
    out.text.vocab_path = t5_import.hf_spiece_path(directory)
    out.text.frozen = True
    return out


def load_params(directory: str, like: Any) -> Any:
    """The converted encoder of `directory`, placed as the arrays of `like`.

    Every host converts the encoder in host memory and hands its devices only
    the slices they hold, so this works the same on one CPU and on a pod.

    Args:
      directory: The Hugging Face T5 directory.
      like: The `text_encoder` params of the model (arrays or
        ShapeDtypeStructs with shardings), whose shapes the weights must have.

    Raises:
      ValueError: A weight's shape or the tree differs from `like` (the
        directory is not the model `config.text` describes).
    """
    _, host = t5_import.load_hf_t5_encoder(directory)
    return place_params(host, like, directory)


def place_params(host: Any, like: Any, directory: str) -> Any:
    """The converted encoder `host` (numpy arrays read from `directory`) as
    the arrays of `like`, each device given only the slices it holds.

    Raises:
      ValueError: As `load_params`.
    """
    if jax.tree.structure(host) != jax.tree.structure(like):
        raise ValueError(
            f"the T5 encoder of {directory} has other parameters than the model's "
            "text encoder; was config.text changed after resolving it?"
        )

    def place(path, value: np.ndarray, target) -> jax.Array:
        if value.shape != target.shape:
            raise ValueError(
                f"{jax.tree_util.keystr(path)} of the T5 encoder of {directory} has "
                f"shape {value.shape}; the model's text encoder has {target.shape}"
            )
        value = value.astype(target.dtype)
        return jax.make_array_from_callback(
            target.shape, target.sharding, lambda index: value[index]
        )

    return jax.tree_util.tree_map_with_path(place, host, like)


def with_pretrained_text(state: Any, config: ml_collections.ConfigDict) -> Any:
    """`state` (a TrainState) with the pretrained encoder as its text encoder,
    in both the trained and the EMA params."""
    params = load_params(config.text.pretrained, state.params["text_encoder"])
    # Separate buffers: the train step donates both trees.
    ema = jax.tree.map(jnp.copy, params)
    return state.replace(
        params={**state.params, "text_encoder": params},
        ema_params={**state.ema_params, "text_encoder": ema},
    )
