"""Retrieval benchmark: ScaNN against exact search on synthetic embeddings.

    python -m launch.bench --config experiments/bench.py:retrieval --mode retrieval

The database and the queries are drawn from one mixture of Gaussian clusters
on the unit sphere (embeddings of a large corpus are clumped by topic, not
uniform), L2-normalised like the embedder's output. Exact search is timed two
ways on the same queries and cores - numpy (`index.exact_search`: BLAS matmul
+ argpartition) and jnp (XLA matmul + `lax.top_k`) - and ScaNN's speed-up is
taken over the faster of the two. Its recall@k is measured against numpy's
exact ids, with the index reloaded from disk (the figures are those of the
saved index), built from the config's `retrieval.index` settings. jnp and
ScaNN report the median of `search_reps` timed passes, numpy one pass.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_jax import machine
from imagen_jax.retrieval import index as index_lib


def run_retrieval(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Times exact search and a ScaNN index on `config.retrieval`'s data.

    Returns:
      One JSON-ready record: recall@k, queries/s of ScaNN and of exact search,
      their ratio, build and load seconds, the index size on disk, the ScaNN
      settings, the CPU and the data description.

    Raises:
      ValueError: if the config has no `retrieval` group.
    """
    if "retrieval" not in config:
        raise ValueError(
            "--mode retrieval needs a config with a `retrieval` group "
            "(experiments/bench.py:retrieval)"
        )
    cfg = config.retrieval
    load_start = os.getloadavg()
    database, queries = synthetic_embeddings(cfg)
    exact = _time_exact(database, queries, cfg)
    scann = _time_scann(database, queries, exact.pop("ids"), cfg)
    exact["cpu_seconds"]["scann"] = scann.pop("scann_cpu_seconds")
    best_exact = max(exact["exact_numpy_qps"], exact["exact_jnp_qps"])
    return {
        "mode": "retrieval",
        "num_vectors": cfg.num_vectors,
        "dim": cfg.dim,
        "num_queries": cfg.num_queries,
        "k": cfg.k,
        **scann,
        **exact,
        "exact_qps": best_exact,
        "speedup": scann["scann_qps"] / best_exact,
        "scann": cfg.index.to_dict(),
        "cpu": machine.cpu_model(),
        "cpu_count": os.cpu_count(),
        # Other jobs on the machine slow both sides alike, but are worth knowing.
        "loadavg_1min": [load_start[0], os.getloadavg()[0]],
        "data": describe_data(cfg),
    }


