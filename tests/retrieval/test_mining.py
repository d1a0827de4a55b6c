"""Neighbour mining: what is dropped, what is kept, the stored table."""

import json
import os

import numpy as np
import pytest

from imagen_jax import instructions
from imagen_jax.data import shapes_world as sw
from imagen_jax.retrieval import mining


def _reference(ids, scores, source_ids, query_source_ids, self_ids, k, threshold):
    """The mining rule written as a plain loop."""
    table = np.full((len(ids), k), -1, np.int64)
    for n in range(len(ids)):
        kept = [
            j
            for j, s in zip(ids[n], scores[n], strict=True)
            if j >= 0
            and j != self_ids[n]
            and s <= threshold
            and source_ids[j] != query_source_ids[n]
        ][:k]
        table[n, : len(kept)] = kept
    return table


def _random_candidates(rng, n=200, n_db=300, c=10):
    ids = np.stack([rng.choice(n_db, c, replace=False) for _ in range(n)])
    ids[rng.random(ids.shape) < 0.05] = -1  # the index found fewer
    scores = -np.sort(-rng.uniform(0.5, 1.0, (n, c)), axis=1).astype(np.float32)
    source_ids = rng.integers(0, 60, n_db)  # ~5 renders per source
    query_source_ids = rng.integers(0, 60, n)
    self_ids = np.where(rng.random(n) < 0.5, ids[:, 0], -1)
    return ids, scores, source_ids, query_source_ids, self_ids


def test_duplicates_and_same_source_items_are_never_kept():
    rng = np.random.default_rng(0)
    ids, scores, source_ids, query_source_ids, self_ids = _random_candidates(rng)
    table = mining.mine_neighbours(
        ids,
        scores,
        source_ids,
        query_source_ids,
        num_context=3,
        near_duplicate=0.95,
        self_ids=self_ids,
    )
    assert table.shape == (200, 3) and table.dtype == np.int64
    score_of = [dict(zip(i, s, strict=True)) for i, s in zip(ids, scores, strict=True)]
    kept = 0
    for n, row in enumerate(table):
        for j in row[row >= 0]:
            kept += 1
            assert j != self_ids[n]
            assert score_of[n][j] <= 0.95
            assert source_ids[j] != query_source_ids[n]
        # -1 only as trailing padding
        assert (row[: (row >= 0).sum()] >= 0).all()
    assert kept > 300  # the rule leaves most rows neighbours to check
    np.testing.assert_array_equal(
        table,
        _reference(ids, scores, source_ids, query_source_ids, self_ids, 3, 0.95),
    )


def test_a_cluster_by_hand():
    # Query 0 (source 7, itself database item 4): candidates best first.
    ids = np.array([[4, 2, 5, 1, 3, 0]])
    scores = np.array([[1.0, 0.99, 0.9, 0.8, 0.7, 0.6]])
    source_ids = np.array([5, 7, 2, 7, 7, 3])
    table = mining.mine_neighbours(
        ids, scores, source_ids, np.array([7]), num_context=2, self_ids=np.array([4])
    )
    # 4 itself, 2 a near-duplicate, 5 from another source (kept), 1 and 3 of
    # the query's source 7, then 0 kept.
    np.testing.assert_array_equal(table, [[5, 0]])
    stats = mining.mining_stats(
        ids, scores, source_ids, np.array([7]), num_context=3, self_ids=np.array([4])
    )
    assert stats.num_queries == 1 and stats.num_candidates == 6
    assert stats.short_rows == 1 and stats.empty_rows == 0  # 2 kept < 3
    assert stats.dropped == pytest.approx(
        {"missing": 0.0, "self": 1 / 6, "near_duplicate": 1 / 6, "same_source": 2 / 6}
    )
    json.dumps(stats.to_dict())  # goes into the table's metadata


