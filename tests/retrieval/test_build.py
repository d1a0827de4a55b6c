"""`launch.build_index`'s work end to end on a tiny retrieval world."""

import json
import os

import numpy as np
import pytest

from experiments import stage1_shapes
from imagen_jax.data import pipeline
from imagen_jax.data import shapes_world as sw
from imagen_jax.data.tfds import shapes_world as sw_tfds
from imagen_jax.retrieval import build, mining

NUM_TRAIN = 24


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    sw_tfds.build(data_dir, 32, num_train=NUM_TRAIN, num_test=8, variant="retrieval")
    config = stage1_shapes.get_config("smoke")
    config.data.data_dir = data_dir
    # A 3-step embedder scores every pair alike: keep all but exact copies.
    config.retrieval.near_duplicate = 1.0 - 1e-6
    workdir = str(tmp_path_factory.mktemp("stage1"))
    return config, workdir, build.build(config, workdir)


def test_the_table_lands_beside_the_dataset_with_its_figures(built):
    config, workdir, figures = built
    dataset = sw_tfds.dataset_dir(config.data.data_dir, 32, "retrieval")
    table, metadata = mining.load_table(
        mining.neighbours_dir(dataset),
        "train",
        num_rows=NUM_TRAIN,
        num_database=sw.database_size(NUM_TRAIN),
    )
    assert table.shape == (NUM_TRAIN, config.data.max_context)
    assert metadata["num_train"] == NUM_TRAIN == figures["num_train"]
    assert 0.0 <= figures["neighbour_precision"] <= 1.0
    with open(os.path.join(workdir, "retrieval", "build.json")) as f:
        assert json.load(f) == figures
    # Same-source items (the target's other renders) are never neighbours.
    train = sw_tfds.load_columns(config.data.data_dir, "train")["source_id"]
    database = sw_tfds.load_columns(config.data.data_dir, "database")["source_id"]
    kept = table >= 0
    assert kept.any()
    assert not (
        database[table[kept]] == np.broadcast_to(train[:, None], table.shape)[kept]
    ).any()


def test_a_second_run_reuses_the_embedder_embeddings_and_index(built, capsys):
    config, workdir, figures = built
    stamps = {
        name: os.path.getmtime(os.path.join(workdir, "retrieval", name))
        for name in ("embeddings/database.npy", "index/index.json")
    }
    again = build.build(config, workdir)
    assert "index reloaded" in capsys.readouterr().out
    timing = ("search_s",)
    assert {k: v for k, v in again.items() if k not in timing} == {
        k: v for k, v in figures.items() if k not in timing
    }
    for name, stamp in stamps.items():
        assert os.path.getmtime(os.path.join(workdir, "retrieval", name)) == stamp


def test_stage1_batches_carry_the_mined_neighbours(built):
    config, _, _ = built
    source = pipeline.get_source(config.data, "train")
    example = source[0]
    assert example.instruction.context  # a neighbour as context
    database = sw_tfds.load_source(config.data.data_dir, "database", 32, "retrieval")
    first = example.meta["neighbours"][0]
    np.testing.assert_array_equal(
        example.instruction.context[0].image, database[first]["image"]
    )


def test_stale_embeddings_are_refused(built, tmp_path):
    config, workdir, _ = built
    other = str(tmp_path / "w")
    os.makedirs(os.path.join(other, "retrieval", "embeddings"))
    np.save(
        os.path.join(other, "retrieval", "embeddings", "database.npy"),
        np.eye(4, 128, dtype=np.float32),
    )
    with pytest.raises(ValueError, match="delete it"):
        build.build(config, other)


def test_a_world_without_a_retrieval_form_is_refused(built, tmp_path):
    config, _, _ = built
    config = stage1_shapes.get_config("smoke")
    config.data.variant = "full"
    with pytest.raises(ValueError, match="no retrieval dataset"):
        build.build(config, str(tmp_path))


def test_a_stage1_model_trains_and_is_scored_with_retrieved_context(built):
    from imagen_jax import train
    from imagen_jax.evaluation import sweep
    from imagen_jax.retrieval import retrieve

    config, workdir, _ = built
    retriever = retrieve.Retriever(os.path.join(workdir, "retrieval"))
    name = next(iter(sw.RETRIEVAL_ONLY_SUBJECTS))
    ids = retriever.search([f"a {name} at the top left"], 3)
    assert ids.shape == (1, 3) and (ids >= 0).all()
    instruction = retriever.instruction("a caption", ids[0])
    assert len(instruction.context) == 3 and instruction.text.endswith("[ref#1]")

    config.train.num_steps = 2
    config.sample.steps = 2
    del config.evals["tasks"]  # the stage-2 tasks are tested elsewhere
    train.train_and_evaluate(config, workdir)
    rows = sweep.evaluate(config, workdir)
    got = {(r["task"], r["metric"]): r["value"] for r in rows}
    assert 0.0 <= got[("retrieval_only", "retrieval_precision")] <= 1.0
    assert config.evals.retrieval.interleave == 0.5
    for task in (
        "retrieval_only",
        "retrieval_only/text_only",
        "retrieval_only/interleaved",
    ):
        assert 0.0 <= got[(task, "subject/identity")] <= 1.0
    assert os.path.exists(os.path.join(workdir, "eval", "retrieval_only.png"))
    assert os.path.exists(
        os.path.join(workdir, "eval", "retrieval_only_interleaved.png")
    )


def test_lexical_search_finds_a_rare_name_first():
    from imagen_jax.retrieval import retrieve

    captions = [
        "a red circle at the top left",
        "a vorp at the bottom right",
        "a blue square at the top left",
        "a vorp at the top left",
    ]
    ids = retrieve.LexicalIndex(captions).search(
        ["a vorp at the top left", "a zebra", "a red circle"], 2
    )
    np.testing.assert_array_equal(ids[0], [3, 1])  # the name outweighs the place
    # "a" is in every caption, so it weighs nothing: nothing is found.
    np.testing.assert_array_equal(ids[1], [-1, -1])
    assert ids[2][0] == 0
    with pytest.raises(ValueError, match="text_search"):
        retrieve.Retriever("unused", "bm42")


def test_a_request_retrieves_its_context(built):
    from imagen_jax import generate, inference, instructions

    config, workdir, _ = built  # trained by the test above
    loaded = inference.load(workdir)
    name = next(iter(sw.RETRIEVAL_ONLY_SUBJECTS))
    request = instructions.parse_request(
        {"text": f"a {name} at the top left", "retrieve": 2, "steps": 2}
    )
    batch = generate._request_batch(
        loaded, request, generate.load_png, instructions.LIMITS
    )
    assert batch["ctx_mask"][0].tolist() == [True, True, False]
    images = generate.generate_images(loaded, request)
    assert images.shape == (4, 32, 32, 3)
    too_many = instructions.parse_request({"text": "a glim", "retrieve": 4})
    with pytest.raises(instructions.LimitError, match="retrieve"):
        generate.generate_images(loaded, too_many)
