"""Neighbour mining for stage 1 (Instruct-Imagen after Re-Imagen): index
candidates -> a table of similar, non-duplicate neighbours per example.

For each query the index returns its top candidates (10 in the paper), best
first. A candidate is dropped when it is the query itself, a near-duplicate
(cosine score above a threshold) or from the query's source (another render of
the same underlying item); the first `num_context` survivors are kept, so each
query and its neighbours form a cluster of 1 + num_context (the paper's 5).

The table, int64 [N, num_context] with -1 where fewer survived, is stored
beside the dataset it indexes (`<dataset dir>/neighbours/<split>.npy`, with
`<split>.json` metadata) and joined by the stage-1 input pipeline: no index
lookup happens in training. Row i belongs to record i of the split and its ids
are records of the database split, both in the data source's order.

`neighbour_instruction` is how retrieved neighbours become context, in
training and at inference alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imagen_jax.instructions import ContextItem, MultiModalInstruction

# The paper's defaults: top-10 candidates, clusters of target + 3 context.
NUM_CANDIDATES = 10
NUM_CONTEXT = 3
# Cosine above which a candidate is a near-duplicate of its query.
NEAR_DUPLICATE = 0.98
# Every neighbour goes under this one marker, appended to the caption.
NEIGHBOUR_MARKER = "[ref#1]"
NEIGHBOURS_DIR = "neighbours"


def _check_candidates(ids, scores, source_ids, query_source_ids, self_ids):
    ids, scores = np.asarray(ids), np.asarray(scores)
    if ids.ndim != 2 or ids.shape != scores.shape:
        raise ValueError(
            f"ids and scores must both be [N, C], got {ids.shape} and {scores.shape}"
        )
    source_ids, query_source_ids = np.asarray(source_ids), np.asarray(query_source_ids)
    if source_ids.ndim != 1:
        raise ValueError(f"source_ids must be [N_db], got shape {source_ids.shape}")
    if query_source_ids.shape != ids.shape[:1]:
        raise ValueError(
            f"query_source_ids must be [{ids.shape[0]}] (one per query), got "
            f"shape {query_source_ids.shape}"
        )
    if ids.size and ids.max() >= len(source_ids):
        raise ValueError(
            f"candidate id {ids.max()} is past the database's {len(source_ids)} items"
        )
    if self_ids is None:
        self_ids = np.full(ids.shape[:1], -1, np.int64)
    self_ids = np.asarray(self_ids)
    if self_ids.shape != ids.shape[:1]:
        raise ValueError(
            f"self_ids must be [{ids.shape[0]}] (one per query), got shape "
            f"{self_ids.shape}"
        )
    return ids.astype(np.int64), scores, source_ids, query_source_ids, self_ids


def _drop_reasons(
    ids, scores, source_ids, query_source_ids, self_ids, near_duplicate
) -> dict[str, np.ndarray]:
    """Bool [N, C] masks, each candidate under its first reason only."""
    ids, scores, source_ids, query_source_ids, self_ids = _check_candidates(
        ids, scores, source_ids, query_source_ids, self_ids
    )
    missing = ids < 0  # the index found fewer than C
    itself = ~missing & (ids == self_ids[:, None])
    duplicate = ~missing & ~itself & (scores > near_duplicate)
    same = source_ids[np.maximum(ids, 0)] == query_source_ids[:, None]
    same_source = ~missing & ~itself & ~duplicate & same
    return {
        "missing": missing,
        "self": itself,
        "near_duplicate": duplicate,
        "same_source": same_source,
    }


def _check_num_context(num_context: int) -> None:
    if num_context < 1:
        raise ValueError(f"num_context must be >= 1, got {num_context}")


def mine_neighbours(
    ids: np.ndarray,
    scores: np.ndarray,
    source_ids: np.ndarray,
    query_source_ids: np.ndarray,
    *,
    num_context: int = NUM_CONTEXT,
    near_duplicate: float = NEAR_DUPLICATE,
    self_ids: np.ndarray | None = None,
) -> np.ndarray:
    """The neighbour table of queries from their index candidates.

    Args:
      ids: int [N, C] database ids of each query's candidates, best first
        (-1 where the index had fewer); the paper takes C = NUM_CANDIDATES.
      scores: float [N, C] their inner products (cosines of unit embeddings).
      source_ids: [N_db] source id of every database item.
      query_source_ids: [N] source id of every query.
      num_context: neighbours kept per query.
      near_duplicate: candidates scoring above this are near-duplicates.
      self_ids: optional int [N] database id of each query itself (-1: not
        in the database).

    Returns:
      int64 [N, num_context]: the first kept candidates, best first, -1
      padded.

    Raises:
      ValueError: on inconsistent shapes, ids past the database or
        num_context < 1.
    """
    _check_num_context(num_context)
    reasons = _drop_reasons(
        ids, scores, source_ids, query_source_ids, self_ids, near_duplicate
    )
    keep = ~np.logical_or.reduce(list(reasons.values()))
    ids = np.asarray(ids, np.int64)
    rank = np.cumsum(keep, axis=1) - 1  # place of each kept candidate
    rows, cols = np.nonzero(keep & (rank < num_context))
    table = np.full((ids.shape[0], num_context), -1, np.int64)
    table[rows, rank[rows, cols]] = ids[rows, cols]
    return table


@dataclasses.dataclass(frozen=True)
class MiningStats:
    """What mining kept and dropped.

    Attributes:
      num_queries: rows mined.
      num_candidates: candidates looked at (N * C, missing ones included).
      short_rows: rows with fewer than num_context neighbours kept.
      empty_rows: rows with none kept.
      dropped: reason -> fraction of all candidates dropped for it ("self",
        "near_duplicate", "same_source", "missing"), each candidate counted
        under its first reason in that order.
    """

    num_queries: int
    num_candidates: int
    short_rows: int
    empty_rows: int
    dropped: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mining_stats(
    ids: np.ndarray,
    scores: np.ndarray,
    source_ids: np.ndarray,
    query_source_ids: np.ndarray,
    *,
    num_context: int = NUM_CONTEXT,
    near_duplicate: float = NEAR_DUPLICATE,
    self_ids: np.ndarray | None = None,
) -> MiningStats:
    """Statistics of `mine_neighbours` with the same arguments."""
    _check_num_context(num_context)
    reasons = _drop_reasons(
        ids, scores, source_ids, query_source_ids, self_ids, near_duplicate
    )
    kept = (~np.logical_or.reduce(list(reasons.values()))).sum(axis=1)
    total = max(1, int(np.asarray(ids).size))
    return MiningStats(
        num_queries=int(len(kept)),
        num_candidates=int(np.asarray(ids).size),
        short_rows=int((kept < num_context).sum()),
        empty_rows=int((kept == 0).sum()),
        dropped={k: float(v.sum()) / total for k, v in reasons.items()},
    )


def neighbour_precision(
    table: np.ndarray, query_names: Sequence[str], db_names: Sequence[str]
) -> float:
    """Share of the kept neighbours of named queries that show the same subject.

    Args:
      table: int [N, K] neighbour table (-1 = none).
      query_names: [N] named subject of each query ("" for none).
      db_names: [N_db] named subject of each database item ("" for none).

    Returns:
      The fraction over every kept neighbour of every named query; NaN when
      no named query has a neighbour.
    """
    table = np.asarray(table)
    query_names, db_names = np.asarray(query_names), np.asarray(db_names)
    if table.ndim != 2 or len(table) != len(query_names):
        raise ValueError(
            f"table must be [N, K] with N = {len(query_names)} query names, got "
            f"shape {table.shape}"
        )
    kept = (table >= 0) & (query_names != "")[:, None]
    if not kept.any():
        return float("nan")
    rows, cols = np.nonzero(kept)
    return float(np.mean(db_names[table[rows, cols]] == query_names[rows]))


def as_text(x: bytes | str) -> str:
    """A record's text field (tfds gives bytes) as str."""
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def neighbours_dir(dataset_dir: str) -> str:
    """Where a dataset's neighbour tables live: `<dataset dir>/neighbours`."""
    return os.path.join(dataset_dir, NEIGHBOURS_DIR)


