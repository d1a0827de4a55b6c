"""Serving export (`launch.export`): a versioned bundle served with jax alone.

The bundle (layout in `serving_bundle`) holds the (EMA) parameters, the run's
config, the tokenizer and, per chosen batch size, the whole request as one
`jax.export`-serialized function: text encoder, context encoder, guided
sampler. It is `sampling.make_generate_fn` itself, so a bundle draws the
images `launch.sample` draws for the same request and seed. Sampler steps,
guidance scales, oscillation and the PRNG key are runtime inputs (the sampler
loops over a traced step count); the sampler, the guidance rule, the
resolution and the batch sizes are fixed at export. A fresh process loads the
bundle with `serving_bundle` (copied into it as `loader.py`), which imports
neither flax nor this package's training code.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax import conditioning as conditioning_lib
from imagen_jax import inference, sampling, serving_bundle
from imagen_jax.diffusion import samplers
from imagen_jax.instructions import LIMITS
from imagen_jax.text import tokenizers

# Storage dtypes of the parameters in a bundle; the exported function casts
# them back to float32, the model's parameter dtype.
PARAM_DTYPES = ("float32", "bfloat16")

_SCALARS = {
    "rng": None,  # the PRNG key data: its shape depends on the PRNG impl
    "num_steps": ((), "int32"),
    "guidance_text": ((), "float32"),
    "guidance_image": ((), "float32"),
    "oscillate": ((), "int32"),
}


def _check_options(
    out: str,
    overwrite: bool,
    batch_sizes: Sequence[int],
    sampler: str | None,
    param_dtype: str,
    max_steps: int,
) -> None:
    """Raises ValueError on a bad option, before the checkpoint is read."""
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise ValueError(
            f"export directory {out!r} exists and is not empty (pass overwrite)"
        )
    if not batch_sizes or any(
        not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batch_sizes
    ):
        raise ValueError(f"batch sizes must be positive integers, got {batch_sizes}")
    if sampler is not None and sampler not in samplers.get_sampler_names():
        raise ValueError(
            f"unknown sampler {sampler!r}; expected one of "
            f"{samplers.get_sampler_names()}"
        )
    if param_dtype not in PARAM_DTYPES:
        raise ValueError(
            f"unknown parameter dtype {param_dtype!r}; expected one of {PARAM_DTYPES}"
        )
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")


def _param_names(params) -> tuple[list[str], list[np.ndarray], Any]:
    """Names ("unet/conv_in/kernel"), host float32 values and tree structure."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(str(k.key) for k in path) for path, _ in leaves]
    values = [np.asarray(jax.device_get(v), np.float32) for _, v in leaves]
    return names, values, treedef


def _stored(values: list[np.ndarray], param_dtype: str) -> list[np.ndarray]:
    """The parameters as stored; bfloat16 (nearest rounding) as uint16 bits,
    since .npy files have no bfloat16."""
    if param_dtype == "float32":
        return values
    return [np.asarray(v.astype(jnp.bfloat16)).view(np.uint16) for v in values]


def input_signature(
    config: ml_collections.ConfigDict,
    kind: conditioning_lib.Conditioning,
    rule: str,
) -> dict[str, dict]:
    """The exported function's `inputs`: name -> {"shape", "dtype"}; "B" is
    the batch size."""
    shapes = conditioning_lib.batch_shapes(config.data, kind, 1)
    out = {}
    for name in kind.batch_fields:
        shape, dtype = shapes[name]
        out[name] = {"shape": ["B", *shape[1:]], "dtype": np.dtype(dtype).name}
    key = jax.random.key_data(jax.random.PRNGKey(0))
    for name, spec in _SCALARS.items():
        shape, dtype = spec or (key.shape, key.dtype.name)
        out[name] = {"shape": list(shape), "dtype": dtype}
    if rule == "interleaved":
        out["eta"] = {"shape": [], "dtype": "float32"}
    return out