def test_rows_without_survivors_are_padded():
    ids = np.array([[0, 1], [-1, -1]])
    scores = np.array([[0.99, 0.99], [0.0, 0.0]])
    table = mining.mine_neighbours(ids, scores, np.array([0, 1]), np.array([5, 5]))
    np.testing.assert_array_equal(table, [[-1, -1, -1], [-1, -1, -1]])
    stats = mining.mining_stats(ids, scores, np.array([0, 1]), np.array([5, 5]))
    assert stats.empty_rows == 2 and stats.dropped["missing"] == 0.5


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(scores=np.zeros((2, 3))), "ids and scores"),
        (dict(query_source_ids=np.zeros(3)), "query_source_ids"),
        (dict(self_ids=np.zeros(5)), "self_ids"),
        (dict(ids=np.array([[0, 1], [9, 0]]), scores=np.zeros((2, 2))), "past"),
        (dict(num_context=0), "num_context"),
    ],
)
def test_bad_inputs_are_clear_errors(change, match):
    args = dict(
        ids=np.array([[0, 1], [1, 0]]),
        scores=np.zeros((2, 2)),
        source_ids=np.arange(4),
        query_source_ids=np.arange(2),
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        mining.mine_neighbours(**args)


def test_mining_the_retrieval_world():
    """Real renders, pixel embeddings: other renders of a training target's
    scene are among its candidates, and none is kept."""
    db = [sw.make_retrieval_example("database", i, 0) for i in range(600)]
    queries = [sw.make_retrieval_example("train", i, 0) for i in range(200)]

    def embed(records):
        x = np.stack([r["image"] for r in records]).reshape(len(records), -1)
        x = x.astype(np.float32) - 128.0
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    scores = embed(queries) @ embed(db).T
    ids = np.argsort(-scores, axis=1)[:, :10]
    scores = np.take_along_axis(scores, ids, axis=1)
    source_ids = np.array([r["source_id"] for r in db])
    query_source_ids = np.array([r["source_id"] for r in queries])
    args = (ids, scores, source_ids, query_source_ids)
    table = mining.mine_neighbours(*args, num_context=3, near_duplicate=0.98)
    stats = mining.mining_stats(*args, num_context=3, near_duplicate=0.98)
    assert stats.dropped["same_source"] > 0 and stats.dropped["near_duplicate"] > 0
    for n, row in enumerate(table):
        for j in row[row >= 0]:
            assert source_ids[j] != query_source_ids[n]
            assert np.dot(embed([queries[n]])[0], embed([db[j]])[0]) <= 0.98
    precision = mining.neighbour_precision(
        table, [q["name"] for q in queries], [r["name"] for r in db]
    )
    assert 0.0 <= precision <= 1.0


def test_neighbour_precision():
    table = np.array([[0, 1, -1], [2, -1, -1], [0, 1, 2], [-1, -1, -1]])
    query_names = ["glim", "zorblat", "", "vorp"]  # query 2 is unnamed
    db_names = ["glim", "", "zorblat"]
    # Named queries' kept neighbours: glim (yes), "" (no), zorblat (yes).
    assert mining.neighbour_precision(table, query_names, db_names) == 2 / 3
    empty = np.full((4, 3), -1)
    assert np.isnan(mining.neighbour_precision(empty, query_names, db_names))
    with pytest.raises(ValueError, match="query names"):
        mining.neighbour_precision(table[:2], query_names, db_names)


def test_table_round_trip(tmp_path):
    directory = mining.neighbours_dir(str(tmp_path))
    table = np.array([[3, 1, -1], [0, -1, -1]], np.int64)
    path = mining.save_table(directory, "train", table, {"k": 10, "embedder": "e"})
    assert path == os.path.join(str(tmp_path), "neighbours", "train.npy")
    loaded, meta = mining.load_table(directory, "train", num_rows=2, num_database=4)
    np.testing.assert_array_equal(loaded, table)
    assert loaded.dtype == np.int64
    assert meta == {
        "k": 10,
        "embedder": "e",
        "split": "train",
        "num_rows": 2,
        "num_context": 3,
    }
    assert sorted(os.listdir(directory)) == ["train.json", "train.npy"]


def test_table_errors(tmp_path):
    directory = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="train.npy.*launch.build_index"):
        mining.load_table(directory, "train")
    mining.save_table(directory, "train", np.zeros((5, 3), np.int64), {})
    with pytest.raises(ValueError, match="5 rows but split 'train' has 6"):
        mining.load_table(directory, "train", num_rows=6)
    mining.save_table(directory, "train", np.full((2, 3), 7), {})
    with pytest.raises(ValueError, match="record 7 but the database has 7"):
        mining.load_table(directory, "train", num_database=7)
    with pytest.raises(ValueError, match="int"):
        mining.save_table(directory, "train", np.zeros(3), {})


def test_neighbour_instruction_is_a_valid_instruction():
    images = [np.full((32, 32, 3), i, np.uint8) for i in range(3)]
    pairs = [(im, f"caption {i}") for i, im in enumerate(images)]
    instr = mining.neighbour_instruction("a zorblat at the top left", pairs)
    assert instr.text == "a zorblat at the top left [ref#1]"
    assert [c.marker for c in instr.context] == ["[ref#1]"] * 3
    assert [c.text for c in instr.context] == ["caption 0", "caption 1", "caption 2"]
    instructions.validate(instr, max_context=3, resolution=32)
    bare = mining.neighbour_instruction("a zorblat", [])
    assert bare.text == "a zorblat" and bare.context == ()
    instructions.validate(bare, max_context=3, resolution=32)
