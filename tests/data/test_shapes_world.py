"""Tests for the ShapesWorld scene sampler, renderer and captions."""

import dataclasses
import itertools
import json
import re

import numpy as np
import pytest

from imagen_jax.data import shapes_world as sw


def _scenes(n, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return [sw.sample_scene(rng, **kwargs) for _ in range(n)]


def _distance(a, b):
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def test_vocabulary_is_fixed():
    assert sw.SHAPES == ("circle", "square", "triangle", "cross")
    assert tuple(sw.COLOURS) == ("red", "green", "blue", "yellow", "purple", "orange")
    assert len(sw.POSITIONS) == 9 and sw.POSITIONS[4] == "center"
    assert len(sw.NAMED_SUBJECTS) == 8
    weights = list(sw.NAMED_SUBJECT_WEIGHTS.values())
    assert weights == sorted(weights, reverse=True)


def test_object_colours_and_shades_are_separable():
    object_refs = list(sw.COLOURS.values()) + list(sw.SHADES.values())
    for a, b in itertools.combinations(object_refs, 2):
        assert _distance(a, b) >= 40, (a, b)
    bg_refs = [c for pair in sw.BG_PALETTES.values() for c in pair]
    for a, b in itertools.product(object_refs, bg_refs):
        assert _distance(a, b) >= 100, (a, b)


@pytest.mark.parametrize("resolution", [32, 48, 64])
def test_render_shape_dtype_and_determinism(resolution):
    scene = _scenes(1, max_objects=3)[0]
    image = sw.render(scene, resolution)
    assert image.shape == (resolution, resolution, 3)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, sw.render(scene, resolution))


@pytest.mark.parametrize("resolution", [0, 30, -16])
def test_render_rejects_bad_resolution(resolution):
    with pytest.raises(ValueError, match=str(resolution)):
        sw.render(_scenes(1)[0], resolution)


@pytest.mark.parametrize("resolution", [32, 64])
def test_object_boxes_are_disjoint_and_inside(resolution):
    for size, (a, b) in itertools.product(
        sw.SIZES, itertools.combinations(sw.POSITIONS, 2)
    ):
        top_a, left_a, side = sw.object_box(
            resolution, sw.Obj("square", "red", size, a)
        )
        top_b, left_b, _ = sw.object_box(resolution, sw.Obj("square", "red", size, b))
        for top, left in ((top_a, left_a), (top_b, left_b)):
            assert 0 <= top and top + side <= resolution
            assert 0 <= left and left + side <= resolution
        # At least one pixel of background between boxes on some axis.
        gap_rows = max(top_a, top_b) - min(top_a, top_b) - side
        gap_cols = max(left_a, left_b) - min(left_a, left_b) - side
        assert max(gap_rows, gap_cols) >= 1


def test_render_draws_solid_square_in_its_box():
    obj = sw.Obj("square", "red", "large", "center")
    scene = sw.Scene((obj,), sw.Background("plain", "grey"))
    image = sw.render(scene, 32)
    top, left, side = sw.object_box(32, obj)
    box = image[top : top + side, left : left + side]
    assert (box == sw.COLOURS["red"]).all()
    outside = image.copy()
    outside[top : top + side, left : left + side] = sw.BG_PALETTES["grey"][0]
    assert (outside == sw.BG_PALETTES["grey"][0]).all()


@pytest.mark.parametrize("resolution", [32, 64])
def test_position_mask_covers_the_objects_whatever_they_look_like(resolution):
    side = sw.object_side(resolution, "large")
    for scene in _scenes(20, seed=3):
        drawn = sw.render(scene, resolution)
        background = sw.render_background(scene.background, resolution)
        mask = sw.position_mask(scene, resolution)
        assert mask.shape == (resolution, resolution) and mask.dtype == bool
        assert mask[(drawn != background).any(axis=-1)].all()
        assert mask.sum() == len(scene.objects) * side**2  # boxes do not overlap
        # Only the positions count: another size, shape and fill, same mask.
        other = dataclasses.replace(
            scene,
            objects=tuple(
                dataclasses.replace(o, size="small", shape="cross", pattern="dotted")
                for o in scene.objects
            ),
        )
        np.testing.assert_array_equal(sw.position_mask(other, resolution), mask)


def test_patterns_use_the_darker_shade():
    obj = sw.Obj("square", "blue", "large", "center", pattern="striped")
    image = sw.render(sw.Scene((obj,)), 64)
    top, left, side = sw.object_box(64, obj)
    colours = {
        tuple(p) for p in image[top : top + side, left : left + side].reshape(-1, 3)
    }
    assert colours == {sw.COLOURS["blue"], sw.SHADES["blue"]}


def test_shape_masks_differ():
    for side in (6, 9, 12, 19):
        masks = [sw.shape_mask(s, side, side) for s in sw.SHAPES]
        for a, b in itertools.combinations(masks, 2):
            assert (a != b).sum() >= 4


def test_sample_scene_respects_counts_positions_and_z():
    for scene in _scenes(200, min_objects=2, max_objects=4):
        assert 2 <= len(scene.objects) <= 4
        positions = [o.position for o in scene.objects]
        assert len(set(positions)) == len(positions)
        assert sorted(o.z for o in scene.objects) == list(range(len(scene.objects)))


def test_sample_scene_respects_pattern_choices():
    for scene in _scenes(50, patterns=("solid",), bg_patterns=("plain",)):
        assert all(o.pattern == "solid" for o in scene.objects)
        assert scene.background.pattern == "plain"