def _specs(signature: dict[str, dict], batch_size: int) -> dict[str, Any]:
    return {
        name: jax.ShapeDtypeStruct(
            tuple(batch_size if d == "B" else d for d in s["shape"]), s["dtype"]
        )
        for name, s in signature.items()
    }


def serving_fn(
    loaded: inference.Loaded,
    config: ml_collections.ConfigDict,
    sampler: str,
    rule: str,
    treedef,
    max_steps: int,
) -> Any:
    """Jitted `fn(params, inputs) -> images [B, R, R, 3]` in [-1, 1]: the
    request's `generate` with flat parameters and named inputs.

    `params` are the leaves of `treedef` (cast to float32 here, so a bundle may
    store them in bfloat16); the step count is clipped to 1..`max_steps`.
    """
    generate = sampling.make_generate_fn(loaded.model, config, sampler, rule)
    fields = loaded.model.conditioning.batch_fields

    def serve(params, inputs):
        params = jax.tree.unflatten(treedef, [p.astype(jnp.float32) for p in params])
        return generate(
            params,
            {name: inputs[name] for name in fields},
            inputs["rng"],
            jnp.clip(inputs["num_steps"], 1, max_steps),
            inputs["guidance_text"],
            inputs["guidance_image"],
            inputs["oscillate"],
            inputs.get("eta", 0.5),
        )

    return jax.jit(serve)


def _tokenizer_spec(tok: tokenizers.Tokenizer, directory: str) -> dict[str, Any]:
    """Writes what the loader needs to tokenize as `tok` does; returns its spec.

    Raises:
      ValueError: a tokenizer type the loader does not know.
    """
    spec = {
        "pad_id": tok.pad_id,
        "eos_id": tok.eos_id,
        "extra_tokens": list(tok.extra_tokens),
        "vocab_size": tok.vocab_size,
    }
    if isinstance(tok, tokenizers.ByteTokenizer):
        spec["type"] = "byte"
    elif isinstance(tok, tokenizers.SentencePieceTokenizer):
        spec.update(type="sentencepiece", model_file="spiece.model")
        with open(os.path.join(directory, "spiece.model"), "wb") as f:
            f.write(tok.model_proto())
    else:
        raise ValueError(f"cannot export a {type(tok).__name__} tokenizer")
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return spec


