"""Captions encoded once by a frozen pretrained T5, read back while training.

    python -m launch.encode_text --config experiments/t2i_own_data.py:res=64 \\
        --workdir runs/photos --config.data.dataset=photos \\
        --config.text.pretrained=/models/flan-t5-xl
    python -m launch.train --config experiments/t2i_own_data.py:res=64 \\
        --workdir runs/photos --config.data.dataset=photos \\
        --config.text.pretrained=/models/flan-t5-xl \\
        --config.text.precomputed=runs/photos/text_embeddings

A frozen encoder gives a caption the same embeddings at every step, so where
every record carries a fixed caption (`pipeline.fixed_caption_sources`) they
can be computed once (`encode_dataset`) and the train step skips the encoder
(`Imagen.condition` reads the batch's `text_embeddings`).
The cache format and its reader are `imagen_jax.data.text_cache`; it is
written into a staging directory that is renamed into place once complete,
so a killed run leaves no cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from imagen_jax import sharding, train_state
from imagen_jax.data import pipeline, text_cache
from imagen_jax.models.imagen import Imagen, build_model
from imagen_jax.text import pretrained, t5_import
from imagen_jax.text.tokenizers import Tokenizer, make_tokenizer


def _frozen_encoder(
    config: ml_collections.ConfigDict, vocab_size: int, batch_size: int
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]:
    """The config's pretrained T5 sharded over the config's mesh as a
    function (tokens, mask) [batch_size, L] -> float32 [batch_size, L, D],
    and the checksum of its params."""
    model = build_model(config, vocab_size)
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes)
    rules = train_state.mesh_rules(config)
    data_axes = tuple(a for a in ("data", "fsdp") if a in config.mesh.axes)
    ways = int(np.prod([mesh.shape[a] for a in data_axes]))
    if batch_size % ways:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {ways} ways of the "
            f"mesh's data axes {data_axes}"
        )
    directory = config.text.pretrained
    _, host = t5_import.load_hf_t5_encoder(directory)
    like = train_state.abstract_params(model, config, mesh, rules)["text_encoder"]
    params = pretrained.place_params(host, like, directory)
    batch_sharding = sharding.batch_sharding(mesh, data_axes)
    apply = jax.jit(
        lambda p, tokens, mask: model.apply(
            {"params": {"text_encoder": p}}, tokens, mask, method=Imagen.encode_text
        )
    )

    def encode(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with mesh, nn.logical_axis_rules(rules):
            tokens, mask = jax.device_put((tokens, mask), batch_sharding)
            return np.asarray(apply(params, tokens, mask))

    return encode, text_cache.params_checksum(host)


def _write(
    staging: str,
    source: Any,
    tokenizer: Tokenizer,
    encode: Callable[[np.ndarray, np.ndarray], np.ndarray],
    batch_size: int,
    meta: dict,
) -> None:
    """Encodes every record of `source` in batches into `staging`, then
    writes meta.json (last: its presence marks a complete cache)."""
    n, length = meta["num_records"], meta["max_text_len"]
    dtype = text_cache.STORAGE_DTYPES[meta["dtype"]]
    shapes = {
        "embeddings": ((n, length, meta["encoder"]["d_model"]), dtype),
        "tokens": ((n, length), np.int32),
        "mask": ((n, length), np.bool_),
    }
    arrays = {
        name: np.lib.format.open_memmap(
            os.path.join(staging, f"{name}.npy"), "w+", dtype, shape
        )
        for name, (shape, dtype) in shapes.items()
    }
    start_time, every = time.time(), max(1, -(-n // batch_size) // 20)
    for b, start in enumerate(range(0, n, batch_size)):
        stop = min(start + batch_size, n)
        records = [source[i] for i in range(start, stop)]
        ids, mask = pipeline.tokenize_captions(tokenizer, records, length)
        pad = ((0, batch_size - len(ids)), (0, 0))  # the last batch: full size
        out = encode(np.pad(ids, pad, "edge"), np.pad(mask, pad, "edge"))
        stored = out[: stop - start].astype(dtype)
        if not np.isfinite(stored.astype(np.float32)).all():
            raise ValueError(
                f"the embeddings of records {start}-{stop - 1} overflow "
                f"{meta['dtype']} (largest |x| {np.abs(out).max():.4g}); store "
                "them as bfloat16 (--dtype bfloat16)"
            )
        arrays["embeddings"][start:stop] = stored
        arrays["tokens"][start:stop], arrays["mask"][start:stop] = ids, mask
        if (b + 1) % every == 0 or stop == n:
            rate = stop / max(time.time() - start_time, 1e-9)
            print(
                f"encoded {stop}/{n} captions  {rate:.1f}/s  "
                f"ETA {(n - stop) / rate / 60:.1f} min",
                flush=True,
            )
    for array in arrays.values():
        array.flush()
    with open(os.path.join(staging, text_cache.META), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def encode_dataset(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str = "train",
    batch_size: int = 0,
    dtype: str = "float16",
) -> str:
    """Encodes every caption of `split` with the config's frozen T5 and writes
    the cache `text_cache.cache_root(config, workdir)/<split>` (module doc). A cache
    already there that matches the config is kept.

    Args:
      config: A training config with `text.pretrained` and a text-to-image
        dataset; captions are tokenized as the pipeline does (its tokenizer,
        `data.max_text_len`, EOS).
      workdir: The run directory (the cache's default root).
      split: The dataset split.
      batch_size: Captions per encoder call; 0: `config.data.batch_size`.
      dtype: The storage dtype, "float16" or "bfloat16".

    Returns:
      The cache's directory.

    Raises:
      ValueError, FileNotFoundError: A config that cannot be cached, a bad
        dtype, a stale cache in the way, missing data or encoder (one line).
    """
    config = pretrained.resolve(config)
    pipeline.check_cacheable(config)
    if dtype not in text_cache.STORAGE_DTYPES:
        choices = sorted(text_cache.STORAGE_DTYPES)
        raise ValueError(f"dtype {dtype!r} is not one of {choices}")
    root = text_cache.cache_root(config, workdir)
    source = pipeline.get_source(config.data, split)
    directory = os.path.join(root, split)
    if os.path.exists(directory):
        text_cache.open_cache(root, config, split, len(source))  # raises when stale
        print(f"{directory} is up to date", flush=True)
        return directory
    tokenizer = make_tokenizer(config)
    batch_size = batch_size or config.data.batch_size
    encode, checksum = _frozen_encoder(config, tokenizer.vocab_size, batch_size)
    meta = text_cache.expected_meta(config, split, len(source), checksum)
    meta.update(dtype=dtype, pretrained=os.path.abspath(config.text.pretrained))
    staging = os.path.join(root, f".{split}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's
    os.makedirs(staging)
    try:
        _write(staging, source, tokenizer, encode, batch_size, meta)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.rename(staging, directory)
    return directory
