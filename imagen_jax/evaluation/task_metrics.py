"""Metrics of the ShapesWorld tasks (numpy).

Vision tasks (InstructCV) decode the answer image and score it:
- segmentation: `mask_iou` after thresholding at 127;
- detection: `decode_boxes` (pure-blue outline pixels -> 8-connected
  components -> boxes) and `box_ap50` / `box_ap50_set` (AP at IoU 0.5);
- depth: `depth_rmse` (grey levels or metres) and `depth_ordering_accuracy`;
- classification: `classification_answer` and `classification_accuracy`.

Generation tasks (Instruct-Imagen's evaluation, DESIGN §1b) parse the image
with the oracle and grade every condition of the example in {0, 0.5, 1}: the
semantic consistency SC is the least satisfied condition, the perceptual
quality PQ grades how cleanly the image parses (the parse re-rendered against
the image), and O = sqrt(SC * PQ). The oracle reads shape, colour, position,
size and background; object fill patterns (for subject identity) are read
here from the pixels inside each parsed object's box. `score_example`
dispatches on the task. Scoring is exact on renderings at 32 px and above (at
16 px small shapes are too coarse for the oracle to tell apart).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from imagen_jax.data import controls, shapes_world
from imagen_jax.data.controls import Box
from imagen_jax.data.shapes_world import Background
from imagen_jax.data.tasks import Condition, TaskExample

# --------------------------------------------------------------------------
# Segmentation.


def _binary(image: np.ndarray, threshold: int) -> np.ndarray:
    """bool [H, W]: channel mean above `threshold`."""
    array = np.asarray(image, np.float64)
    if array.ndim == 3:
        array = array.mean(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"expected an [H, W] or [H, W, C] image, got {image.shape}")
    return array > threshold


def mask_iou(pred: np.ndarray, target: np.ndarray, threshold: int = 127) -> float:
    """IoU of the white regions of two mask images (both empty -> 1.0)."""
    p, t = _binary(pred, threshold), _binary(target, threshold)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


# --------------------------------------------------------------------------
# Detection.


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a bool [H, W] mask, as [N, 2] (y, x) arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    components = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        stack, pixels = [start], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny in range(max(y - 1, 0), min(y + 2, height)):
                for nx in range(max(x - 1, 0), min(x + 2, width)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        components.append(np.array(pixels))
    return components


def decode_boxes(
    image: np.ndarray, blue_tol: int = 50, min_pixels: int = 3
) -> list[Box]:
    """Boxes drawn as pure-blue outlines in `image`.

    Args:
      image: uint8 [H, W, 3].
      blue_tol: a pixel is box-blue when red and green are <= blue_tol and
        blue >= 255 - blue_tol. No ShapesWorld object or background colour
        comes within 50 of pure blue.
      min_pixels: smaller components are noise, not boxes.

    Returns:
      (top, left, bottom, right) inclusive box of each 8-connected component
      of box-blue pixels, in reading order of their first pixel.
    """
    rgb = np.asarray(image).astype(np.int32)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got {rgb.shape}")
    blue = (
        (rgb[..., 0] <= blue_tol)
        & (rgb[..., 1] <= blue_tol)
        & (rgb[..., 2] >= 255 - blue_tol)
    )
    boxes = []
    for pixels in _components(blue):
        if len(pixels) >= min_pixels:
            (top, left), (bottom, right) = pixels.min(0), pixels.max(0)
            boxes.append((int(top), int(left), int(bottom), int(right)))
    return boxes


def box_iou(a: Box, b: Box) -> float:
    """IoU of two inclusive pixel boxes (top, left, bottom, right)."""

    def area(box):
        return max(0, box[2] - box[0] + 1) * max(0, box[3] - box[1] + 1)

    inter = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / (area(a) + area(b) - inter)


def _match(preds, scores, gts) -> list[tuple[float, bool]]:
    """(score, is true positive) per prediction; greedy in descending score."""
    out = []
    for image_preds, image_scores, image_gts in zip(preds, scores, gts, strict=True):
        free = list(image_gts)
        order = np.argsort(-np.asarray(image_scores, np.float64), kind="stable")
        for i in order:
            ious = [box_iou(image_preds[i], g) for g in free]
            best = int(np.argmax(ious)) if ious else -1
            hit = best >= 0 and ious[best] >= 0.5
            if hit:
                free.pop(best)
            out.append((float(image_scores[i]), hit))
    return out


def box_ap50_set(
    pred_boxes: Sequence[Sequence[Box]],
    gt_boxes: Sequence[Sequence[Box]],
    scores: Sequence[Sequence[float]] | None = None,
) -> float:
    """Average precision at IoU >= 0.5 over a set of images.

    Predictions are matched greedily per image, highest score first, each
    ground-truth box at most once. AP is the area under the all-point
    interpolated precision-recall curve, with one operating point per distinct
    score. Boxes decoded from images carry no score: all tie, and AP is then
    precision x recall.

    Args:
      pred_boxes: per image, the predicted boxes.
      gt_boxes: per image, the ground-truth boxes.
      scores: per image, one confidence per predicted box; default all 1.

    Returns:
      AP in [0, 1]; 1.0 when there is nothing to find and nothing is found.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(
            f"{len(pred_boxes)} images of predictions but {len(gt_boxes)} of "
            "ground truth"
        )
    if scores is None:
        scores = [[1.0] * len(p) for p in pred_boxes]
    num_gt = sum(len(g) for g in gt_boxes)
    matches = sorted(_match(pred_boxes, scores, gt_boxes), key=lambda m: -m[0])
    if num_gt == 0 or not matches:
        return float(num_gt == 0 and not matches)
    score = np.array([m[0] for m in matches])
    tp = np.cumsum([m[1] for m in matches])
    last_of_tie = np.append(score[1:] != score[:-1], True)
    recall = tp[last_of_tie] / num_gt
    precision = tp[last_of_tie] / (np.nonzero(last_of_tie)[0] + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * envelope))


