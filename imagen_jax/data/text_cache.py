"""Stored caption embeddings of a frozen text encoder: the cache format and
its reader (the writer is `imagen_jax.text.precompute`).

A split's cache is
the directory `ROOT/<split>` (ROOT: `config.text.precomputed`, by default
WORKDIR/text_embeddings):

    embeddings.npy  [N, L, D] float16 or bfloat16 (meta.json's "dtype"; numpy
                    stores bfloat16 as raw 2-byte values), row i for record i
    tokens.npy      [N, L] int32, the tokens encoded; mask.npy [N, L] bool
    meta.json       the encoder (architecture, compute dtype, sha256 of its
                    params), max_text_len, N, the dataset and split, dtype

It is written into a staging directory that is renamed into place once
complete, so a killed run leaves no cache. Training (`pipeline.cached_text`)
refuses a cache made for another encoder, length, dataset or size, and a
record whose caption no longer gives the stored tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import ml_dtypes
import numpy as np

from imagen_jax.text import pretrained, t5_import

STORAGE_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
DEFAULT_DIR = "text_embeddings"
META = "meta.json"


def cache_root(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where caches go: `config.text.precomputed`, else WORKDIR/text_embeddings."""
    return config.text.get("precomputed") or os.path.join(workdir, DEFAULT_DIR)


def params_checksum(params: Any) -> str:
    """sha256 of a tree of arrays: every leaf's path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.ascontiguousarray(leaf)
        name = f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape};"
        digest.update(name.encode())
        digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _encoder_checksum(directory: str, stamp: tuple) -> str:
    del stamp  # a key only: the files' sizes and times
    return params_checksum(t5_import.load_hf_t5_encoder(directory)[1])


def encoder_checksum(directory: str) -> str:
    """`params_checksum` of the converted encoder of a Hugging Face T5
    directory (computed once per process while its files are unchanged)."""
    stamp = tuple(
        sorted(
            (e.name, e.stat().st_size, e.stat().st_mtime_ns)
            for e in os.scandir(directory)
            if e.is_file()
        )
    )
    return _encoder_checksum(os.path.abspath(directory), stamp)


def expected_meta(
    config: ml_collections.ConfigDict, split: str, num_records: int, checksum: str
) -> dict:
    """What a cache of `split` must record to serve `config` (meta.json's
    compared fields)."""
    d = config.data
    encoder = {field: config.text[field] for field in pretrained.ARCH_FIELDS}
    encoder.update(dtype=config.model.dtype, checksum=checksum)
    return {
        "encoder": encoder,
        "max_text_len": d.max_text_len,
        "num_records": num_records,
        "data": {
            "name": d.name,
            "dataset": d.get("dataset", ""),
            "variant": d.get("variant", ""),
            "resolution": d.resolution,
            "split": split,
        },
    }


def _shown(key: str, value: Any) -> str:
    return f"{value[:12]}..." if key == "checksum" and value else repr(value)


def _differences(found: dict, want: dict, prefix: str = "") -> list[str]:
    """'field cached != wanted' for every field where `found` differs from `want`."""
    out = []
    for key, value in want.items():
        have = found.get(key)
        if isinstance(value, dict):
            have = have if isinstance(have, dict) else {}
            out += _differences(have, value, f"{prefix}{key}.")
        elif have != value:
            out.append(
                f"{prefix}{key} {_shown(key, have)} (cache) != "
                f"{_shown(key, value)} (config)"
            )
    return out


@dataclasses.dataclass(frozen=True)
class Cache:
    """A split's stored embeddings, memory-mapped (see the module doc)."""

    directory: str
    meta: dict
    embeddings: np.ndarray  # [N, L, D] float16 or bfloat16
    tokens: np.ndarray  # [N, L] int32
    mask: np.ndarray  # [N, L] bool


def open_cache(
    root: str, config: ml_collections.ConfigDict, split: str, num_records: int
) -> Cache:
    """The cache of `split` under `root`, checked against `config`.

    Raises:
      FileNotFoundError: No complete cache of `split` under `root`.
      ValueError: It was made for another encoder, text length, dataset or
        number of records (each difference named).
    """
    directory = os.path.join(root, split)
    if not os.path.exists(os.path.join(directory, META)):
        raise FileNotFoundError(
            f"no text embeddings of split {split!r} in {root}: make them with "
            "`python -m launch.encode_text` and this config"
        )
    with open(os.path.join(directory, META)) as f:
        meta = json.load(f)
    checksum = encoder_checksum(config.text.pretrained)
    differences = _differences(
        meta, expected_meta(config, split, num_records, checksum)
    )
    if meta.get("dtype") not in STORAGE_DTYPES:
        stored = meta.get("dtype")
        differences.append(f"dtype {stored!r} not one of {sorted(STORAGE_DTYPES)}")
    if differences:
        raise ValueError(
            f"the text embeddings in {directory} were made for another config: "
            f"{'; '.join(differences)}. Delete them and run "
            "`python -m launch.encode_text` with this config"
        )

    def load(name: str) -> np.ndarray:
        return np.load(os.path.join(directory, name), mmap_mode="r")

    embeddings = load("embeddings.npy").view(STORAGE_DTYPES[meta["dtype"]])
    return Cache(directory, meta, embeddings, load("tokens.npy"), load("mask.npy"))


class CachedText:
    """A caption source with each record's stored embeddings joined by index.

    Every record read is checked: its caption must give the tokens that were
    encoded, so a dataset changed since (same size, other captions) is named
    rather than trained on with another caption's embeddings.
    """

    def __init__(
        self, source: Any, cache: Cache, tokenize: Callable[[dict], np.ndarray]
    ):
        """`tokenize`: a record -> the int32 [L] tokens its caption encodes to,
        as the training pipeline tokenizes it."""
        self._source, self._cache, self._tokenize = source, cache, tokenize

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        record = self._source[index]
        if not np.array_equal(self._tokenize(record), self._cache.tokens[index]):
            raise ValueError(
                f"the caption of record {index} does not give the tokens its "
                f"embeddings in {self._cache.directory} were made from: the "
                "dataset changed since; delete them and run `launch.encode_text` "
                "again"
            )
        return {**record, "text_embeddings": np.array(self._cache.embeddings[index])}
