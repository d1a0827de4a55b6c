"""The retrieval index: exact search, ScaNN recall, shards, save/load, errors."""

import json
import os
import shutil

import numpy as np
import pytest

from imagen_jax.retrieval import index as index_lib

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, seed: int, num_clusters: int = 20) -> np.ndarray:
    """Unit vectors around a few centres, like embeddings of a small corpus."""
    rng = np.random.default_rng(seed)
    centres = _unit(np.random.default_rng(0).standard_normal((num_clusters, DIM)))
    points = centres[rng.integers(num_clusters, size=n)]
    return _unit(points + 0.15 * rng.standard_normal((n, DIM)))


@pytest.fixture(scope="module")
def corpus():
    return _clustered(6000, seed=1), _clustered(50, seed=2)


def _config(**overrides):
    cfg = index_lib.default_config()
    cfg.brute_force_below = 1000
    cfg.num_leaves_to_search = 20
    cfg.training_sample_size = 0
    cfg.reorder = 50
    cfg.update(overrides)
    return cfg


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(a) & set(b)) for a, b in zip(ids, truth)]
    return sum(hits) / truth.size


def test_exact_search_matches_a_naive_argsort():
    rng = np.random.default_rng(0)
    database = _unit(rng.standard_normal((500, DIM)))
    queries = _unit(rng.standard_normal((7, DIM)))
    # Small blocks: the running top-k is merged across chunks and batches.
    ids, scores = index_lib.exact_search(
        database, queries, 10, batch_size=3, chunk_size=64
    )
    full = queries.astype(np.float64) @ database.astype(np.float64).T
    expected = np.argsort(-full, axis=1)[:, :10]
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), rtol=1e-5)
    # k = N with chunks smaller than k: every row, sorted.
    ids, scores = index_lib.exact_search(database, queries, 500, chunk_size=64)
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(500), (7, 1)))
    assert (np.diff(scores, axis=1) <= 0).all()


def test_scann_recall_against_exact(corpus):
    database, queries = corpus
    index = index_lib.build_index(database, _config())
    assert [s.kind for s in index.shards] == [index_lib.TREE_AH]
    ids, scores = index.search(queries, 10)
    truth, _ = index_lib.exact_search(database, queries, 10)
    assert _recall(ids, truth) >= 0.9
    # Reordered scores are the exact inner products of the ids found.
    exact = np.einsum("qd,qkd->qk", queries, database[ids])
    np.testing.assert_allclose(scores, exact, atol=1e-5)


def test_a_saved_index_reloads_with_the_same_results(corpus, tmp_path):
    database, queries = corpus
    index = index_lib.build_index(database, _config(num_shards=2))
    index.save(str(tmp_path / "index"))
    ids, scores = index.search(queries, 10)
    # Asset paths are relative: the directory may move.
    moved = str(tmp_path / "moved")
    shutil.move(str(tmp_path / "index"), moved)
    for in_memory in (True, False):
        loaded = index_lib.load_index(moved, in_memory=in_memory)
        assert loaded.num_vectors == 6000 and loaded.dim == DIM
        assert loaded.config.reorder == 50
        again_ids, again_scores = loaded.search(queries, 10)
        np.testing.assert_array_equal(again_ids, ids)
        np.testing.assert_array_equal(again_scores, scores)


def test_brute_force_shards_agree_with_one_index_and_exact_search(corpus, tmp_path):
    database, queries = corpus
    exact_ids, exact_scores = index_lib.exact_search(database, queries, 10)
    one = index_lib.build_index(database, _config(brute_force_below=10**6))
    three = index_lib.build_index(
        database, _config(brute_force_below=10**6, num_shards=3)
    )
    assert [s.size for s in three.shards] == [2000, 2000, 2000]
    assert {s.kind for s in three.shards} == {index_lib.BRUTE_FORCE}
    # Shard files read as memmaps, written shard by shard, searched from disk.
    paths = []
    for i, part in enumerate(np.array_split(database, 3)):
        paths.append(str(tmp_path / f"part{i}.npy"))
        np.save(paths[-1], part)
    on_disk = index_lib.build_index(
        [np.load(p, mmap_mode="r") for p in paths],
        _config(brute_force_below=10**6),
        directory=str(tmp_path / "index"),
    )
    assert not on_disk.in_memory and len(on_disk.shards) == 3
    for index in (one, three, on_disk):
        ids, scores = index.search(queries, 10)
        np.testing.assert_array_equal(ids, exact_ids)
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_partitioned_shards_agree_with_one_index(corpus):
    database, queries = corpus
    one_ids, _ = index_lib.build_index(database, _config()).search(queries, 10)
    three = index_lib.build_index(database, _config(num_shards=3))
    assert {s.kind for s in three.shards} == {index_lib.TREE_AH}
    three_ids, _ = three.search(queries, 10)
    assert three_ids.min() >= 0 and three_ids.max() < 6000
    # Global ids: many neighbours come from the second and third shards.
    assert (three_ids >= 2000).mean() > 0.3
    assert _recall(three_ids, one_ids) >= 0.9