def box_ap50(pred_boxes: Sequence[Box], gt_boxes: Sequence[Box]) -> float:
    """AP at IoU >= 0.5 for one image (unscored boxes: precision x recall)."""
    return box_ap50_set([pred_boxes], [gt_boxes])


# --------------------------------------------------------------------------
# Depth.


def _grey(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, np.float64)
    return array.mean(axis=-1) if array.ndim == 3 else array


def depth_rmse(pred: np.ndarray, target: np.ndarray, units: str = "grey") -> float:
    """Root-mean-square depth error, in grey levels or in metres.

    Metres use the scale of `controls` (grey 255 -> 0 m, grey 0 -> the far
    plane at DEPTH_FAR metres).
    """
    p, t = _grey(pred), _grey(target)
    if p.shape != t.shape:
        raise ValueError(f"depth shapes differ: {p.shape} vs {t.shape}")
    if units == "metres":
        p, t = controls.grey_to_depth(p), controls.grey_to_depth(t)
    elif units != "grey":
        raise ValueError(f"units must be 'grey' or 'metres', got {units!r}")
    return float(np.sqrt(np.mean((p - t) ** 2)))


def depth_pair_orderings(
    pred: np.ndarray, scene: shapes_world.Scene
) -> list[tuple[bool, bool]]:
    """(is an object pair, nearer region is brighter in `pred`) per region pair.

    Regions are the visible objects of `scene` and the background (the far
    plane); each region's brightness is its mean grey level in `pred`. Pairs
    at equal depth are skipped. An object pair's order shows in the input only
    through the ground-plane cue (lower, larger, lefter is nearer) or
    occlusion; an object is always nearer than the background.
    """
    grey = _grey(pred)
    labels = controls.label_map(scene, grey.shape[0])
    depths = np.append(controls.object_depths(scene), controls.DEPTH_FAR)
    regions = [i for i in range(len(scene.objects)) if (labels == i).any()] + [-1]
    brightness = {i: grey[labels == i].mean() for i in regions}
    pairs = []
    for a_pos, a in enumerate(regions):
        for b in regions[a_pos + 1 :]:
            if depths[a] == depths[b]:
                continue
            near, far = (a, b) if depths[a] < depths[b] else (b, a)
            pairs.append((far != -1, bool(brightness[near] > brightness[far])))
    return pairs


def depth_ordering_accuracy(pred: np.ndarray, scene: shapes_world.Scene) -> float:
    """Share of region pairs whose nearer region is brighter in `pred`
    (`depth_pair_orderings`). NaN when there is no pair."""
    return _share([ok for _, ok in depth_pair_orderings(pred, scene)])