def test_sample_scene_excludes_triples():
    exclude = frozenset(
        (s, c, "center") for s in sw.SHAPES for c in sw.COLOURS if c != "red"
    )
    for scene in _scenes(200, max_objects=9, min_objects=9, exclude=exclude):
        center = [o for o in scene.objects if o.position == "center"][0]
        assert center.colour == "red"


@pytest.mark.parametrize(
    "kwargs",
    [{"min_objects": 0}, {"max_objects": 10}, {"min_objects": 3, "max_objects": 2}],
)
def test_sample_scene_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match="min_objects"):
        sw.sample_scene(np.random.default_rng(0), **kwargs)


def test_bad_attribute_raises_naming_it():
    with pytest.raises(ValueError, match="hexagon"):
        sw.Obj("hexagon", "red", "large", "center")
    with pytest.raises(ValueError, match="distinct positions"):
        sw.Scene((sw.Obj("circle", "red", "large", "top"),) * 2)


def test_scene_round_trips_through_json():
    for scene in _scenes(20, max_objects=3):
        text = json.dumps(scene.to_dict())
        assert sw.Scene.from_dict(json.loads(text)) == scene
        assert sw.Scene.from_json(scene.to_json()) == scene


def _mentions(text, obj):
    where = {"left": "on the left", "right": "on the right", "center": "in the center"}
    position = where.get(obj.position, f"at the {obj.position}")
    return obj.colour in text and obj.shape in text and position in text


def test_canonical_caption():
    scene = sw.Scene(
        (
            sw.Obj("square", "blue", "small", "center", z=1),
            sw.Obj("circle", "red", "large", "top left", pattern="striped"),
        ),
        sw.Background("checker", "grey"),
    )
    assert sw.caption(scene) == (
        "a large red striped circle at the top left and a small blue square in the "
        "center on a grey checkered background"
    )
    orange = sw.Scene((sw.Obj("cross", "orange", "small", "bottom"),))
    assert sw.caption(orange).startswith("a small orange cross at the bottom")
    rng = np.random.default_rng(1)
    variants = {sw.caption(orange, rng) for _ in range(40)}
    assert any(v.startswith("an orange cross") for v in variants)
    assert not any("a orange" in v for v in variants)


def test_varied_captions_name_every_object():
    rng = np.random.default_rng(3)
    captions = set()
    for scene in _scenes(200, max_objects=3):
        text = sw.caption(scene, rng)
        captions.add(text)
        assert all(_mentions(text, o) for o in scene.objects), text
    scene = _scenes(1, min_objects=3)[0]
    assert len({sw.caption(scene, rng) for _ in range(30)}) > 3


@pytest.mark.parametrize("grammar", sw.GRAMMARS)
def test_unpositioned_captions_name_the_objects_but_not_where(grammar):
    position_words = re.compile(r"\b(top|bottom|left|right|center|middle)\b")
    for seed, scene in enumerate(_scenes(120, max_objects=3)):
        kwargs = dict(grammar=grammar, background=False)
        positioned, _ = sw.describe(scene, np.random.default_rng(seed), **kwargs)
        text, _ = sw.describe(
            scene, np.random.default_rng(seed), positioned=False, **kwargs
        )
        assert not position_words.search(text), text
        assert all(o.colour in text and o.shape in text for o in scene.objects), text
        # The same draws: only the positions are left out.
        assert position_words.search(positioned), positioned
        assert len(text) < len(positioned)


def test_held_out_triples():
    held = sw.held_out_triples()
    assert len(held) == 22
    assert held == sw.held_out_triples(seed=0)
    assert held != sw.held_out_triples(seed=1)
    assert all(
        s in sw.SHAPES and c in sw.COLOURS and p in sw.POSITIONS for s, c, p in held
    )
    with pytest.raises(ValueError, match="1.5"):
        sw.held_out_triples(fraction=1.5)


def test_generate_is_seeded_and_excludes_held_out():
    first = list(sw.generate("train", 50, seed=7))
    again = list(sw.generate("train", 50, seed=7))
    other = list(sw.generate("train", 50, seed=8))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["caption"] == b["caption"] and a["scene"] == b["scene"]
    assert [e["scene"] for e in first] != [e["scene"] for e in other]
    held = sw.held_out_triples()
    for example in sw.generate("train", 300, seed=0):
        scene = sw.Scene.from_json(example["scene"])
        assert not any(o.triple in held for o in scene.objects)
        np.testing.assert_array_equal(example["image"], sw.render(scene))
        assert all(_mentions(example["caption"], o) for o in scene.objects)


def test_generate_test_split_is_held_out_single_objects():
    held = sw.held_out_triples()
    examples = list(sw.generate("test", 44, seed=0, resolution=64))
    triples = set()
    for example in examples:
        scene = sw.Scene.from_json(example["scene"])
        assert len(scene.objects) == 1 and scene.objects[0].triple in held
        assert example["caption"] == sw.caption(scene)
        assert example["image"].shape == (64, 64, 3)
        triples.add(scene.objects[0].triple)
    assert triples == held


def test_generate_rejects_unknown_split():
    with pytest.raises(ValueError, match="validation"):
        next(sw.generate("validation", 1, seed=0))


def test_eval_prompts():
    prompts = sw.eval_prompts(5, seed=0, resolution=32)
    assert len(prompts) == 5
    for prompt in prompts:
        assert isinstance(prompt["scene"], sw.Scene)
        assert prompt["caption"] == sw.caption(prompt["scene"])
        np.testing.assert_array_equal(prompt["image"], sw.render(prompt["scene"], 32))
