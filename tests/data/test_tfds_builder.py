"""The tfds builder writes array_record that the grain pipeline reads."""

import json

import numpy as np
import pytest

from experiments import t2i_shapes
from imagen_jax.data import pipeline
from imagen_jax.data import shapes_world as sw
from imagen_jax.data.tfds import shapes_world as sw_tfds
from imagen_jax.text.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data"))
    for variant in ("full", "simple"):
        sw_tfds.build(d, 32, num_train=48, num_test=8, variant=variant)
    return d


@pytest.mark.parametrize("variant", ["full", "simple"])
def test_round_trip(data_dir, variant):
    src = sw_tfds.load_source(data_dir, "train", 32, variant)
    assert len(src) == 48
    held_out = sw.held_out_triples()
    for i in range(0, 48, 7):
        ex = src[i]
        assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
        scene = sw.Scene.from_json(ex["scene"].decode())
        np.testing.assert_array_equal(ex["image"], sw.render(scene, 32))
        caption = ex["caption"].decode()
        for obj in scene.objects:
            assert obj.colour in caption and obj.shape in caption
            assert obj.position.split()[-1] in caption
            assert (obj.shape, obj.colour, obj.position) not in held_out
        if variant == "simple":
            assert len(scene.objects) == 1 and scene.background.pattern == "plain"
    test = sw_tfds.load_source(data_dir, "test", 32, variant)
    assert len(test) == 8
    # tfds stores records in a shuffled order: compare as sets.
    expected = {
        (e["scene"], e["caption"]) for e in sw.generate("test", 8, sw_tfds.SEED)
    }
    got = {(r["scene"].decode(), r["caption"].decode()) for r in test}
    assert got == expected


def test_records_match_the_generator(data_dir):
    src = sw_tfds.load_source(data_dir, "train", 32)
    by_scene = {src[i]["scene"].decode(): src[i] for i in range(len(src))}
    for example in sw.generate("train", 48, seed=sw_tfds.SEED):
        record = by_scene[example["scene"]]
        assert record["caption"].decode() == example["caption"]


def test_unknown_split_is_a_clear_error(data_dir):
    with pytest.raises(ValueError, match="'validation'"):
        sw_tfds.load_source(data_dir, "validation", 32)


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="launch.build_data") as error:
        sw_tfds.load_source(str(tmp_path), "train", 32)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message


@pytest.mark.parametrize("resolution, variant", [(48, "full"), (32, "fancy")])
def test_bad_config_is_a_clear_error(tmp_path, resolution, variant):
    with pytest.raises(
        ValueError, match=str(resolution) if variant == "full" else variant
    ):
        sw_tfds.build(str(tmp_path), resolution, 4, 2, variant=variant)


def test_pipeline_batches(data_dir):
    cfg = t2i_shapes.get_config("smoke")
    cfg.data.data_dir = data_dir
    tok = ByteTokenizer()
    it = iter(pipeline.train_dataset(cfg, tok, process_index=1, process_count=2))
    batch = next(it)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["text_tokens"].shape == (4, cfg.data.max_text_len)
    assert batch["text_mask"].dtype == bool and batch["text_mask"].any(axis=1).all()
    state = it.get_state()
    following = next(it)
    it2 = iter(pipeline.train_dataset(cfg, tok, process_index=1, process_count=2))
    it2.set_state(json.loads(json.dumps(state)))
    np.testing.assert_array_equal(next(it2)["image"], following["image"])


def test_global_batches_do_not_depend_on_the_process_count(data_dir):
    """Host p's batch is rows [p*b, (p+1)*b) of the one-process batch, and an
    iterator state restores on another process count (issue 16)."""
    cfg = t2i_shapes.get_config("smoke")
    cfg.data.data_dir = data_dir
    tok = ByteTokenizer()

    def hosts(count):
        return [
            iter(pipeline.train_dataset(cfg, tok, process_index=p, process_count=count))
            for p in range(count)
        ]

    (one,), two = hosts(1), hosts(2)
    for _ in range(8):  # past an epoch of 48 examples
        whole = next(one)["image"]
        np.testing.assert_array_equal(
            np.concatenate([next(it)["image"] for it in two]), whole
        )
    (resumed,) = hosts(1)
    resumed.set_state(json.loads(json.dumps(two[0].get_state())))
    np.testing.assert_array_equal(next(resumed)["image"], next(one)["image"])