def _share(oks: list[bool]) -> float:
    """Share of True in `oks`; NaN when empty."""
    return float(np.mean(oks)) if oks else math.nan


# --------------------------------------------------------------------------
# Classification.


def classification_answer(
    image: np.ndarray,
    c1: tuple[int, int, int] = controls.PRESENT_COLOUR,
    c2: tuple[int, int, int] = controls.ABSENT_COLOUR,
) -> bool:
    """True (the class is present) when the mean colour is nearer `c1` than `c2`."""
    mean = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)
    return bool(np.linalg.norm(mean - c1) < np.linalg.norm(mean - c2))


def classification_accuracy(
    images: Sequence[np.ndarray],
    present: Sequence[bool],
    c1: tuple[int, int, int] = controls.PRESENT_COLOUR,
    c2: tuple[int, int, int] = controls.ABSENT_COLOUR,
) -> float:
    """Share of images whose answer matches `present`."""
    if len(images) != len(present) or not images:
        raise ValueError(
            f"need as many answers as labels (and at least one), got "
            f"{len(images)} images and {len(present)} labels"
        )
    answers = [classification_answer(im, c1, c2) for im in images]
    return float(np.mean([a == bool(p) for a, p in zip(answers, present, strict=True)]))


# --------------------------------------------------------------------------
# Generation tasks: conditions graded on the oracle's parse.

# A re-rendered parse "agrees" with the image at a pixel when no channel
# differs by more than this.
PQ_PIXEL_TOL = 48
# Share of agreeing pixels for PQ 1 and for PQ 0.5.
PQ_CLEAN, PQ_ROUGH = 0.95, 0.8


def _grade(scores: Sequence[float]) -> float:
    """1 if every item is fully right, 0.5 if at least half right on average."""
    if all(s == 1.0 for s in scores):
        return 1.0
    return 0.5 if float(np.mean(scores)) >= 0.5 else 0.0


def _attribute_score(found: Any, wanted: shapes_world.Obj, attrs: Sequence[str]):
    """1 / 0.5 / 0 for all / some / none of two attributes matching."""
    if found is None:
        return 0.0
    hits = sum(getattr(found, a) == getattr(wanted, a) for a in attrs)
    return hits / len(attrs)


def _grade_placement(condition: Condition, objects: Sequence[Any]) -> float:
    """Objects at their positions (shape+colour, or shape+size for layouts)."""
    at = {}
    for o in objects:  # Largest first: a position keeps its largest object.
        at.setdefault(o.position, o)
    attrs = ("shape", "size") if condition.kind == "layout" else ("shape", "colour")
    if condition.anywhere:  # each object's best match, wherever it is
        scores = [
            max((_attribute_score(f, o, attrs) for f in at.values()), default=0.0)
            for o in condition.objects
        ]
        if condition.exclusive:
            scores += [0.0] * max(0, len(at) - len(condition.objects))
        return _grade(scores)
    scores = [_attribute_score(at.get(o.position), o, attrs) for o in condition.objects]
    scores += [0.0 if p in at else 1.0 for p in condition.absent]
    if condition.exclusive or condition.kind == "layout":
        allowed = {o.position for o in condition.objects}
        allowed |= set(condition.absent) | set(condition.free)
        scores += [0.0 for p in at if p not in allowed]
    return _grade(scores)


def grade_condition(
    condition: Condition,
    objects: Sequence[Any],
    background,
    resolution: int | None = None,
) -> float:
    """One condition in {0, 0.5, 1} given parsed objects and background.

    - objects: per listed object, the object parsed at its position matches
      shape and colour (1), one of them (0.5) or nothing is there (0);
      `absent` positions must be empty; with `exclusive`, an object anywhere
      else counts 0. The condition is 1 if everything is right, 0.5 if the
      mean is >= 0.5, else 0. With `anywhere`, each listed object is scored
      on its best parsed match wherever it is, and with `exclusive` each
      object beyond the listed count scores 0.
    - layout (control maps): the same with shape and size, always exclusive.
    - subject: the best parsed object matches all of (shape, colour, pattern)
      (1), two of them (0.5), else 0. Given `resolution`, the pattern wanted
      is the one the subject shows when rendered at the parsed size.
    - style: background pattern and palette both (1), one (0.5), none (0).
    """
    if condition.kind in ("objects", "layout"):
        return _grade_placement(condition, objects)
    if condition.kind == "subject":
        return _grade_subject(condition.identity, objects, resolution)
    if condition.kind == "style":
        if background is None:
            return 0.0
        wanted = condition.background
        return 0.5 * (background.pattern == wanted.pattern) + 0.5 * (
            background.palette == wanted.palette
        )
    raise ValueError(f"unknown condition kind {condition.kind!r}")


