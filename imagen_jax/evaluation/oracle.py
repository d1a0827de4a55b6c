"""ShapesWorld oracle: parses an image back into objects and background style.

Pixels are classified by their nearest reference colour (object colours, their
darker pattern shades, background palette colours) within a distance
threshold. Object pixels form 4-connected components; each component takes the
majority colour (a pattern shade counts for its colour), its shape is the
template with the best IoU inside its bounding box, and its position is the
grid cell of its centroid. This is exact on rendered scenes and tolerant of
mild noise and blur in generated ones.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from imagen_jax.data import shapes_world as sw

_COLOUR_NAMES = tuple(sw.COLOURS)
_NUM_COLOURS = len(_COLOUR_NAMES)
_PALETTE_NAMES = tuple(sw.BG_PALETTES)
# Reference table: colours, then their shades, then (main, accent) per palette.
_REFERENCES = np.array(
    [sw.COLOURS[c] for c in _COLOUR_NAMES]
    + [sw.SHADES[c] for c in _COLOUR_NAMES]
    + [rgb for name in _PALETTE_NAMES for rgb in sw.BG_PALETTES[name]],
    dtype=np.float32,
)
_FIRST_BG = 2 * _NUM_COLOURS
_UNKNOWN = -1
# Pixels farther than this (RGB Euclidean) from every reference are ignored.
MAX_COLOUR_DISTANCE = 80.0
# Pixels nearest to an object colour within this distance join its silhouette.
MAX_BLEND_DISTANCE = 130.0
# A colour takes its own object inside a component once it has this share.
_SPLIT_SHARE = 0.3


@dataclasses.dataclass(frozen=True)
class ParsedObject:
    """One object found in an image."""

    shape: str
    colour: str
    size: str
    position: str
    pattern: str
    area: int  # pixels
    centroid: tuple[float, float]  # (row, col) in pixels
    box: tuple[int, int, int, int]  # (top, left, height, width) in pixels
    shape_iou: float  # IoU of the best shape template


@dataclasses.dataclass(frozen=True)
class ParsedScene:
    """Objects (largest first) and the background style, if any is visible."""

    objects: tuple[ParsedObject, ...]
    background: sw.Background | None

    @property
    def largest(self) -> ParsedObject | None:
        return self.objects[0] if self.objects else None

    @property
    def pattern(self) -> str | None:
        """Background pattern, or None when no background is visible."""
        return self.background.pattern if self.background else None

    @property
    def palette(self) -> str | None:
        """Background palette, or None when no background is visible."""
        return self.background.palette if self.background else None


def _nearest_reference(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference index and squared distance to it, each [H, W]."""
    pixels = image.reshape(-1, 3).astype(np.float32)  # [P, 3]
    # Squared distances |p|^2 - 2 p.r + |r|^2, as one matmul.
    dist2 = (
        (pixels**2).sum(-1, keepdims=True)
        - 2 * pixels @ _REFERENCES.T
        + (_REFERENCES**2).sum(-1)
    )  # [P, refs]
    nearest = dist2.argmin(-1).astype(np.int32).reshape(image.shape[:2])
    return nearest, dist2.min(-1).reshape(image.shape[:2])


