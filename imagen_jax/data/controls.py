"""Control signals and InstructCV targets rendered from a ShapesWorld scene.

Control signals (inputs of control-to-image tasks) and vision-task targets
(outputs of InstructCV tasks) are uint8 [R, R, 3] images; greyscale ones repeat
the grey level on all three channels. Geometry comes from the same helpers as
`shapes_world.render` (`object_box`, `shape_mask`, drawing in increasing z), so
every map aligns pixel for pixel with the rendered image.

Depth: objects are ranked by z (highest z = nearest). The nearest object is
DEPTH_NEAREST metres away, each further rank DEPTH_STEP metres more, and the
background is the far plane at DEPTH_FAR metres. Depth images are 8-bit grey
linear in metres, nearer = brighter: grey = 255 * (1 - depth / DEPTH_FAR), so
the background is black. The ranks are DEPTH_STEP = 3 m apart, 77 grey
levels, so that adjacent ranks stay apart in a sampled map (at 1 m, 26 levels,
a model's depth maps on the CPU world put two objects' order at chance,
session 34; at 3 m, right in 0.83 of examples, session 35); three ranks and
the far plane then span the grey range.

Pure numpy and deterministic.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence

import numpy as np

from imagen_jax.data import shapes_world
from imagen_jax.data.shapes_world import Scene

Box = tuple[int, int, int, int]  # (top, left, bottom, right), inclusive pixels

DEPTH_NEAREST = 1.0
DEPTH_STEP = 3.0
DEPTH_FAR = 10.0
# Detection boxes are drawn in pure blue, a colour no object or background has.
BOX_COLOUR = (0, 0, 255)
# Classification answers: "red if present, otherwise blue" (InstructCV).
PRESENT_COLOUR = (255, 0, 0)
ABSENT_COLOUR = (0, 0, 255)
# The colours a classification answer may be named by (`tasks.World.answers`),
# and the default pair (present, absent). "red" and "blue" are also object
# colours, so in the default templates the answer words and the queried
# colour share words; "white" and "black" name no object or background.
ANSWER_COLOURS: Mapping[str, tuple[int, int, int]] = types.MappingProxyType(
    {
        "red": PRESENT_COLOUR,
        "blue": ABSENT_COLOUR,
        "white": (255, 255, 255),
        "black": (0, 0, 0),
    }
)
ANSWERS = ("red", "blue")

_BACKGROUND = -1


def label_map(scene: Scene, resolution: int) -> np.ndarray:
    """Index of the visible object at each pixel, int32 [R, R]; -1 is background.

    Objects are drawn in increasing z exactly as `shapes_world.render` draws
    them, so a pixel holds the nearest object covering it.
    """
    if resolution <= 0 or resolution % 16:
        raise ValueError(
            f"resolution must be a positive multiple of 16, got {resolution}"
        )
    labels = np.full((resolution, resolution), _BACKGROUND, np.int32)
    order = sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].z)
    for i in order:
        obj = scene.objects[i]
        top, left, side = shapes_world.object_box(resolution, obj)
        mask = shapes_world.shape_mask(obj.shape, side, side)
        labels[top : top + side, left : left + side][mask] = i
    return labels


def object_depths(scene: Scene) -> np.ndarray:
    """Depth in metres of each object, float64 [num_objects], from z-order."""
    # Nearest first: highest z, ties broken by object index.
    order = sorted(range(len(scene.objects)), key=lambda i: (-scene.objects[i].z, i))
    depths = np.empty(len(scene.objects))
    for rank, i in enumerate(order):
        depths[i] = DEPTH_NEAREST + rank * DEPTH_STEP
    return depths


def depth_to_grey(depth: np.ndarray | float) -> np.ndarray:
    """8-bit grey level(s) of depth(s) in metres (linear; far plane -> 0)."""
    grey = 255.0 * (1.0 - np.asarray(depth, np.float64) / DEPTH_FAR)
    return np.clip(np.floor(grey + 0.5), 0, 255).astype(np.uint8)


def grey_to_depth(grey: np.ndarray | float) -> np.ndarray:
    """Depth in metres of 8-bit grey level(s); inverse of `depth_to_grey`."""
    return DEPTH_FAR * (1.0 - np.asarray(grey, np.float64) / 255.0)


def _grey_image(values: np.ndarray) -> np.ndarray:
    """uint8 [R, R, 3] with `values` [R, R] on every channel."""
    return np.repeat(values.astype(np.uint8)[..., None], 3, axis=-1)


def _neighbours(values: np.ndarray, fill) -> np.ndarray:
    """The 4 neighbours of every pixel, [4, R, R]; outside pixels are `fill`."""
    padded = np.pad(values, 1, constant_values=fill)
    return np.stack(
        [
            padded[:-2, 1:-1],
            padded[2:, 1:-1],
            padded[1:-1, :-2],
            padded[1:-1, 2:],
        ]
    )


def edge_map(scene: Scene, resolution: int) -> np.ndarray:
    """White outlines of the visible object regions on black, uint8 [R, R, 3].

    An outline pixel belongs to an object and has a 4-neighbour that does not.
    """
    labels = label_map(scene, resolution)
    differs = (_neighbours(labels, _BACKGROUND) != labels).any(axis=0)
    return _grey_image(np.where((labels != _BACKGROUND) & differs, 255, 0))


def mask_map(scene: Scene, resolution: int) -> np.ndarray:
    """White silhouettes of all objects on black, uint8 [R, R, 3]."""
    labels = label_map(scene, resolution)
    return _grey_image(np.where(labels != _BACKGROUND, 255, 0))


def depth_map(scene: Scene, resolution: int) -> np.ndarray:
    """Object depths as grey levels (nearer = brighter), background black."""
    labels = label_map(scene, resolution)
    greys = np.append(depth_to_grey(object_depths(scene)), 0).astype(np.uint8)
    return _grey_image(greys[labels])  # label -1 picks the appended 0.


def sketch_map(scene: Scene, resolution: int) -> np.ndarray:
    """Dark outlines around the objects on white, uint8 [R, R, 3].

    The line runs just outside each visible object region: a pixel is drawn
    when a 4-neighbour belongs to a nearer object (the background is farthest).
    """
    labels = label_map(scene, resolution)
    nearness = np.append([o.z for o in scene.objects], -np.inf)[labels]
    line = (_neighbours(nearness, -np.inf) > nearness).any(axis=0)
    return _grey_image(np.where(line, 0, 255))


def _check_index(scene: Scene, obj_index: int) -> None:
    if not 0 <= obj_index < len(scene.objects):
        raise ValueError(
            f"obj_index {obj_index} is out of range for a scene with "
            f"{len(scene.objects)} objects"
        )


def segmentation_target(scene: Scene, obj_index: int, resolution: int) -> np.ndarray:
    """White where object `obj_index` is visible, black elsewhere."""
    _check_index(scene, obj_index)
    labels = label_map(scene, resolution)
    return _grey_image(np.where(labels == obj_index, 255, 0))


def object_bbox(scene: Scene, obj_index: int, resolution: int) -> Box | None:
    """Tight box (top, left, bottom, right) of the visible part of an object.

    Returns:
      The inclusive pixel box, or None when the object is fully hidden.
    """
    _check_index(scene, obj_index)
    ys, xs = np.nonzero(label_map(scene, resolution) == obj_index)
    if ys.size == 0:
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


def draw_box(image: np.ndarray, box: Box, colour=BOX_COLOUR) -> np.ndarray:
    """A copy of `image` with `box` drawn as a 1-pixel outline."""
    out = np.array(image, np.uint8, copy=True)
    top, left, bottom, right = box
    out[top, left : right + 1] = colour
    out[bottom, left : right + 1] = colour
    out[top : bottom + 1, left] = colour
    out[top : bottom + 1, right] = colour
    return out


def detection_target(
    scene: Scene,
    image: np.ndarray,
    obj_index: int | Sequence[int],
    resolution: int,
) -> np.ndarray:
    """`image` with the tight box of each queried object drawn in pure blue.

    Args:
      scene: the scene `image` shows.
      image: uint8 [R, R, 3], normally `shapes_world.render(scene, R)`.
      obj_index: the queried object, or several (e.g. every object of a class).
      resolution: R.

    Returns:
      uint8 [R, R, 3]; fully hidden objects get no box.
    """
    if np.shape(image) != (resolution, resolution, 3):
        raise ValueError(
            f"image must have shape {(resolution, resolution, 3)}, got "
            f"{np.shape(image)}"
        )
    indices = [obj_index] if isinstance(obj_index, int) else list(obj_index)
    out = np.array(image, np.uint8, copy=True)
    for i in indices:
        box = object_bbox(scene, i, resolution)
        if box is not None:
            out = draw_box(out, box)
    return out


def depth_target(scene: Scene, resolution: int) -> np.ndarray:
    """InstructCV depth answer: 8-bit grey linear in metres (see module doc).

    The same rendering as the `depth_map` control, as a depth estimator's
    output would be.
    """
    return depth_map(scene, resolution)


def classification_target(
    present: bool,
    resolution: int,
    c1: tuple[int, int, int] = PRESENT_COLOUR,
    c2: tuple[int, int, int] = ABSENT_COLOUR,
) -> np.ndarray:
    """The whole image in `c1` if the queried class is present, else `c2`."""
    colour = np.array(c1 if present else c2, np.uint8)
    return np.broadcast_to(colour, (resolution, resolution, 3)).copy()