def condition_attributes(
    condition: Condition,
    objects: Sequence[Any],
    background,
    resolution: int | None = None,
) -> dict[str, float]:
    """What part of a condition holds, so a low SC says what failed.

    Each value is 1 or 0 (averaged over the condition's objects):
    - objects: `colour`, `shape` (some parsed object has the wanted colour /
      shape, wherever it is) and, but with `anywhere`, `position` (some
      object is at the wanted position); `absent` positions empty count as
      `removed`;
    - layout (control maps): `shape`, `size`, `position` as above;
    - subject: `identity` (shape, colour and fill all right) and each of them,
      the fill also as `pattern_<wanted fill>`;
    - style: `pattern`, `palette` of the background.
    """
    if condition.kind in ("objects", "layout"):
        attrs = ("shape", "size") if condition.kind == "layout" else ("colour", "shape")
        out = (
            {
                a: float(
                    np.mean(
                        [
                            any(getattr(f, a) == getattr(o, a) for f in objects)
                            for o in condition.objects
                        ]
                    )
                )
                for a in attrs
            }
            if condition.objects
            else {}
        )
        if condition.objects and not condition.anywhere:
            out["position"] = float(
                np.mean(
                    [
                        any(f.position == o.position for f in objects)
                        for o in condition.objects
                    ]
                )
            )
        if condition.absent:
            seen = {f.position for f in objects}
            out["removed"] = float(np.mean([p not in seen for p in condition.absent]))
        return out
    if condition.kind == "subject":
        shape, colour, pattern = condition.identity
        best = {"identity": 0.0, "shape": 0.0, "colour": 0.0, "pattern": 0.0}
        for o in objects:
            if resolution is not None:
                pattern = visible_pattern(
                    shape, colour, o.size, condition.identity[2], resolution
                )
            hits = {
                "shape": o.shape == shape,
                "colour": o.colour == colour,
                "pattern": o.pattern == pattern,
            }
            hits["identity"] = all(hits.values())
            if (hits["identity"], sum(hits.values())) > (
                best["identity"],
                sum(best.values()),
            ):
                best = {k: float(v) for k, v in hits.items()}
        # The fill's score under the fill wanted, so that a low fill score
        # says which one fails (e.g. dotted subjects drawn solid).
        best[f"pattern_{condition.identity[2]}"] = best["pattern"]
        return best
    if condition.kind == "style":
        if background is None:
            return {"pattern": 0.0, "palette": 0.0}
        return {
            "pattern": float(background.pattern == condition.background.pattern),
            "palette": float(background.palette == condition.background.palette),
        }
    raise ValueError(f"unknown condition kind {condition.kind!r}")


def _grade_subject(
    identity: tuple[str, str, str], objects: Sequence[Any], resolution: int | None
) -> float:
    shape, colour, pattern = identity
    best = 0
    for o in objects:
        if resolution is not None:
            pattern = visible_pattern(shape, colour, o.size, identity[2], resolution)
        hits = (o.shape == shape) + (o.colour == colour) + (o.pattern == pattern)
        best = max(best, hits)
    return {3: 1.0, 2: 0.5}.get(best, 0.0)


# Share of an object's pixels in its darker shade: below SOLID_MAX the fill is
# solid, below DOTTED_MAX dotted (1 pixel in 9 of the box), else striped (1/2).
SOLID_MAX, DOTTED_MAX = 0.04, 0.3


