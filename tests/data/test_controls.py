"""Control maps and InstructCV targets align with `shapes_world.render`."""

import numpy as np
import pytest

from imagen_jax.data import controls, shapes_world
from imagen_jax.data.shapes_world import Background, Obj, Scene

R = 32


def _scenes(n=12, resolution=R):
    rng = np.random.default_rng(0)
    return [
        shapes_world.sample_scene(rng, min_objects=1, max_objects=4) for _ in range(n)
    ]


SCENE = Scene(
    (
        Obj("circle", "red", "large", "top left", "striped", z=2),
        Obj("triangle", "blue", "small", "center", "solid", z=0),
        Obj("cross", "yellow", "large", "bottom right", "dotted", z=1),
    ),
    Background("checker", "mint"),
)


def _object_pixels(scene, resolution):
    """bool [R, R]: where `render` differs from the bare background."""
    image = shapes_world.render(scene, resolution)
    background = shapes_world.render_background(scene.background, resolution)
    return (image != background).any(-1)


def _is_grey(image):
    return image.dtype == np.uint8 and (image == image[..., :1]).all()


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_mask_map_is_exactly_the_rendered_objects(resolution):
    for scene in _scenes(resolution=resolution):
        mask = controls.mask_map(scene, resolution)
        assert mask.shape == (resolution, resolution, 3) and _is_grey(mask)
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(
            mask[..., 0] == 255, _object_pixels(scene, resolution)
        )


def test_union_of_segmentations_is_the_mask_map():
    for scene in _scenes():
        union = np.zeros((R, R), bool)
        for i in range(len(scene.objects)):
            seg = controls.segmentation_target(scene, i, R)[..., 0] == 255
            assert seg.any() and not (union & seg).any()
            union |= seg
        np.testing.assert_array_equal(union, controls.mask_map(scene, R)[..., 0] == 255)


def test_segmentation_is_the_objects_own_shape():
    seg = controls.segmentation_target(SCENE, 1, R)[..., 0] == 255
    top, left, side = shapes_world.object_box(R, SCENE.objects[1])
    expected = np.zeros((R, R), bool)
    expected[top : top + side, left : left + side] = shapes_world.shape_mask(
        "triangle", side, side
    )
    np.testing.assert_array_equal(seg, expected)


def test_edge_map_is_the_inner_boundary():
    for scene in _scenes():
        inside = controls.mask_map(scene, R)[..., 0] == 255
        edge = controls.edge_map(scene, R)
        assert _is_grey(edge)
        edge = edge[..., 0] == 255
        padded = np.pad(inside, 1)
        all_neighbours_inside = (
            padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
        np.testing.assert_array_equal(edge, inside & ~all_neighbours_inside)


def test_sketch_map_is_a_dark_line_just_outside():
    for scene in _scenes():
        inside = controls.mask_map(scene, R)[..., 0] == 255
        sketch = controls.sketch_map(scene, R)
        assert _is_grey(sketch) and set(np.unique(sketch)) == {0, 255}
        line = sketch[..., 0] == 0
        padded = np.pad(inside, 1)
        touches = (
            padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        )
        np.testing.assert_array_equal(line, ~inside & touches)


def test_depth_map_nearer_is_brighter_and_background_black():
    depth = controls.depth_map(SCENE, R)
    assert _is_grey(depth)
    grey = depth[..., 0]
    labels = controls.label_map(SCENE, R)
    assert (grey[labels == -1] == 0).all()
    level = {i: set(np.unique(grey[labels == i])) for i in range(3)}
    # z 2 (nearest) -> 1 m, z 1 -> 4 m, z 0 -> 7 m; grey = 255 * (1 - d / 10).
    assert level == {0: {230}, 2: {153}, 1: {77}}
    np.testing.assert_array_equal(controls.depth_target(SCENE, R), depth)
    np.testing.assert_allclose(controls.object_depths(SCENE), [1.0, 7.0, 4.0])
    np.testing.assert_allclose(
        controls.grey_to_depth([230, 153, 77, 0]), [0.98, 4.0, 6.98, 10.0], atol=0.03
    )


def test_detection_outline_is_blue_on_the_tight_box():
    image = shapes_world.render(SCENE, R)
    for i in range(3):
        out = controls.detection_target(SCENE, image, i, R)
        top, left, bottom, right = controls.object_bbox(SCENE, i, R)
        seg = controls.segmentation_target(SCENE, i, R)[..., 0] == 255
        # The box is tight: the silhouette touches all four sides.
        assert seg[top].any() and seg[bottom].any()
        assert seg[:, left].any() and seg[:, right].any()
        assert not seg[:top].any() and not seg[bottom + 1 :].any()
        border = np.zeros((R, R), bool)
        border[top : bottom + 1, left : right + 1] = True
        border[top + 1 : bottom, left + 1 : right] = False
        is_blue = (out == controls.BOX_COLOUR).all(-1)
        np.testing.assert_array_equal(is_blue, border)
        np.testing.assert_array_equal(out[~border], image[~border])
    both = controls.detection_target(SCENE, image, [0, 2], R)
    assert (both == controls.BOX_COLOUR).all(-1).sum() > (
        out == controls.BOX_COLOUR
    ).all(-1).sum()


def test_no_scene_colour_is_box_blue():
    colours = list(shapes_world.COLOURS.values()) + list(shapes_world.SHADES.values())
    colours += [c for pair in shapes_world.BG_PALETTES.values() for c in pair]
    for c in colours:
        assert not (c[0] <= 50 and c[1] <= 50 and c[2] >= 205), c


def test_classification_target():
    yes = controls.classification_target(True, R)
    no = controls.classification_target(False, R)
    assert yes.shape == (R, R, 3) and yes.dtype == np.uint8
    assert (yes == (255, 0, 0)).all() and (no == (0, 0, 255)).all()
    green = controls.classification_target(True, 16, c1=(0, 255, 0))
    assert (green == (0, 255, 0)).all()


def test_controls_are_deterministic():
    for fn in (
        controls.edge_map,
        controls.mask_map,
        controls.depth_map,
        controls.sketch_map,
    ):
        np.testing.assert_array_equal(fn(SCENE, R), fn(SCENE, R))


def test_errors():
    with pytest.raises(ValueError, match="obj_index 3 is out of range"):
        controls.segmentation_target(SCENE, 3, R)
    with pytest.raises(ValueError, match="multiple of 16, got 30"):
        controls.mask_map(SCENE, 30)
    with pytest.raises(ValueError, match=r"image must have shape \(32, 32, 3\)"):
        controls.detection_target(SCENE, np.zeros((16, 16, 3), np.uint8), 0, R)
