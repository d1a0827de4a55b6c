"""Nearest-neighbour search over embeddings: exact (numpy) and ScaNN indexes.

Scores are inner products of L2-normalised rows, i.e. cosine similarities;
both the database and the queries are checked to be normalised, because a
cosine threshold downstream (near-duplicate removal) means nothing otherwise.

An `Index` is one ScaNN searcher per shard. Small shards are searched exactly
(ScaNN brute force); large ones with ScaNN's k-means tree partitioning,
anisotropic asymmetric hashing (AH) and exact reordering of the best AH
candidates. A query is answered by every shard and the per-shard top-k are
merged by score into global ids (row numbers of the concatenated shards).

A corpus larger than memory arrives as a list of shard arrays (e.g. one
`np.memmap` per file); `build_index(..., directory=...)` then writes each
shard's searcher as soon as it is built and keeps none in memory, and the
index it returns loads one shard at a time per `search` call.

On disk (`Index.save`, `load_index`): one ScaNN directory per shard and a
manifest, `index.json`, with the dimension, the shards' sizes and offsets, the
config, and the size and sha256 of every file (checked before ScaNN reads
them: a damaged file is named rather than crashing the searcher).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
import scann
from absl import logging

MANIFEST = "index.json"
FORMAT_VERSION = 1
# Rows whose norm is further than this from 1 are rejected as not normalised
# (loose enough for embeddings normalised in bfloat16).
NORM_TOLERANCE = 1e-2
BRUTE_FORCE, TREE_AH = "brute_force", "tree_ah"

ArrayLike = np.ndarray | Sequence[np.ndarray]


def default_config() -> ml_collections.ConfigDict:
    """The index settings (the `retrieval.index` group of a config)."""
    c = ml_collections.ConfigDict()
    # A shard with fewer vectors than this is searched exactly (ScaNN brute
    # force): partitioning and quantisation only pay off on large shards.
    c.brute_force_below = 20_000
    # k-means partitions (leaves) per shard; 0 = about sqrt(shard size).
    c.num_leaves = 0
    # Leaves scored per query (at most num_leaves): recall against speed.
    c.num_leaves_to_search = 100
    # Vectors sampled to train the partitioner and the AH codebooks; 0 = all.
    c.training_sample_size = 250_000
    # Dimensions per AH block (16 codes each): 2 = 2 bits per dimension;
    # larger = smaller index, faster, less exact before reordering.
    c.dims_per_block = 2
    # AH's anisotropic loss threshold (ScaNN suggests 0.2 for normalised
    # vectors); nan = plain (isotropic) quantisation.
    c.anisotropic_quantization_threshold = 0.2
    # AH candidates rescored exactly (float32) before the top k; 0 = none.
    c.reorder = 200
    # Shards a single array is split into (one searcher each, top-k merged).
    # A list of arrays is already sharded and keeps its own split.
    c.num_shards = 1
    return c


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    batch_size: int = 1024,
    chunk_size: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k by inner product: batched numpy matmul + argpartition.

    The database is read once, `chunk_size` rows at a time (it may be a
    memmap larger than memory); each chunk is scored against `batch_size`
    queries at a time, so the score block stays `batch_size x chunk_size`.

    Args:
      database: [N, D] L2-normalised rows.
      queries: [Q, D] L2-normalised rows.
      k: neighbours per query, 1 <= k <= N.
      batch_size: queries per score block.
      chunk_size: database rows per score block.

    Returns:
      ids [Q, k] int64 (row numbers in `database`) and scores [Q, k] float32,
      best first.

    Raises:
      ValueError: on an empty database, mismatched or non-normalised rows, or
        k outside [1, N].
    """
    dim = _check_shape(database, "database")
    queries = _check_rows(queries, "queries", dim)
    k = _check_k(k, len(database))
    ids = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    for start in range(0, len(database), chunk_size):
        chunk = _check_rows(database[start : start + chunk_size], "database", dim)
        for q0 in range(0, len(queries), batch_size):
            block = queries[q0 : q0 + batch_size] @ chunk.T  # [B, C]
            cols = top_k_columns(block, min(k, len(chunk)))
            rows = slice(q0, q0 + batch_size)
            ids[rows], scores[rows] = merge_top_k(
                np.concatenate([ids[rows], cols + start], axis=1),
                np.concatenate(
                    [scores[rows], np.take_along_axis(block, cols, axis=1)], axis=1
                ),
                k,
            )
    return ids, scores