def object_pattern(image: np.ndarray, box: tuple[int, int, int, int], colour: str):
    """Fill pattern of a `colour` object inside `box` = (top, left, height, width).

    Pixels nearer the colour or its shade than to any background colour are
    the object's; the share nearer the shade tells the pattern.
    """
    top, left, height, width = box
    crop = np.asarray(image, np.float64)[top : top + height, left : left + width]
    refs = {"main": shapes_world.COLOURS[colour], "shade": shapes_world.SHADES[colour]}
    dist = {k: np.linalg.norm(crop - np.array(v), axis=-1) for k, v in refs.items()}
    bg = [c for pair in shapes_world.BG_PALETTES.values() for c in pair]
    to_bg = np.min([np.linalg.norm(crop - np.array(c), axis=-1) for c in bg], axis=0)
    mine = np.minimum(dist["main"], dist["shade"]) < to_bg
    if not mine.any():
        return "solid"
    shade_share = float(np.mean(dist["shade"][mine] < dist["main"][mine]))
    if shade_share < SOLID_MAX:
        return "solid"
    return "dotted" if shade_share < DOTTED_MAX else "striped"


@functools.lru_cache(maxsize=1024)
def visible_pattern(
    shape: str, colour: str, size: str, pattern: str, resolution: int
) -> str:
    """The fill an object shows once rendered, as `object_pattern` reads it.

    Usually `pattern`; but e.g. a small dotted cross at 32 px has every dot
    outside its arms and looks solid.
    """
    obj = shapes_world.Obj(shape, colour, size, "center", pattern)
    image = shapes_world.render(shapes_world.Scene((obj,)), resolution)
    top, left, side = shapes_world.object_box(resolution, obj)
    return object_pattern(image, (top, left, side, side), colour)


@dataclasses.dataclass(frozen=True)
class SeenObject:
    """An object as read from an image."""

    shape: str
    colour: str
    position: str
    size: str
    pattern: str


def _parse(image: np.ndarray) -> tuple[list[SeenObject], Background | None]:
    """(objects, background) read from `image`: the oracle, plus fill patterns.

    Objects come largest first; the background is None when the oracle cannot
    tell its palette or pattern.
    """
    from imagen_jax.evaluation import oracle  # Imported late: it needs scipy.

    parsed = oracle.parse(image)
    objects = [
        SeenObject(
            o.shape,
            o.colour,
            o.position,
            o.size,
            object_pattern(image, o.box, o.colour),
        )
        for o in parsed.objects
    ]
    known = (
        parsed.pattern in shapes_world.BG_PATTERNS
        and parsed.palette in shapes_world.BG_PALETTES
    )
    return objects, Background(parsed.pattern, parsed.palette) if known else None


def perceptual_quality(image: np.ndarray, objects: Sequence[Any], background) -> float:
    """How cleanly `image` parses: re-render the parse and compare, in {0, .5, 1}.

    1 if at least PQ_CLEAN of the pixels agree within PQ_PIXEL_TOL, 0.5 if at
    least PQ_ROUGH do, else 0 (also when the parse cannot be rendered).
    """
    image = np.asarray(image)
    try:
        scene = shapes_world.Scene(
            tuple(
                shapes_world.Obj(
                    o.shape,
                    o.colour,
                    o.size,
                    o.position,
                    getattr(o, "pattern", "solid"),
                    z,
                )
                for z, o in enumerate(objects)
            ),
            shapes_world.Background(background.pattern, background.palette),
        )
        rendered = shapes_world.render(scene, image.shape[0])
    except (ValueError, AttributeError):
        return 0.0
    diff = np.abs(rendered.astype(np.int32) - image.astype(np.int32)).max(axis=-1)
    agree = float(np.mean(diff <= PQ_PIXEL_TOL))
    return 1.0 if agree >= PQ_CLEAN else 0.5 if agree >= PQ_ROUGH else 0.0