def classify_pixels(
    image: np.ndarray, max_distance: float = MAX_COLOUR_DISTANCE
) -> np.ndarray:
    """Index into the reference table per pixel, or -1 when none is close.

    Args:
      image: uint8 [H, W, 3].
      max_distance: RGB distance beyond which a pixel is unknown.

    Returns:
      int32 [H, W]: 0..5 object colours, 6..11 their shades, 12.. background
      colours (main, accent per palette), -1 unknown.
    """
    nearest, dist2 = _nearest_reference(image)
    return np.where(dist2 <= max_distance**2, nearest, _UNKNOWN)


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[0] != image.shape[1]
        or image.shape[2] != 3
    ):
        desc = (
            f"{image.dtype} {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"Expected a square uint8 [R, R, 3] image, got {desc}.")


def parse(image: np.ndarray) -> ParsedScene:
    """Parses a ShapesWorld image (rendered or generated).

    Args:
      image: uint8 [R, R, 3].

    Returns:
      The objects found, largest first, and the background style.
    """
    _check_image(image)
    resolution = image.shape[0]
    nearest, dist2 = _nearest_reference(image)
    labels = np.where(dist2 <= MAX_COLOUR_DISTANCE**2, nearest, _UNKNOWN)
    is_object = (labels >= 0) & (labels < _FIRST_BG)
    families = np.where(is_object, labels % _NUM_COLOURS, _UNKNOWN)
    is_shade = is_object & (labels >= _NUM_COLOURS)
    # Blurred edges are blends nearest to an object colour but farther than
    # MAX_COLOUR_DISTANCE; they belong to the silhouette, not the colour vote.
    silhouette = (nearest < _FIRST_BG) & (dist2 <= MAX_BLEND_DISTANCE**2)
    components, _ = ndimage.label(silhouette)
    min_area = _min_area(resolution)
    objects = []
    for index, bbox in enumerate(ndimage.find_objects(components), start=1):
        if bbox is None:
            continue
        component = components[bbox] == index
        for colour, mask in _split_by_colour(component, families[bbox], min_area):
            strict = mask & is_object[bbox]
            shade_share = (mask & is_shade[bbox]).sum() / max(1, strict.sum())
            objects.append(_describe(mask, shade_share, bbox, colour, resolution))
    objects.sort(key=lambda o: -o.area)
    return ParsedScene(objects=tuple(objects), background=_parse_background(labels))


def _min_area(resolution: int) -> float:
    """Components smaller than this are noise (a quarter of a small box)."""
    return max(4.0, 0.25 * sw.object_side(resolution, "small") ** 2)


def _split_by_colour(
    component: np.ndarray, families: np.ndarray, min_area: float
) -> list[tuple[int, np.ndarray]]:
    """(colour index, mask) objects in one connected component.

    Usually one colour dominates and the whole component is one object. When
    objects of different colours touch, each colour with a large enough share
    becomes its own object (its largest connected part).
    """
    counts = np.bincount(families[component & (families >= 0)], minlength=_NUM_COLOURS)
    area = int(counts.sum())
    if area < min_area:
        return []
    big = [
        c
        for c in np.argsort(-counts)
        if counts[c] >= max(min_area, _SPLIT_SHARE * area)
    ]
    if len(big) <= 1:
        return [(int(counts.argmax()), component)]
    parts = []
    for colour in big:
        pieces, n = ndimage.label(component & (families == colour))
        sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
        if sizes.max() >= min_area:
            parts.append((int(colour), pieces == sizes.argmax() + 1))
    return parts


def _describe(
    mask: np.ndarray,
    shade_share: float,
    bbox: tuple[slice, slice],
    colour: int,
    resolution: int,
) -> ParsedObject:
    """Shape, size, pattern and position of one object's mask."""
    rows, cols = np.nonzero(mask)
    top, left = rows.min(), cols.min()
    height, width = rows.max() - top + 1, cols.max() - left + 1
    crop = mask[top : top + height, left : left + width]
    shape, iou = _best_shape(crop)
    area = int(mask.sum())
    centroid = (bbox[0].start + rows.mean(), bbox[1].start + cols.mean())
    return ParsedObject(
        shape=shape,
        colour=_COLOUR_NAMES[colour],
        size=_size(max(height, width), resolution),
        position=position_of(centroid, resolution),
        pattern=_pattern(shade_share),
        area=area,
        centroid=(float(centroid[0]), float(centroid[1])),
        box=(
            int(bbox[0].start + top),
            int(bbox[1].start + left),
            int(height),
            int(width),
        ),
        shape_iou=iou,
    )


def _best_shape(crop: np.ndarray) -> tuple[str, float]:
    """Shape whose template overlaps the cropped mask best (by IoU).

    Templates are tried in the crop's own box and in square boxes up to one
    pixel larger at every placement covering the crop: objects are drawn in
    square boxes, and blur can erase thin parts such as a triangle's apex.
    """
    best, best_iou = sw.SHAPES[0], -1.0
    for canvas in _canvases(crop):
        for shape in sw.SHAPES:
            template = sw.shape_mask(shape, *canvas.shape)
            iou = (template & canvas).sum() / (template | canvas).sum()
            if iou > best_iou:
                best, best_iou = shape, float(iou)
    return best, best_iou


def _canvases(crop: np.ndarray) -> list[np.ndarray]:
    """The crop itself, and padded into square boxes at each placement."""
    height, width = crop.shape
    canvases = [crop]
    for side in (max(height, width), max(height, width) + 1):
        for top in range(side - height + 1):
            for left in range(side - width + 1):
                canvas = np.zeros((side, side), dtype=bool)
                canvas[top : top + height, left : left + width] = crop
                canvases.append(canvas)
    return canvases


def _size(side: int, resolution: int) -> str:
    small = sw.object_side(resolution, "small")
    large = sw.object_side(resolution, "large")
    return "large" if side >= (small + large) / 2 else "small"


def _pattern(shade_share: float) -> str:
    # Dotted fills are ~1/9 shade, striped ~1/2.
    if shade_share < 0.05:
        return "solid"
    return "dotted" if shade_share < 0.3 else "striped"


def position_of(centroid: tuple[float, float], resolution: int) -> str:
    """Grid position containing a (row, col) pixel centroid."""
    cell = resolution / 3
    row, col = (min(2, max(0, int((c + 0.5) // cell))) for c in centroid)
    return sw.POSITIONS[3 * row + col]


def _parse_background(labels: np.ndarray) -> sw.Background | None:
    """Majority palette; the pattern whose accent mask agrees best."""
    is_bg = labels >= _FIRST_BG
    if not is_bg.any():
        return None
    bg = labels[is_bg] - _FIRST_BG
    palette = _PALETTE_NAMES[int(np.bincount(bg // 2).argmax())]
    accent = bg % 2 == 1
    resolution = labels.shape[0]
    agreement = {
        pattern: float(
            (_background_template(pattern, resolution)[is_bg] == accent).mean()
        )
        for pattern in sw.BG_PATTERNS
    }
    return sw.Background(pattern=max(agreement, key=agreement.get), palette=palette)


@functools.lru_cache(maxsize=64)
def _background_template(pattern: str, resolution: int) -> np.ndarray:
    return sw.background_mask(pattern, resolution)


def match_objects(
    parsed: ParsedScene, scene: sw.Scene, resolution: int
) -> list[ParsedObject | None]:
    """Parsed object nearest to each scene object's box centre (or None).

    Greedy by distance; each parsed object is used at most once.
    """
    pairs = []
    for i, obj in enumerate(scene.objects):
        top, left, side = sw.object_box(resolution, obj)
        centre = np.array([top + (side - 1) / 2, left + (side - 1) / 2])
        for j, found in enumerate(parsed.objects):
            pairs.append(
                (float(np.linalg.norm(np.array(found.centroid) - centre)), i, j)
            )
    matches: list[ParsedObject | None] = [None] * len(scene.objects)
    used = set()
    for _, i, j in sorted(pairs):
        if matches[i] is None and j not in used:
            matches[i] = parsed.objects[j]
            used.add(j)
    return matches


def score_scene(image: np.ndarray, scene: sw.Scene) -> dict[str, float]:
    """Share of `scene`'s objects recovered with the right attributes.

    Returns:
      {"colour", "shape", "position", "size", "pattern"} each in [0, 1] (share of
      objects whose matched parsed object agrees), "parsed_ok" (1.0 when exactly
      as many objects were found), "bg_palette" and "bg_pattern" (0/1).
    """
    parsed = parse(image)
    matches = match_objects(parsed, scene, image.shape[0])
    keys = ("colour", "shape", "position", "size", "pattern")
    scores = {
        key: float(
            np.mean(
                [
                    m is not None and getattr(m, key) == getattr(o, key)
                    for o, m in zip(scene.objects, matches, strict=True)
                ]
            )
        )
        for key in keys
    }
    scores["parsed_ok"] = float(len(parsed.objects) == len(scene.objects))
    bg = parsed.background
    scores["bg_palette"] = float(
        bg is not None and bg.palette == scene.background.palette
    )
    scores["bg_pattern"] = float(
        bg is not None and bg.pattern == scene.background.pattern
    )
    return scores


def score_single(image: np.ndarray, scene: sw.Scene) -> dict[str, float]:
    """Scores a sample for a single-object prompt.

    Args:
      image: uint8 [R, R, 3] sample.
      scene: the prompt's scene; must hold exactly one object.

    Returns:
      {"colour", "shape", "position"}: 1.0 when the largest parsed object has the
      target's attribute, else 0.0; "parsed_ok": 1.0 when exactly one object
      was found.

    Raises:
      ValueError: if `scene` does not hold exactly one object.
    """
    if len(scene.objects) != 1:
        raise ValueError(
            f"score_single needs a one-object scene, got {len(scene.objects)} objects."
        )
    target = scene.objects[0]
    parsed = parse(image)
    found = parsed.largest
    scores = {
        key: float(found is not None and getattr(found, key) == getattr(target, key))
        for key in ("colour", "shape", "position")
    }
    scores["parsed_ok"] = float(len(parsed.objects) == 1)
    return scores


def score_batch(
    images: np.ndarray | Sequence[np.ndarray], scenes: Sequence[sw.Scene]
) -> Mapping[str, float]:
    """Mean `score_single` over a batch of single-object samples.

    Args:
      images: uint8 [N, R, R, 3] (or a sequence of [R, R, 3]).
      scenes: N one-object scenes, one per image.

    Returns:
      Mean of each `score_single` entry.
    """
    if len(images) != len(scenes):
        raise ValueError(f"Got {len(images)} images but {len(scenes)} scenes.")
    if not scenes:
        raise ValueError("score_batch needs at least one image.")
    rows = [
        score_single(np.asarray(im), sc) for im, sc in zip(images, scenes, strict=True)
    ]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