def _sample_defaults(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings `launch.sample` uses when a request leaves them out."""
    s = config.sample
    return {
        "steps": int(s.steps),
        "guidance_text": float(s.guidance),
        "guidance_image": float(s.get("image_guidance", 1.0)),
        "oscillate": int(s.get("oscillate", False)),
    }


def _write_functions(
    directory: str,
    fn,
    param_specs: list[jax.ShapeDtypeStruct],
    batch_sizes: Sequence[int],
    signature: dict[str, dict],
    platforms: Sequence[str] | None,
) -> dict[str, dict]:
    """Exports and writes the function of every batch size."""
    out = {}
    for b in sorted(set(batch_sizes)):
        exported = jax.export.export(fn, platforms=platforms)(
            param_specs, _specs(signature, b)
        )
        file = serving_bundle.function_file(b)
        with open(os.path.join(directory, file), "wb") as f:
            f.write(exported.serialize())
        out[str(b)] = {"file": file, "platforms": list(exported.platforms)}
    return out


def _staging(out: str) -> str:
    """A fresh staging directory beside `out` (moved into place at the end)."""
    staging = out.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, serving_bundle.TOKENIZER_DIR))
    return staging


def _commit(staging: str, out: str, manifest: dict[str, Any]) -> None:
    """Checksums every file, writes the manifest last and moves the bundle in."""
    files = {}
    for root, _, names in os.walk(staging):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, staging)] = serving_bundle.sha256(path)
    manifest["files"] = dict(sorted(files.items()))
    with open(os.path.join(staging, serving_bundle.MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def export_bundle(
    workdir: str,
    out: str,
    *,
    batch_sizes: Sequence[int] = (1, 4),
    sampler: str | None = None,
    rule: str = "chain",
    resolution: int | None = None,
    param_dtype: str = "float32",
    max_steps: int = LIMITS.steps,
    use_ema: bool = True,
    platforms: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes the serving bundle of `workdir`'s latest checkpoint to `out`.

    Args:
      workdir: a training run.
      out: the bundle directory to write.
      batch_sizes: the `num_images` the bundle serves, one function each.
      sampler: "ddim", "ddpm" or "dpmpp_2m"; default the run's `sample.sampler`.
      rule: guidance rule (`sampling.RULES`).
      resolution: side of the images drawn and taken; default the run's.
      param_dtype: storage of the parameters, "float32" or "bfloat16".
      max_steps: the most sampler steps a request may ask for.
      use_ema: the EMA weights (else the trained ones).
      platforms: `jax.export` platforms ("cpu", "cuda", "tpu"); default the
        current backend.
      overwrite: replace an existing bundle at `out`.

    Returns:
      The manifest written.

    Raises:
      ValueError: a bad option, or `out` not empty without `overwrite`;
      checkpointing.CheckpointError: no usable checkpoint in `workdir`.
    """
    _check_options(out, overwrite, batch_sizes, sampler, param_dtype, max_steps)
    loaded = inference.load(workdir, use_ema=use_ema)
    config = ml_collections.ConfigDict(loaded.config.to_dict())
    config.data.resolution = int(resolution or config.data.resolution)
    sampler = sampler or config.sample.sampler
    names, values, treedef = _param_names(loaded.params)
    # Checks the sampler and the rule against the model, before any file.
    fn = serving_fn(loaded, config, sampler, rule, treedef, max_steps)
    manifest = _manifest(loaded, config, sampler, rule, max_steps)
    manifest.update(
        weights="ema" if use_ema else "trained",
        params={
            "file": serving_bundle.PARAMS_FILE,
            "dtype": param_dtype,
            "names": names,
        },
        inputs=input_signature(config, loaded.model.conditioning, rule),
    )
    staging = _staging(out)
    try:
        np.savez(
            os.path.join(staging, serving_bundle.PARAMS_FILE),
            **dict(zip(names, _stored(values, param_dtype))),
        )
        dtype = jnp.bfloat16 if param_dtype == "bfloat16" else np.float32
        param_specs = [jax.ShapeDtypeStruct(v.shape, dtype) for v in values]
        manifest["functions"] = _write_functions(
            staging, fn, param_specs, batch_sizes, manifest["inputs"], platforms
        )
        manifest["tokenizer"] = _tokenizer_spec(
            loaded.tokenizer, os.path.join(staging, serving_bundle.TOKENIZER_DIR)
        )
        shutil.copyfile(
            serving_bundle.__file__, os.path.join(staging, serving_bundle.LOADER_FILE)
        )
        _commit(staging, out, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _manifest(
    loaded: inference.Loaded,
    config: ml_collections.ConfigDict,
    sampler: str,
    rule: str,
    max_steps: int,
) -> dict[str, Any]:
    """What the bundle is: model, request shapes, sampler and its defaults."""
    kind, data, res = loaded.model.conditioning, config.data, config.data.resolution
    return {
        "format_version": serving_bundle.FORMAT_VERSION,
        "jax_version": jax.__version__,
        "checkpoint": {"workdir": os.path.abspath(loaded.workdir), "step": loaded.step},
        "config": json.loads(config.to_json()),
        "conditioning": {
            "name": kind.name,
            "instruction": kind.instruction,
            "guidance_chain": list(kind.guidance_chain),
        },
        "resolution": res,
        "text_len": data.max_text_len,
        "ctx_text_len": data.get("ctx_text_len", 0) if kind.instruction else 0,
        "max_context": data.get("max_context", 0) if kind.instruction else 0,
        "sampler": sampler,
        "rule": rule,
        "max_steps": max_steps,
        "defaults": _sample_defaults(config),
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "output": {"shape": ["B", res, res, 3], "dtype": "float32", "range": [-1, 1]},
    }