def score_generation(image: np.ndarray, example: TaskExample) -> dict[str, Any]:
    """SC (least satisfied condition), PQ, O = sqrt(SC * PQ), each condition's
    grade (`per_condition`) and what of it holds (`attributes`, keyed
    "condition/attribute", see `condition_attributes`). An example whose meta
    has `swapped` conditions (role_transfer, reference_objects/_style) also
    gets `swapped`, the SC of the target with the roles the other way round,
    and role_transfer its SC under the key of the marker that held the
    content (`sc/content_ref1`, `sc/content_ref2`)."""
    objects, background = _parse(image)
    r = image.shape[0]
    conditions = example.meta["conditions"]
    per_condition = {
        name: grade_condition(condition, objects, background, r)
        for name, condition in conditions.items()
    }
    attributes = {
        f"{name}/{attr}": value
        for name, condition in conditions.items()
        for attr, value in condition_attributes(
            condition, objects, background, r
        ).items()
    }
    sc = min(per_condition.values())
    pq = perceptual_quality(image, objects, background)
    score = {
        "sc": sc,
        "pq": pq,
        "o": math.sqrt(sc * pq),
        "per_condition": per_condition,
        "attributes": attributes,
    }
    if "swapped" in example.meta:  # the roles or parts read the other way
        swapped = example.meta["swapped"].values()
        score["swapped"] = min(
            grade_condition(c, objects, background, r) for c in swapped
        )
    if "content_ref" in example.meta:
        # SC by the marker that held the content (averaged over those examples).
        score[f"sc/content_{example.meta['content_ref'][1:-1].replace('#', '')}"] = sc
    return score


# --------------------------------------------------------------------------
# Dispatch.


def _score_segmentation(image, example: TaskExample) -> dict[str, float]:
    """IoU with the named object's mask; with several objects in the scene,
    also `named`: 1 if the output overlaps the named object's mask more than
    any other object's (chance 1 / objects), so a low IoU says whether the
    wrong object was picked or the right one drawn loosely."""
    iou = mask_iou(image, example.target)
    scores = {"score": iou, "iou": iou}
    scene, query = example.meta["scene"], example.meta["query"]
    if len(scene.objects) > 1:
        resolution = example.target.shape[0]
        overlap = [
            mask_iou(image, controls.segmentation_target(scene, i, resolution))
            for i in range(len(scene.objects))
        ]
        others = max(v for i, v in enumerate(overlap) if i != query)
        scores["named"] = float(overlap[query] > others)
    return scores


def _score_detection(image, example: TaskExample) -> dict[str, float]:
    scene, resolution = example.meta["scene"], example.target.shape[0]
    box = controls.object_bbox(scene, example.meta["query"], resolution)
    ap = box_ap50(decode_boxes(image), [] if box is None else [box])
    return {"score": ap, "ap50": ap}


def _score_depth(image, example: TaskExample) -> dict[str, float]:
    pairs = depth_pair_orderings(image, example.meta["scene"])
    ordering = _share([ok for _, ok in pairs])
    scores = {
        "score": ordering,
        "ordering": ordering,
        "rmse": depth_rmse(image, example.target),
        "rmse_metres": depth_rmse(image, example.target, units="metres"),
    }
    # Which pairs fail: object against object, or object against background.
    for kind, objects in (("objects", True), ("background", False)):
        oks = [ok for is_objects, ok in pairs if is_objects == objects]
        if oks:
            scores[f"ordering/{kind}"] = _share(oks)
    return scores


def _score_classification(image, example: TaskExample) -> dict[str, float]:
    present = example.meta["present"]
    colours = example.meta.get(
        "answer_colours", (controls.PRESENT_COLOUR, controls.ABSENT_COLOUR)
    )
    accuracy = float(classification_answer(image, *colours) == present)
    # Split by the true answer: a model that always answers one colour scores
    # 1 on one side and 0 on the other.
    side = "present" if present else "absent"
    return {"score": accuracy, "accuracy": accuracy, f"accuracy/{side}": accuracy}


_VISION_SCORERS = {
    "segmentation": _score_segmentation,
    "detection": _score_detection,
    "depth_estimation": _score_depth,
    "classification": _score_classification,
}


def score_example(image: np.ndarray, example: TaskExample) -> dict[str, Any]:
    """Scores a model's output image for one task example.

    Returns:
      For generation tasks (text, control, subject, style, edit and the
      zero-shot combinations): {"sc", "pq", "o", "per_condition"}. For vision
      tasks: {"score": the headline metric, plus the task's own metrics}
      (segmentation: iou; detection: ap50; depth_estimation: ordering, rmse,
      rmse_metres, and ordering/objects and ordering/background over those
      pairs where the scene has them; classification: accuracy, and
      accuracy/present or accuracy/absent by the true answer).
    """
    image = np.asarray(image)
    if image.shape != example.target.shape:
        raise ValueError(
            f"image has shape {image.shape}; the example's target has "
            f"{example.target.shape}"
        )
    scorer = _VISION_SCORERS.get(example.task)
    return scorer(image, example) if scorer else score_generation(image, example)
