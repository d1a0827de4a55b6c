"""Tests for the ShapesWorld oracle."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from imagen_jax.data import shapes_world as sw
from imagen_jax.evaluation import oracle


def _mean_scores(resolution, n, seed, corrupt=None):
    rng = np.random.default_rng(seed)
    totals = {}
    for _ in range(n):
        scene = sw.sample_scene(rng, min_objects=1, max_objects=3)
        image = sw.render(scene, resolution)
        if corrupt is not None:
            image = corrupt(image, rng)
        for key, value in oracle.score_scene(image, scene).items():
            totals[key] = totals.get(key, 0.0) + value / n
    return totals


def _noisy(sigma):
    def corrupt(image, rng):
        noisy = image + rng.normal(0.0, sigma, image.shape)
        return np.clip(noisy, 0, 255).round().astype(np.uint8)

    return corrupt


def _blurred(sigma):
    def corrupt(image, rng):
        del rng
        blurred = ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0))
        return np.clip(blurred, 0, 255).round().astype(np.uint8)

    return corrupt


@pytest.mark.parametrize("resolution", [32, 64])
def test_recovers_rendered_scenes(resolution):
    scores = _mean_scores(resolution, n=1000, seed=resolution)
    for key in ("shape", "colour", "position", "parsed_ok"):
        assert scores[key] >= 0.99, (key, scores)
    for key in ("size", "pattern", "bg_palette", "bg_pattern"):
        assert scores[key] >= 0.95, (key, scores)


@pytest.mark.parametrize("resolution", [32, 64])
def test_robust_to_mild_noise(resolution):
    scores = _mean_scores(resolution, n=300, seed=1, corrupt=_noisy(8.0))
    for key in ("shape", "colour", "position", "parsed_ok"):
        assert scores[key] >= 0.95, (key, scores)


@pytest.mark.parametrize("resolution", [32, 64])
def test_robust_to_mild_blur(resolution):
    scores = _mean_scores(resolution, n=200, seed=2, corrupt=_blurred(0.6))
    for key in ("shape", "colour", "position"):
        assert scores[key] >= 0.95, (key, scores)


def _single(**changes):
    obj = sw.Obj("triangle", "green", "large", "top right")
    return sw.Scene(
        (dataclasses.replace(obj, **changes),), sw.Background("dots", "mint")
    )


@pytest.mark.parametrize("resolution", [32, 64])
def test_score_single_right_answer(resolution):
    scene = _single()
    scores = oracle.score_single(sw.render(scene, resolution), scene)
    assert scores == {"colour": 1.0, "shape": 1.0, "position": 1.0, "parsed_ok": 1.0}


@pytest.mark.parametrize(
    "changes, wrong",
    [
        ({"shape": "circle"}, "shape"),
        ({"shape": "square"}, "shape"),
        ({"colour": "blue"}, "colour"),
        ({"colour": "yellow"}, "colour"),
        ({"position": "bottom left"}, "position"),
    ],
)
def test_score_single_wrong_answer_scores_zero(changes, wrong):
    target = _single()
    image = sw.render(_single(**changes), 32)
    scores = oracle.score_single(image, target)
    assert scores[wrong] == 0.0
    assert sum(scores.values()) == 3.0  # everything else still right


def test_score_single_uses_largest_object_and_counts():
    target = _single()
    extra = sw.Obj("circle", "red", "small", "bottom left")
    image = sw.render(sw.Scene(target.objects + (extra,), target.background), 32)
    scores = oracle.score_single(image, target)
    assert scores["shape"] == scores["colour"] == scores["position"] == 1.0
    assert scores["parsed_ok"] == 0.0


def test_empty_image_finds_nothing():
    image = sw.render(sw.Scene((), sw.Background("checker", "beige")), 32)
    parsed = oracle.parse(image)
    assert parsed.objects == () and parsed.largest is None
    assert parsed.background == sw.Background("checker", "beige")
    scores = oracle.score_single(image, _single())
    assert scores == {"colour": 0.0, "shape": 0.0, "position": 0.0, "parsed_ok": 0.0}


def test_parse_reads_every_attribute():
    objects = (
        sw.Obj("cross", "purple", "small", "left", "dotted", z=0),
        sw.Obj("circle", "orange", "large", "bottom right", "striped", z=1),
    )
    scene = sw.Scene(objects, sw.Background("stripes", "lavender"))
    parsed = oracle.parse(sw.render(scene, 64))
    assert parsed.background == scene.background
    found = {(o.shape, o.colour, o.size, o.position, o.pattern) for o in parsed.objects}
    assert found == {
        (o.shape, o.colour, o.size, o.position, o.pattern) for o in objects
    }
    assert parsed.largest.colour == "orange"
    top, left, side = sw.object_box(64, objects[1])
    assert parsed.largest.box == (top, left, side, side)
    assert (parsed.pattern, parsed.palette) == ("stripes", "lavender")


def test_all_object_image_has_no_background():
    image = np.broadcast_to(np.uint8(sw.COLOURS["red"]), (32, 32, 3)).copy()
    parsed = oracle.parse(image)
    assert parsed.background is None and parsed.pattern is None
    assert parsed.largest.colour == "red" and parsed.largest.shape == "square"


def test_score_batch_means():
    scenes = [_single(), _single(shape="circle")]
    images = np.stack([sw.render(_single(), 32)] * 2)
    scores = oracle.score_batch(images, scenes)
    assert scores["shape"] == 0.5 and scores["colour"] == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="float64"):
        oracle.parse(np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="2 objects"):
        scene = sw.Scene(_single().objects + (sw.Obj("circle", "red", "small", "top"),))
        oracle.score_single(sw.render(scene, 32), scene)
    with pytest.raises(ValueError, match="1 images but 2 scenes"):
        oracle.score_batch([sw.render(_single(), 32)], [_single(), _single()])