def synthetic_embeddings(cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, ...]:
    """Database [num_vectors, dim] and queries [num_queries, dim], float32.

    Both are samples of one mixture: `num_clusters` centres uniform on the
    sphere, log-normal cluster weights, isotropic Gaussian noise of expected
    norm `spread` (uniform per cluster in [min_spread, max_spread]) around
    the unit centre, then L2-normalised.
    """
    rng = np.random.default_rng(cfg.seed)
    centres = rng.standard_normal((cfg.num_clusters, cfg.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, cfg.size_sigma, cfg.num_clusters)
    spreads = rng.uniform(cfg.min_spread, cfg.max_spread, cfg.num_clusters)
    mixture = (centres, weights / weights.sum(), spreads.astype(np.float32))
    return (
        _sample(mixture, cfg.num_vectors, rng),
        _sample(mixture, cfg.num_queries, rng),
    )


def _sample(mixture: tuple, n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors from the mixture, written chunk by chunk into one array."""
    centres, weights, spreads = mixture
    dim = centres.shape[1]
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 65_536):
        m = min(65_536, n - start)
        which = rng.choice(len(centres), size=m, p=weights)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        x *= (spreads[which] / np.sqrt(dim))[:, None]
        x += centres[which]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def describe_data(cfg: ml_collections.ConfigDict) -> str:
    return (
        f"synthetic embeddings: a mixture of {cfg.num_clusters} Gaussian clusters "
        f"in {cfg.dim}-d (centres uniform on the unit sphere, log-normal cluster "
        f"weights with sigma {cfg.size_sigma}, isotropic noise of norm "
        f"{cfg.min_spread}-{cfg.max_spread} x the centre's), rows L2-normalised; "
        "queries are fresh samples of the same mixture"
    )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn's result, wall seconds and CPU seconds (all threads of the process).

    On a busy machine the wall time measures the share of the cores the run
    got; the CPU time does not, so a record taken there can still be read.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _time_exact(database: np.ndarray, queries: np.ndarray, cfg: Any) -> dict:
    """Exact top-k by numpy (once: it is also the ground truth) and by jnp."""
    (ids, _), numpy_s, numpy_cpu = _timed(
        lambda: index_lib.exact_search(
            database,
            queries,
            cfg.k,
            batch_size=cfg.exact_batch_size,
            chunk_size=cfg.exact_chunk_size,
        )
    )
    search = _exact_jnp(database, queries, cfg.k, cfg.exact_chunk_size)
    runs = [_timed(search) for _ in range(cfg.search_reps)]
    jnp_s, jnp_cpu = (statistics.median(r[i] for r in runs) for i in (1, 2))
    return {
        "ids": ids,
        "exact_numpy_qps": len(queries) / numpy_s,
        "exact_jnp_qps": len(queries) / jnp_s,
        # jnp's ids against numpy's (1.0 up to float ties): both are exact.
        "exact_jnp_agreement": recall(runs[0][0], ids),
        "cpu_seconds": {"exact_numpy": numpy_cpu, "exact_jnp": jnp_cpu},
    }


@functools.partial(jax.jit, static_argnums=2)
def _block_top_k(queries: jax.Array, chunk: jax.Array, k: int) -> tuple:
    return jax.lax.top_k(queries @ chunk.T, k)  # [Q, k] scores and columns


def _exact_jnp(
    database: np.ndarray, queries: np.ndarray, k: int, chunk_size: int
) -> Callable[[], np.ndarray]:
    """A compiled exact search (jitted matmul + top_k per chunk) -> ids [Q, k]."""
    starts = range(0, len(database), chunk_size)
    # On the device before timing, as the numpy side has it in memory.
    chunks = [jnp.asarray(database[s : s + chunk_size]) for s in starts]
    queries = jnp.asarray(queries)
    for size in {len(c) for c in chunks}:  # compile each chunk shape untimed
        jax.block_until_ready(_block_top_k(queries, chunks[0][:size], min(k, size)))

    def search() -> np.ndarray:
        found = [_block_top_k(queries, c, min(k, len(c))) for c in chunks]
        scores = np.concatenate([np.asarray(s) for s, _ in found], axis=1)
        ids = [np.asarray(cols, np.int64) + s for (_, cols), s in zip(found, starts)]
        return index_lib.merge_top_k(np.concatenate(ids, axis=1), scores, k)[0]

    return search


def _time_scann(
    database: np.ndarray, queries: np.ndarray, truth: np.ndarray, cfg: Any
) -> dict:
    """Builds, saves and reloads the index, then times its searches."""
    index, build_s, _ = _timed(lambda: index_lib.build_index(database, cfg.index))
    with tempfile.TemporaryDirectory(prefix="retrieval_bench_") as directory:
        index.save(directory)
        index_bytes = _directory_bytes(directory)
        del index  # the reloaded copy is the one timed
        index, load_s, _ = _timed(lambda: index_lib.load_index(directory))
    index.search(queries, cfg.k)  # warm-up
    runs = [
        _timed(lambda: index.search(queries, cfg.k)) for _ in range(cfg.search_reps)
    ]
    return {
        f"recall_at_{cfg.k}": recall(runs[0][0][0], truth),
        "scann_qps": len(queries) / statistics.median(r[1] for r in runs),
        "scann_search_s": [r[1] for r in runs],
        "scann_cpu_seconds": statistics.median(r[2] for r in runs),
        "build_s": build_s,
        "load_s": load_s,
        "index_bytes": index_bytes,
        "database_bytes": database.nbytes,
        "shard_kinds": [s.kind for s in index.shards],
    }


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` found in the same row of `ids`."""
    hits = sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), truth.tolist()))
    return hits / truth.size


def _directory_bytes(directory: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(directory)
        for name in names
    )