def top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices [Q, k] of each row's k largest scores, best first."""
    n = scores.shape[1]
    if k < n:
        cols = np.argpartition(scores, n - k, axis=1)[:, n - k :]
    else:
        cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def merge_top_k(
    ids: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best k of candidate lists [Q, M] (e.g. several shards' top-k side by side).

    Missing candidates carry id -1 and score -inf, and so come last.
    """
    cols = top_k_columns(scores, k)
    return np.take_along_axis(ids, cols, axis=1), np.take_along_axis(
        scores, cols, axis=1
    )


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard of an index: global ids offset .. offset + size - 1."""

    offset: int
    size: int
    # BRUTE_FORCE or TREE_AH.
    kind: str
    # The ScaNN directory inside the index directory ("" until saved).
    path: str = ""
    # File name -> (bytes, sha256) of the saved ScaNN directory.
    files: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)


class Index:
    """ScaNN searchers over shards of a corpus, answering with global ids.

    Built by `build_index` or read by `load_index`. Its searchers are either
    all in memory or, when `directory` is set and `in_memory` is False, read
    from there one shard at a time per `search` call (batch the queries).
    """

    def __init__(
        self,
        dim: int,
        shards: list[Shard],
        config: ml_collections.ConfigDict,
        searchers: list[Any] | None = None,
        directory: str | None = None,
    ):
        self.dim = dim
        self.shards = shards
        self.config = config
        self._searchers = searchers
        self.directory = directory

    @property
    def num_vectors(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def in_memory(self) -> bool:
        return self._searchers is not None

    def __len__(self) -> int:
        return self.num_vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The approximate top-k of each query over all shards.

        Args:
          queries: [Q, D] L2-normalised rows.
          k: neighbours per query, 1 <= k <= number of vectors.

        Returns:
          ids [Q, k] int64 (global row numbers; -1 where ScaNN found fewer
          than k) and scores [Q, k] float32 (inner products), best first.

        Raises:
          ValueError: on mismatched or non-normalised queries or a bad k.
        """
        queries = _check_rows(queries, "queries", self.dim)
        k = _check_k(k, self.num_vectors)
        found = []
        for i, shard in enumerate(self.shards):
            if self.in_memory:
                searcher = self._searchers[i]
            else:  # one shard in memory at a time
                searcher = _load_searcher(self.directory, shard)
            found.append(
                _search_shard(searcher, shard, queries, k, self.config.reorder)
            )
            del searcher
        return merge_top_k(
            np.concatenate([ids for ids, _ in found], axis=1),
            np.concatenate([scores for _, scores in found], axis=1),
            k,
        )

    def save(self, directory: str) -> None:
        """Writes the shards' ScaNN directories and the manifest to `directory`.

        The manifest is written last, so a directory with one holds a whole
        index; an older manifest there is removed first.
        """
        directory = os.path.abspath(directory)
        if not self.in_memory and directory == self.directory:
            return
        _start_writing(directory)
        for i, shard in enumerate(self.shards):
            if self.in_memory:
                self.shards[i] = _save_searcher(self._searchers[i], shard, directory, i)
            else:
                shutil.copytree(
                    os.path.join(self.directory, shard.path),
                    os.path.join(directory, shard.path),
                    dirs_exist_ok=True,
                )
        _write_manifest(directory, self.dim, self.shards, self.config)


def build_index(
    embeddings: ArrayLike,
    cfg: ml_collections.ConfigDict | None = None,
    *,
    directory: str | None = None,
) -> Index:
    """Builds one ScaNN searcher per shard of `embeddings`.

    Args:
      embeddings: [N, D] L2-normalised rows, as one array (split into
        `cfg.num_shards` contiguous shards) or a list of shard arrays (e.g.
        memmaps of shard files; global ids follow the list order).
      cfg: `default_config()` or a modified copy.
      directory: if given, every shard is written there as soon as it is
        built and released (peak memory: one shard), and the index returned
        reads its shards from there; otherwise all stay in memory.

    Returns:
      The index.

    Raises:
      ValueError: on an empty corpus or shard, rows of the wrong shape or not
        normalised, or a bad config value.
    """
    cfg = default_config() if cfg is None else cfg
    _check_config(cfg)
    parts = _split(embeddings, cfg.num_shards)
    dim = _check_shape(parts[0], "shard 0")
    if directory is not None:
        directory = os.path.abspath(directory)
        _start_writing(directory)
    shards, searchers, offset = [], [], 0
    for i, part in enumerate(parts):
        start = time.perf_counter()
        vectors = _check_rows(part, f"shard {i}", dim)
        searcher, kind = _build_searcher(vectors, cfg)
        shard = Shard(offset=offset, size=len(vectors), kind=kind)
        logging.info(
            "index shard %d/%d: %d vectors, %s, built in %.1f s",
            i + 1,
            len(parts),
            shard.size,
            kind,
            time.perf_counter() - start,
        )
        if directory is None:
            searchers.append(searcher)
        else:
            shard = _save_searcher(searcher, shard, directory, i)
        del searcher, vectors
        shards.append(shard)
        offset += shard.size
    if directory is None:
        return Index(dim, shards, cfg, searchers=searchers)
    _write_manifest(directory, dim, shards, cfg)
    return Index(dim, shards, cfg, directory=directory)


def load_index(directory: str, *, in_memory: bool = True) -> Index:
    """Reads an index written by `Index.save` or `build_index(directory=...)`.

    Args:
      directory: the index directory (holding `index.json`).
      in_memory: load every shard's searcher now; False keeps them on disk
        and loads one at a time per `search` call (indexes larger than memory).

    Returns:
      The index, without rebuilding anything.

    Raises:
      ValueError: naming the path, if the directory, its manifest or a shard
        file is missing, damaged or inconsistent.
    """
    directory = os.path.abspath(directory)
    dim, shards, cfg = _read_manifest(directory)
    for shard in shards:
        _check_files(directory, shard, sha256=True)
    searchers = None
    if in_memory:
        searchers = [_load_searcher(directory, s) for s in shards]
    return Index(dim, shards, cfg, searchers=searchers, directory=directory)


def _split(embeddings: ArrayLike, num_shards: int) -> list[np.ndarray]:
    """The shards: a list as given, or one array cut into contiguous views."""
    if isinstance(embeddings, np.ndarray):
        n = len(embeddings)
        if num_shards > max(n, 1):
            raise ValueError(f"num_shards={num_shards} exceeds the {n} vectors")
        bounds = np.linspace(0, n, num_shards + 1).astype(int)
        return [embeddings[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    parts = list(embeddings)
    if not parts:
        raise ValueError("the corpus is empty: no shard arrays were given")
    return parts


def _build_searcher(vectors: np.ndarray, cfg: ml_collections.ConfigDict) -> tuple:
    """A ScaNN searcher for one shard and its kind."""
    n = len(vectors)
    # The default k only; every search passes its own.
    builder = scann.scann_ops_pybind.builder(vectors, 10, "dot_product")
    if n < cfg.brute_force_below:
        return builder.score_brute_force().build(), BRUTE_FORCE
    leaves = min(cfg.num_leaves or round(math.sqrt(n)), n)
    sample = min(cfg.training_sample_size or n, n)
    builder = builder.tree(
        num_leaves=leaves,
        num_leaves_to_search=min(cfg.num_leaves_to_search, leaves),
        training_sample_size=sample,
    ).score_ah(
        cfg.dims_per_block,
        anisotropic_quantization_threshold=cfg.anisotropic_quantization_threshold,
        training_sample_size=sample,
    )
    if cfg.reorder:
        builder = builder.reorder(cfg.reorder)
    return builder.build(), TREE_AH


def _search_shard(
    searcher: Any, shard: Shard, queries: np.ndarray, k: int, reorder: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shard's top-min(k, size), as global ids [Q, k'] and scores."""
    k = min(k, shard.size)
    # Reordering must keep at least k candidates.
    pre = max(reorder, k) if shard.kind == TREE_AH and reorder else None
    ids, scores = searcher.search_batched_parallel(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre
    )
    ids = np.asarray(ids, np.int64) + shard.offset
    scores = np.asarray(scores, np.float32)
    # ScaNN pads with nan scores when it found fewer than k.
    missing = ~np.isfinite(scores)
    ids[missing], scores[missing] = -1, -np.inf
    return ids, scores


def _check_config(cfg: ml_collections.ConfigDict) -> None:
    for name in ("brute_force_below", "num_leaves", "training_sample_size", "reorder"):
        if int(cfg[name]) < 0:
            raise ValueError(f"index config {name}={cfg[name]} must be >= 0")
    for name in ("num_leaves_to_search", "dims_per_block", "num_shards"):
        if int(cfg[name]) < 1:
            raise ValueError(f"index config {name}={cfg[name]} must be >= 1")


def _check_shape(x: Any, what: str) -> int:
    """The dimension of a non-empty [N, D] array; ValueError otherwise."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{what} must be a [N, D] array, got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(shape)})")
    return int(shape[1])


def _check_rows(x: Any, what: str, dim: int) -> np.ndarray:
    """`x` as float32 [N, dim] with unit-norm rows; ValueError otherwise."""
    if _check_shape(x, what) != dim:
        raise ValueError(f"{what} has dimension {x.shape[1]}, expected {dim}")
    x = np.asarray(x, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~(np.abs(norms - 1) <= NORM_TOLERANCE)  # also catches nan
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{what} row {i} has L2 norm {norms[i]:.4g}: the index scores cosine "
            "similarity by inner product, so rows must be L2-normalised"
        )
    return x


def _check_k(k: int, n: int) -> int:
    if not 1 <= k <= n:
        raise ValueError(f"k={k} neighbours requested from {n} vectors")
    return int(k)


def _start_writing(directory: str) -> None:
    """Creates `directory`; an old manifest goes first (it would outlive a crash)."""
    os.makedirs(directory, exist_ok=True)
    manifest = os.path.join(directory, MANIFEST)
    if os.path.exists(manifest):
        os.remove(manifest)


def _save_searcher(searcher: Any, shard: Shard, directory: str, i: int) -> Shard:
    """Serialises one shard's searcher; the shard with its path and file list."""
    path = f"shard_{i:05d}"
    out = os.path.join(directory, path)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    # Relative asset paths: the index directory can be moved or copied.
    searcher.serialize(out, relative_path=True)
    files = {
        name: _describe(os.path.join(out, name)) for name in sorted(os.listdir(out))
    }
    return dataclasses.replace(shard, path=path, files=files)


def _describe(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return os.path.getsize(path), digest.hexdigest()


def _write_manifest(
    directory: str, dim: int, shards: list[Shard], cfg: ml_collections.ConfigDict
) -> None:
    manifest = {
        "format_version": FORMAT_VERSION,
        "dim": dim,
        "num_vectors": sum(s.size for s in shards),
        "config": cfg.to_dict(),
        "shards": [dataclasses.asdict(s) for s in shards],
    }
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(directory, MANIFEST))


def _read_manifest(directory: str) -> tuple[int, list[Shard], Any]:
    """The dimension, shards and config of a saved index; ValueError if bad."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"no index at {directory}: {MANIFEST} is missing")
    try:
        with open(path) as f:
            manifest = json.load(f)
        if manifest["format_version"] != FORMAT_VERSION:
            raise ValueError(f"format_version {manifest['format_version']}")
        shards = [
            Shard(**dict(s, files={n: tuple(v) for n, v in s["files"].items()}))
            for s in manifest["shards"]
        ]
        dim, cfg = int(manifest["dim"]), ml_collections.ConfigDict(manifest["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"damaged index manifest {path}: {e!r}") from e
    offsets = np.cumsum([0] + [s.size for s in shards[:-1]])
    if not shards or any(s.offset != o for s, o in zip(shards, offsets)):
        raise ValueError(f"damaged index manifest {path}: shard offsets do not add up")
    return dim, shards, cfg


def _check_files(directory: str, shard: Shard, sha256: bool = False) -> None:
    """Every file of a saved shard is there, with its recorded size (and sha256).

    ScaNN crashes the process on a truncated file rather than raising.
    """
    for name, (size, digest) in shard.files.items():
        path = os.path.join(directory, shard.path, name)
        if not os.path.isfile(path):
            raise ValueError(f"damaged index: {path} is missing")
        if os.path.getsize(path) != size or (sha256 and _describe(path)[1] != digest):
            raise ValueError(f"damaged index: {path} differs from when it was saved")


def _load_searcher(directory: str, shard: Shard) -> Any:
    """One shard's searcher, read after a check of its files' sizes.

    `load_index` hashed the files; an on-disk index reads its shards again at
    every search, where hashing them each time would double the reading.
    """
    _check_files(directory, shard)
    path = os.path.join(directory, shard.path)
    try:
        searcher = scann.scann_ops_pybind.load_searcher(path)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"damaged index shard {path}: {e}") from e
    if searcher.size() != shard.size:
        raise ValueError(
            f"damaged index shard {path}: {searcher.size()} vectors, "
            f"the manifest says {shard.size}"
        )
    return searcher