def table_paths(directory: str, split: str) -> tuple[str, str]:
    """(table .npy, metadata .json) of `split` in a neighbours directory."""
    return (
        os.path.join(directory, f"{split}.npy"),
        os.path.join(directory, f"{split}.json"),
    )


def save_table(
    directory: str, split: str, table: np.ndarray, metadata: Mapping[str, Any]
) -> str:
    """Writes `split`'s table and its metadata (plus split, rows, columns).

    Args:
      directory: the neighbours directory (`neighbours_dir`), created if
        absent.
      split: the split whose records the rows belong to.
      table: int [N, num_context], -1 padded.
      metadata: JSON-serialisable provenance (k, embedder, index directory,
        thresholds, `MiningStats.to_dict()`, ...).

    Returns:
      The .npy path.
    """
    table = np.asarray(table)
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(
            f"a neighbour table is int [N, num_context], got {table.dtype} "
            f"{table.shape}"
        )
    os.makedirs(directory, exist_ok=True)
    npy, meta = table_paths(directory, split)
    info = {
        **metadata,
        "split": split,
        "num_rows": int(table.shape[0]),
        "num_context": int(table.shape[1]),
    }
    # Written beside, then renamed: a reader never sees half a table.
    with open(npy + ".tmp", "wb") as f:
        np.save(f, table.astype(np.int64), allow_pickle=False)
    with open(meta + ".tmp", "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.replace(npy + ".tmp", npy)
    os.replace(meta + ".tmp", meta)
    return npy


def load_table(
    directory: str,
    split: str,
    *,
    num_rows: int | None = None,
    num_database: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Reads `split`'s neighbour table and metadata.

    Args:
      directory: the neighbours directory.
      split: the split it was mined for.
      num_rows: the split's record count, checked when given.
      num_database: the database's record count: every id must be below it.

    Returns:
      (int64 [N, num_context] table, metadata dict).

    Raises:
      FileNotFoundError: no table for `split` in `directory`.
      ValueError: a table that does not fit the split or the database.
    """
    npy, meta = table_paths(directory, split)
    if not os.path.exists(npy):
        raise FileNotFoundError(
            f"no neighbour table for split {split!r}: {npy} does not exist; mine "
            f"it with `python -m launch.build_index` before stage-1 training"
        )
    table = np.load(npy, allow_pickle=False)
    metadata = {}
    if os.path.exists(meta):
        with open(meta) as f:
            metadata = json.load(f)
    if table.ndim != 2 or table.dtype != np.int64:
        raise ValueError(
            f"neighbour table {npy} is {table.dtype} {table.shape}; expected "
            f"int64 [N, num_context]"
        )
    if num_rows is not None and len(table) != num_rows:
        raise ValueError(
            f"neighbour table {npy} has {len(table)} rows but split {split!r} has "
            f"{num_rows} records: it was mined for another build; mine it again"
        )
    if num_database is not None and table.size and table.max() >= num_database:
        raise ValueError(
            f"neighbour table {npy} names database record {table.max()} but the "
            f"database has {num_database}: mine it again"
        )
    return table, metadata


def neighbour_instruction(
    text: str, neighbours: Sequence[tuple[np.ndarray, str]]
) -> MultiModalInstruction:
    """Stage 1's instruction: the caption, and the neighbours as context.

    Every neighbour (image, caption) is a context item under one marker,
    `NEIGHBOUR_MARKER`, which is appended to the text ("a zorblat at the top
    left [ref#1]"); with no neighbour the text is the caption alone.

    Args:
      text: the target's caption.
      neighbours: (uint8 [R, R, 3] image, caption) pairs, best first.
    """
    if not neighbours:
        return MultiModalInstruction(text)
    items = tuple(
        ContextItem(NEIGHBOUR_MARKER, caption, np.asarray(image, np.uint8))
        for image, caption in neighbours
    )
    return MultiModalInstruction(f"{text} {NEIGHBOUR_MARKER}", items)