def test_brute_force_threshold_and_shards_smaller_than_k(corpus):
    database, queries = corpus
    small = database[:999]
    assert index_lib.build_index(small, _config()).shards[0].kind == "brute_force"
    assert index_lib.build_index(database[:1000], _config()).shards[0].kind == "tree_ah"
    # Three shards of 4 vectors, k = 10: every shard gives all it has.
    tiny = database[:12]
    ids, scores = index_lib.build_index(tiny, _config(num_shards=3)).search(queries, 10)
    exact_ids, exact_scores = index_lib.exact_search(tiny, queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_bad_input_is_refused(corpus):
    database, queries = corpus
    index = index_lib.build_index(database[:100], _config())
    with pytest.raises(ValueError, match="dimension 16, expected 32"):
        index.search(queries[:, :16], 5)
    with pytest.raises(ValueError, match="k=101 neighbours requested from 100"):
        index.search(queries, 101)
    with pytest.raises(ValueError, match="k=0"):
        index_lib.exact_search(database, queries, 0)
    with pytest.raises(ValueError, match="L2-normalised"):
        index.search(2 * queries, 5)
    with pytest.raises(ValueError, match="empty"):
        index_lib.build_index(np.zeros((0, DIM), np.float32), _config())
    with pytest.raises(ValueError, match="empty"):
        index_lib.build_index([], _config())
    with pytest.raises(ValueError, match=r"shard 1 is empty"):
        index_lib.build_index([database[:5], database[:0]], _config())
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        index_lib.exact_search(database[0], queries, 5)
    with pytest.raises(ValueError, match="num_shards=7 exceeds the 5"):
        index_lib.build_index(database[:5], _config(num_shards=7))
    with pytest.raises(ValueError, match="dims_per_block=0"):
        index_lib.build_index(database, _config(dims_per_block=0))


def test_a_missing_or_damaged_index_is_named(corpus, tmp_path):
    database, queries = corpus
    directory = str(tmp_path / "index")
    with pytest.raises(ValueError, match=f"no index at {directory}"):
        index_lib.load_index(directory)
    index_lib.build_index(database, _config()).save(directory)
    # A truncated file would crash ScaNN itself: it is caught before.
    damaged = os.path.join(directory, "shard_00000", "hashed_dataset.npy")
    with open(damaged, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=f"damaged index: {damaged}"):
        index_lib.load_index(directory)
    with pytest.raises(ValueError, match=f"damaged index: {damaged}"):
        index_lib.load_index(directory, in_memory=False).search(queries, 5)
    manifest = os.path.join(directory, index_lib.MANIFEST)
    with open(manifest) as f:
        content = json.load(f)
    del content["shards"][0]["size"]
    with open(manifest, "w") as f:
        json.dump(content, f)
    with pytest.raises(ValueError, match=f"damaged index manifest {manifest}"):
        index_lib.load_index(directory)


def test_the_benchmark_record():
    from experiments import bench as bench_configs
    from imagen_jax.retrieval import bench

    config = bench_configs.get_config("retrieval,smoke")
    assert set(config) == {"retrieval"}
    assert bench_configs.get_config("retrieval").retrieval.num_vectors == 10**6
    rec = bench.run_retrieval(config)
    assert rec["num_vectors"] == 3000 and rec["shard_kinds"] == ["tree_ah"]
    assert rec["exact_jnp_agreement"] == 1.0
    assert rec["recall_at_10"] >= 0.9
    assert rec["exact_qps"] == max(rec["exact_numpy_qps"], rec["exact_jnp_qps"])
    assert rec["speedup"] == pytest.approx(rec["scann_qps"] / rec["exact_qps"])
    assert rec["index_bytes"] > rec["database_bytes"] // 2
    assert rec["build_s"] > 0 and rec["cpu"] and "mixture of 20" in rec["data"]
    json.dumps(rec)
    with pytest.raises(ValueError, match="retrieval"):
        bench.run_retrieval(bench_configs.get_config("smoke"))


def test_the_benchmark_data_is_normalised_and_clustered():
    from experiments import bench as bench_configs
    from imagen_jax.retrieval import bench

    cfg = bench_configs.get_config("retrieval,smoke").retrieval
    database, queries = bench.synthetic_embeddings(cfg)
    assert database.shape == (3000, 32) and queries.shape == (50, 32)
    np.testing.assert_allclose(np.linalg.norm(database, axis=1), 1, rtol=1e-5)
    # Clustered: a query's nearest neighbour is far closer than a random row.
    _, scores = index_lib.exact_search(database, queries, 1)
    random_pairs = (queries @ database[:100].T).mean()
    assert scores.mean() > 0.6 and abs(random_pairs) < 0.15, (
        scores.mean(),
        random_pairs,
    )
