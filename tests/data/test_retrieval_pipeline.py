"""The retrieval world as tfds records, and stage 1's pipeline joining each
example with its mined neighbours (`pipeline.RetrievalSource`)."""

import numpy as np
import pytest

from experiments import stage1_shapes, t2i_shapes
from imagen_jax import instructions
from imagen_jax.data import pipeline
from imagen_jax.data import shapes_world as sw
from imagen_jax.data.tfds import shapes_world as sw_tfds
from imagen_jax.retrieval import mining
from imagen_jax.text.tokenizers import ByteTokenizer

NUM_TRAIN = 21
NUM_TEST = len(sw.RETRIEVAL_ONLY_SUBJECTS)  # each retrieval-only name once


def _table(num_rows, num_database):
    """Full rows, a short row, an empty row: ids spread over the database."""
    table = (np.arange(num_rows * 3).reshape(num_rows, 3) * 7) % num_database
    table[1, 2] = -1
    table[2] = -1
    return table.astype(np.int64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data"))
    sw_tfds.build(d, 32, num_train=NUM_TRAIN, num_test=NUM_TEST, variant="retrieval")
    num_database = sw.database_size(NUM_TRAIN)
    directory = mining.neighbours_dir(sw_tfds.dataset_dir(d, 32, "retrieval"))
    mining.save_table(directory, "train", _table(NUM_TRAIN, num_database), {"k": 10})
    return d


def test_retrieval_records(data_dir):
    sizes = {
        "train": NUM_TRAIN,
        "database": sw.database_size(NUM_TRAIN),
        "test": NUM_TEST,
    }
    for split, size in sizes.items():
        src = sw_tfds.load_source(data_dir, split, 32, "retrieval")
        assert len(src) == size
        columns = sw_tfds.load_columns(data_dir, split)
        assert columns["source_id"].dtype == np.int64
        for i in range(size):
            record = src[i]
            scene = sw.Scene.from_json(record["scene"].decode())
            np.testing.assert_array_equal(record["image"], sw.render(scene, 32))
            assert record["source_id"] == columns["source_id"][i]
            assert record["name"].decode() == columns["name"][i]
    assert set(sw_tfds.load_columns(data_dir, "test")["name"]) == set(
        sw.RETRIEVAL_ONLY_SUBJECTS
    )
    with pytest.raises(ValueError, match="no \\['colour'\\]"):
        sw_tfds.load_columns(data_dir, "train", keys=("colour",))


def _record(value, caption):
    return {
        "image": np.full((32, 32, 3), value, np.uint8),
        "caption": caption.encode(),
        "scene": b"{}",
    }


def test_source_gives_the_neighbours_as_context():
    examples = [_record(200 + i, f"target {i}") for i in range(3)]
    database = [_record(i, f"neighbour {i}") for i in range(5)]
    table = np.array([[4, 0, 2], [3, -1, -1], [-1, -1, -1]])
    source = pipeline.RetrievalSource(examples, database, table, max_context=2)
    assert len(source) == 3
    first = source[0]
    assert first.instruction.text == "target 0 [ref#1]"
    assert [c.text for c in first.instruction.context] == ["neighbour 4", "neighbour 0"]
    for item, j in zip(first.instruction.context, [4, 0], strict=True):
        np.testing.assert_array_equal(item.image, database[j]["image"])
    np.testing.assert_array_equal(first.target, examples[0]["image"])
    assert first.meta["neighbours"] == [4, 0]  # cut to max_context
    assert len(source[1].instruction.context) == 1
    alone = source[2].instruction
    assert alone.text == "target 2" and alone.context == ()
    for i in range(3):
        instructions.validate(source[i].instruction, max_context=2, resolution=32)
    with pytest.raises(ValueError, match="one row per example"):
        pipeline.RetrievalSource(examples, database, table[:2], max_context=2)


def test_renaming_replaces_the_subject_name_everywhere_or_nowhere():
    def named(value, caption, name):
        return {**_record(value, caption), "name": name.encode()}

    examples = [named(100 + i, f"a snorf at the top {i}", "snorf") for i in range(64)]
    examples.append(named(199, "a red square", ""))
    database = [
        named(1, "a snorf on the left", "snorf"),
        named(2, "a snorfy blur", "blorp"),  # a longer word is not the name
    ]
    table = np.tile([0, 1], (len(examples), 1))
    words = iter(f"zib{i}" for i in range(10**6))

    def source(rename, seed=0):
        return pipeline.RetrievalSource(
            examples,
            database,
            table,
            max_context=2,
            rename=rename,
            new_name=lambda rng: next(words),
            seed=seed,
        )

    half = source(0.5)
    renamed = 0
    for i in range(64):
        example = half[i]
        texts = [example.instruction.text, example.instruction.context[0].text]
        if "renamed" in example.meta:
            renamed += 1
            old, new = example.meta["renamed"]
            assert old == "snorf" and new.startswith("zib")
            assert texts == [f"a {new} at the top {i} [ref#1]", f"a {new} on the left"]
        else:
            assert texts == [f"a snorf at the top {i} [ref#1]", "a snorf on the left"]
        assert example.instruction.context[1].text == "a snorfy blur"
    # Binomial(64, 0.5): outside [16, 48] with probability < 1e-4.
    assert 16 <= renamed <= 48
    # The choice depends on (seed, index) alone; an unnamed subject stays.
    assert [("renamed" in half[i].meta) for i in range(64)] == [
        ("renamed" in source(0.5)[i].meta) for i in range(64)
    ]
    assert "renamed" not in source(1.0)[64].meta
    assert all("renamed" in source(1.0)[i].meta for i in range(64))
    assert not any("renamed" in source(0.0)[i].meta for i in range(64))
    with pytest.raises(ValueError, match="rename must be in"):
        source(1.5)
    with pytest.raises(ValueError, match="needs new_name"):
        pipeline.RetrievalSource(examples, database, table, 2, rename=0.5)


def test_unused_names_are_never_a_subject_name():
    rng = np.random.default_rng(0)
    words = {sw.unused_name(rng) for _ in range(2000)}
    assert not words & set(sw.ALL_SUBJECTS)
    assert len(words) > 1500  # made-up words, not a handful repeated


def _config(data_dir):
    cfg = stage1_shapes.get_config("smoke")
    cfg.data.data_dir = data_dir
    return cfg


def test_config_renaming_reaches_the_training_source(data_dir):
    cfg = _config(data_dir)
    assert (cfg.data.rename, cfg.data.redraw) == (0.8, 1.0)  # stage 1's defaults
    cfg.data.rename = 1.0
    source = pipeline.get_source(cfg.data, "train")
    redrawn = 0
    for i in range(len(source)):
        example = source[i]
        record = source._examples[i]
        name = example.meta.get("renamed", ("",))[0]
        assert name == (record["name"].decode())
        if name:
            assert name not in example.instruction.text
        # Every renamed subject is redrawn: the target is its (new) scene's
        # render; an unnamed one is the record as it was.
        scene = sw.Scene.from_json(example.meta["scene"])
        np.testing.assert_array_equal(example.target, sw.render(scene, 32))
        if not name:
            np.testing.assert_array_equal(example.target, record["image"])
        old = sw.Scene.from_json(record["scene"].decode()).objects[0]
        redrawn += scene.objects[0] != old
    assert redrawn > 0
    cfg.data.redraw = 0.0
    plain = pipeline.get_source(cfg.data, "train")
    for i in range(len(plain)):
        np.testing.assert_array_equal(plain[i].target, plain._examples[i]["image"])


def test_redraw_gives_target_and_neighbours_one_new_identity():
    rng = np.random.default_rng(0)
    background = sw.Background("dots", "mint")
    scenes = [
        sw.Scene((sw.Obj("cross", "green", size, pos, "dotted"),), background)
        for size, pos in [("small", "top left"), ("large", "center"), ("small", "left")]
    ]
    jsons = [s.to_json() for s in scenes]
    seen = set()
    for _ in range(400):
        new_jsons, images = sw.redraw_subject(rng, jsons, 32)
        new = [sw.Scene.from_json(j) for j in new_jsons]
        identities = {(s.objects[0].shape, s.objects[0].colour) for s in new}
        fills = {s.objects[0].pattern for s in new}
        assert len(identities) == 1 and len(fills) == 1  # one identity for all
        seen.add((*identities.pop(), fills.pop()))
        for old, scene, image in zip(scenes, new, images, strict=True):
            # Where, how large and on what stay; the render is the new scene's.
            assert scene.background == old.background
            assert (scene.objects[0].size, scene.objects[0].position) == (
                old.objects[0].size,
                old.objects[0].position,
            )
            np.testing.assert_array_equal(image, sw.render(scene, 32))
            assert scene.objects[0].triple not in sw.held_out_triples()
    # Every fill of every shape and colour, the retrieval-only ones included,
    # comes up (at most 72 identities, 400 draws).
    assert {fill for *_, fill in seen} == set(sw.PATTERNS)
    assert len(seen) > 50
    assert set(sw.RETRIEVAL_ONLY_SUBJECTS.values()) & seen
    two = sw.Scene(
        (
            sw.Obj("cross", "green", "small", "top left"),
            sw.Obj("circle", "red", "small", "center"),
        )
    )
    with pytest.raises(ValueError, match="one-object scenes"):
        sw.redraw_subject(rng, [two.to_json()], 32)


def test_redraw_needs_a_redrawer():
    examples = [{**_record(1, "a snorf"), "name": b"snorf"}]
    table = np.zeros((1, 1), np.int64)
    words = {"rename": 1.0, "new_name": lambda rng: "zib"}
    with pytest.raises(ValueError, match="needs redraw_subject"):
        pipeline.RetrievalSource(examples, examples, table, 1, redraw=1.0, **words)
    with pytest.raises(ValueError, match="redraw must be in"):
        pipeline.RetrievalSource(examples, examples, table, 1, redraw=2.0, **words)


def test_pipeline_batches_carry_the_mined_neighbours(data_dir):
    cfg = _config(data_dir)
    # Captions as recorded: no renaming, context captions uncut.
    cfg.data.rename, cfg.data.ctx_text_len = 0.0, 96
    tok = ByteTokenizer(extra_tokens=instructions.MARKERS)
    examples = sw_tfds.load_source(data_dir, "train", 32, "retrieval")
    database = sw_tfds.load_source(data_dir, "database", 32, "retrieval")
    table = _table(len(examples), len(database))
    it = iter(pipeline.train_dataset(cfg, tok))
    k = cfg.data.max_context
    seen = set()
    for _ in range(3):
        batch = next(it)
        assert batch["ctx_images"].shape == (8, k, 32, 32, 3)
        assert not batch["cond_image_mask"].any()
        for b in range(8):
            text = tok.decode(batch["text_tokens"][b])
            (i,) = [
                i
                for i in range(len(examples))
                if text.startswith(examples[i]["caption"].decode())
                and np.array_equal(examples[i]["image"], batch["image"][b])
            ]
            seen.add(i)
            ids = table[i][table[i] >= 0]
            np.testing.assert_array_equal(batch["ctx_mask"][b], np.arange(k) < len(ids))
            assert text.endswith("[ref#1]") == bool(len(ids))
            for slot, j in enumerate(ids):
                np.testing.assert_array_equal(
                    batch["ctx_images"][b, slot], database[int(j)]["image"]
                )
                caption = tok.decode(batch["ctx_tokens"][b, slot])
                assert caption == "[ref#1] " + database[int(j)]["caption"].decode()
            assert not batch["ctx_images"][b, len(ids) :].any()
    assert {1, 2} & seen  # a short or an empty row was checked


def test_object_weight_gives_each_target_its_objects_mask(data_dir):
    cfg = _config(data_dir)
    cfg.data.rename, cfg.data.object_weight = 1.0, 15.0
    tok = ByteTokenizer(extra_tokens=instructions.MARKERS)
    source = pipeline.get_source(cfg.data, "train")
    transform = pipeline.element_transform(cfg.data, tok)
    for i in range(len(source)):
        example = source[i]
        out = transform.map(example)
        # The boxes at the positions of the target's objects (as redrawn when
        # renamed): every pixel the target gives its subject is inside.
        scene = sw.Scene.from_json(example.meta["scene"])
        mask = out["position_mask"]
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, sw.position_mask(scene, 32))
        background = sw.render_background(scene.background, 32)
        assert mask[(out["image"] != background).any(axis=-1)].all()
    batch = next(iter(pipeline.train_dataset(cfg, tok)))
    assert batch["position_mask"].shape == (8, 32, 32)
    cfg.data.object_weight = 0.0
    assert "position_mask" not in next(iter(pipeline.train_dataset(cfg, tok)))
    t2i = t2i_shapes.get_config("smoke")
    t2i.data.object_weight = 15.0
    with pytest.raises(ValueError, match="object_weight needs the scenes"):
        pipeline.element_transform(t2i.data, tok)


def test_missing_or_stale_table_is_a_clear_error(data_dir, tmp_path):
    cfg = _config(data_dir)
    cfg.data.neighbours_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="launch.build_index"):
        pipeline.get_source(cfg.data, "train")
    stale = np.zeros((NUM_TRAIN - 1, 3), np.int64)
    mining.save_table(str(tmp_path), "train", stale, {})
    with pytest.raises(ValueError, match=f"has {NUM_TRAIN} records"):
        pipeline.get_source(cfg.data, "train")
    cfg.data.variant = "full"
    with pytest.raises(ValueError, match="no retrieval dataset"):
        pipeline.get_source(cfg.data, "train")


def test_stage1_config():
    cfg = stage1_shapes.get_config()
    assert cfg.data.name == "shapes_world_retrieval"
    assert cfg.model.conditioning == "instruction" and cfg.data.max_context == 3
    drop = cfg.diffusion.cond_drop
    assert (drop.all, drop.context, drop.text, drop.image) == (0.1, 0.1, 0.0, 0.0)
    assert cfg.init_from == "" and cfg.data.neighbours_dir == ""
    assert stage1_shapes.get_config("smoke").train.num_steps < 100
