"""Task metrics: ground truth scores perfectly, wrong answers score low."""

import dataclasses
import importlib.util
import math

import numpy as np
import pytest

from imagen_jax.data import controls, shapes_world, tasks
from imagen_jax.data.shapes_world import Background, Obj, Scene
from imagen_jax.data.tasks import Condition
from imagen_jax.evaluation import task_metrics as tm

R = 32
GENERATION = tuple(t for t in tasks.TASKS if t not in tasks.VISION_TASKS)
HAS_ORACLE = importlib.util.find_spec("imagen_jax.evaluation.oracle") is not None

SCENE = Scene(
    (
        Obj("circle", "red", "large", "top left", "striped", z=2),
        Obj("triangle", "blue", "small", "center", "solid", z=0),
        Obj("cross", "yellow", "large", "bottom right", "dotted", z=1),
    ),
    Background("checker", "mint"),
)


# --------------------------------------------------------------------------
# Segmentation.


def test_mask_iou():
    target = controls.segmentation_target(SCENE, 0, R)
    assert tm.mask_iou(target, target) == 1.0
    assert tm.mask_iou(np.zeros_like(target), target) == 0.0
    assert tm.mask_iou(np.zeros_like(target), np.zeros_like(target)) == 1.0
    other = controls.segmentation_target(SCENE, 1, R)
    assert tm.mask_iou(other, target) == 0.0
    half = target.copy()
    rows = np.nonzero(target[..., 0].any(1))[0]
    half[rows[: len(rows) // 2]] = 0
    assert 0.3 < tm.mask_iou(half, target) < 0.7
    # Thresholded at 127 on the channel mean: 128 counts, 127 does not.
    assert tm.mask_iou(np.where(target > 0, 128, 0), target) == 1.0
    assert tm.mask_iou(np.where(target > 0, 127, 0), target) == 0.0
    with pytest.raises(ValueError, match="mask shapes differ"):
        tm.mask_iou(target, target[:16])


# --------------------------------------------------------------------------
# Detection.


def test_decode_boxes_reads_drawn_boxes():
    image = shapes_world.render(SCENE, R)
    assert tm.decode_boxes(image) == []
    for i in range(3):
        box = controls.object_bbox(SCENE, i, R)
        assert tm.decode_boxes(controls.detection_target(SCENE, image, i, R)) == [box]
    both = controls.detection_target(SCENE, image, [0, 2], R)
    assert sorted(tm.decode_boxes(both)) == sorted(
        [controls.object_bbox(SCENE, 0, R), controls.object_bbox(SCENE, 2, R)]
    )
    noisy = image.copy()
    noisy[5, 5] = (0, 0, 255)  # A lone blue pixel is noise, not a box.
    assert tm.decode_boxes(noisy) == []
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        tm.decode_boxes(image[..., 0])


def test_box_ap50():
    gt = (2, 2, 10, 10)
    assert tm.box_iou(gt, gt) == 1.0
    assert tm.box_iou(gt, (20, 20, 25, 25)) == 0.0
    assert tm.box_ap50([gt], [gt]) == 1.0
    assert tm.box_ap50([(20, 20, 28, 28)], [gt]) == 0.0
    assert tm.box_ap50([], [gt]) == 0.0
    assert tm.box_ap50([gt], []) == 0.0
    assert tm.box_ap50([], []) == 1.0
    # Unscored boxes tie: AP = precision x recall = 0.5 x 1.
    assert tm.box_ap50([gt, (20, 20, 28, 28)], [gt]) == 0.5
    # A slightly shifted box still counts at IoU >= 0.5 (IoU 64/98).
    assert tm.box_ap50([(3, 3, 11, 11)], [gt]) == 1.0
    # A box matches one ground truth only.
    assert tm.box_ap50([gt, gt], [gt]) == 0.5


def test_box_ap50_set_with_scores():
    gts = [[(0, 0, 9, 9)], [(0, 0, 9, 9)]]
    preds = [[(0, 0, 9, 9), (20, 20, 29, 29)], [(0, 0, 9, 9)]]
    # Ranked: TP (0.9), FP (0.8), TP (0.7) -> 1.0 * 0.5 + 2/3 * 0.5.
    ap = tm.box_ap50_set(preds, gts, scores=[[0.9, 0.8], [0.7]])
    assert ap == pytest.approx(0.5 + 1 / 3)
    # The false positive ranked last no longer costs precision.
    assert tm.box_ap50_set(preds, gts, scores=[[0.9, 0.1], [0.7]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 images of predictions but 1"):
        tm.box_ap50_set(preds, gts[:1])


# --------------------------------------------------------------------------
# Depth and classification.


def test_depth_metrics():
    target = controls.depth_target(SCENE, R)
    assert tm.depth_rmse(target, target) == 0.0
    assert tm.depth_ordering_accuracy(target, SCENE) == 1.0
    brighter = np.clip(target.astype(int) + 10, 0, 255).astype(np.uint8)
    assert tm.depth_rmse(brighter, target) == pytest.approx(10.0)
    assert tm.depth_rmse(brighter, target, units="metres") == pytest.approx(
        10 * controls.DEPTH_FAR / 255
    )
    inverted = 255 - target
    assert tm.depth_ordering_accuracy(inverted, SCENE) == 0.0
    # Swap two objects' levels: 1 of the 6 region pairs becomes wrong.
    labels = controls.label_map(SCENE, R)
    swapped = target.copy()
    swapped[labels == 0], swapped[labels == 2] = (
        target[labels == 2][0],
        target[labels == 0][0],
    )
    assert tm.depth_ordering_accuracy(swapped, SCENE) == pytest.approx(5 / 6)
    # The wrong pair is an object pair; every object is still above the ground.
    pairs = tm.depth_pair_orderings(swapped, SCENE)
    assert sorted(ok for objects, ok in pairs if objects) == [False, True, True]
    assert [ok for objects, ok in pairs if not objects] == [True] * 3
    with pytest.raises(ValueError, match="units must be"):
        tm.depth_rmse(target, target, units="feet")


def test_classification_metrics():
    yes = controls.classification_target(True, R)
    no = controls.classification_target(False, R)
    assert tm.classification_answer(yes) and not tm.classification_answer(no)
    assert tm.classification_accuracy([yes, no], [True, False]) == 1.0
    assert tm.classification_accuracy([no, yes], [True, False]) == 0.0
    assert tm.classification_accuracy([yes, yes], [True, False]) == 0.5
    reddish = np.full((R, R, 3), (180, 60, 90), np.uint8)
    assert tm.classification_answer(reddish)
    with pytest.raises(ValueError, match="as many answers as labels"):
        tm.classification_accuracy([yes], [True, False])


@pytest.mark.parametrize("name", tasks.VISION_TASKS)
def test_vision_tasks_score_their_target_perfectly(name):
    for index in range(8):
        ex = tasks.make_example(name, index, 0, R)
        scores = tm.score_example(ex.target, ex)
        assert scores["score"] == 1.0, scores


def test_vision_tasks_score_wrong_answers_low():
    seg = tasks.make_example("segmentation", 0, 0, R)
    assert tm.score_example(np.zeros_like(seg.target), seg)["iou"] == 0.0
    det = tasks.make_example("detection", 0, 0, R)
    scene, query = det.meta["scene"], det.meta["query"]
    top, left, bottom, right = controls.object_bbox(scene, query, R)
    side = bottom - top
    far_top = 0 if top > R // 2 else R - 1 - side
    far_left = 0 if left > R // 2 else R - 1 - (right - left)
    wrong = controls.draw_box(
        det.instruction.input_image,
        (far_top, far_left, far_top + side, far_left + right - left),
    )
    assert tm.score_example(wrong, det)["ap50"] == 0.0
    assert tm.score_example(det.instruction.input_image, det)["ap50"] == 0.0
    cls = tasks.make_example("classification", 0, 0, R)
    other = controls.classification_target(not cls.meta["present"], R)
    side = "accuracy/present" if cls.meta["present"] else "accuracy/absent"
    scores = tm.score_example(other, cls)
    assert scores["accuracy"] == scores[side] == 0.0
    assert {"accuracy/present", "accuracy/absent"} - {side} - set(scores)
    depth = tasks.make_example("depth_estimation", 0, 0, R)
    scores = tm.score_example(255 - depth.target, depth)
    assert scores["ordering"] == 0.0 and scores["rmse"] > 50
    assert scores["ordering/background"] == 0.0
    assert tm.score_example(depth.target, depth)["ordering/background"] == 1.0


def test_depth_scores_split_object_pairs_from_background_pairs():
    """A map with every object at one grey gets the background pairs right and
    every object pair wrong (equal brightness is not nearer)."""
    with_pairs = 0
    for index in range(8):
        ex = tasks.make_example("depth_estimation", index, 0, R)
        labels = controls.label_map(ex.meta["scene"], R)
        flat = np.where(labels[..., None] >= 0, 200, 0).astype(np.uint8)
        flat = np.repeat(flat, 3, axis=-1)
        scores = tm.score_example(flat, ex)
        assert scores["ordering/background"] == 1.0
        if "ordering/objects" in scores:
            with_pairs += 1
            assert scores["ordering/objects"] == 0.0
            assert scores["ordering"] < 1.0
    assert with_pairs


# --------------------------------------------------------------------------
# Generation: conditions, PQ and O, with a parse read off the ground truth.


@pytest.fixture
def scene_parse(monkeypatch):
    """Replaces the oracle by a lookup: registered image -> its scene."""
    known = {}

    def parse(image):
        scene = known[np.asarray(image).tobytes()]
        # A perfect parser sees the fill as rendered (see visible_pattern).
        seen = [
            dataclasses.replace(
                o, pattern=tm.visible_pattern(o.shape, o.colour, o.size, o.pattern, R)
            )
            for o in scene.objects
        ]
        return seen, scene.background

    monkeypatch.setattr(tm, "_parse", parse)

    def register(scene):
        image = shapes_world.render(scene, R)
        known[image.tobytes()] = scene
        return image

    return register


def test_grade_condition_units():
    red = Obj("circle", "red", "large", "top left")
    objs = [red, Obj("square", "blue", "small", "center")]
    bg = Background("dots", "grey")
    text = Condition("objects", objects=(red,), exclusive=True)
    assert tm.grade_condition(text, objs[:1], bg) == 1.0
    assert tm.grade_condition(text, objs, bg) == 0.5  # One extra object.
    assert (
        tm.grade_condition(dataclasses.replace(text, exclusive=False), objs, bg) == 1.0
    )
    assert tm.grade_condition(text, [], bg) == 0.0
    wrong_colour = [dataclasses.replace(red, colour="green")]
    assert tm.grade_condition(text, wrong_colour, bg) == 0.5
    absent = Condition("objects", absent=("center",))
    assert tm.grade_condition(absent, objs, bg) == 0.0
    assert tm.grade_condition(absent, objs[:1], bg) == 1.0
    layout = Condition("layout", objects=(red,))
    assert tm.grade_condition(layout, wrong_colour, bg) == 1.0  # Colour-blind.
    assert (
        tm.grade_condition(layout, [dataclasses.replace(red, size="small")], bg) == 0.5
    )
    anywhere = dataclasses.replace(text, anywhere=True)  # A caption without places.
    moved = [dataclasses.replace(red, position="bottom")]
    assert tm.grade_condition(text, moved, bg) == 0.0
    assert tm.grade_condition(anywhere, moved, bg) == 1.0
    assert tm.grade_condition(anywhere, objs, bg) == 0.5  # One extra object.
    assert tm.grade_condition(anywhere, wrong_colour, bg) == 0.5
    assert tm.grade_condition(anywhere, [], bg) == 0.0
    assert "position" not in tm.condition_attributes(anywhere, moved, bg)
    subject = Condition("subject", identity=("circle", "red", "dotted"))
    assert tm.grade_condition(subject, objs, bg) == 0.5  # Pattern differs.
    assert (
        tm.grade_condition(subject, [dataclasses.replace(red, pattern="dotted")], bg)
        == 1.0
    )
    assert tm.grade_condition(subject, objs[1:], bg) == 0.0
    style = Condition("style", background=bg)
    assert tm.grade_condition(style, objs, bg) == 1.0
    assert tm.grade_condition(style, objs, Background("dots", "mint")) == 0.5
    assert tm.grade_condition(style, objs, Background("plain", "mint")) == 0.0


@pytest.mark.parametrize("name", GENERATION)
def test_generation_targets_score_one(name, scene_parse):
    for index in range(6):
        ex = tasks.make_example(name, index, 0, R)
        scene_parse(ex.meta["scene"])
        scores = tm.score_example(ex.target, ex)
        assert (scores["sc"], scores["pq"], scores["o"]) == (1.0, 1.0, 1.0), scores
        assert set(scores["per_condition"]) == set(ex.meta["conditions"])


def test_a_different_subject_scores_zero(scene_parse):
    ex = next(
        e
        for e in (tasks.make_example("subject", i, 0, R) for i in range(50))
        if len(e.meta["scene"].objects) == 1
    )
    (subject,) = ex.meta["scene"].objects
    # An identity sharing no attribute with the requested subject.
    shape, colour, pattern = next(
        ident
        for ident in shapes_world.NAMED_SUBJECTS.values()
        if all(
            a != b
            for a, b in zip(ident, (subject.shape, subject.colour, subject.pattern))
        )
    )
    impostor = dataclasses.replace(subject, shape=shape, colour=colour, pattern=pattern)
    image = scene_parse(Scene((impostor,), ex.meta["scene"].background))
    scores = tm.score_example(image, ex)
    assert scores["per_condition"]["subject"] == 0.0
    assert scores["sc"] == 0.0 and scores["o"] == 0.0
    assert scores["pq"] == 1.0  # A clean image of the wrong thing.


def test_wrong_style_and_missing_objects(scene_parse):
    ex = tasks.make_example("style_generation", 0, 0, R)
    scene = ex.meta["scene"]
    bg = scene.background
    other_pattern = next(p for p in shapes_world.BG_PATTERNS if p != bg.pattern)
    other_palette = next(p for p in shapes_world.BG_PALETTES if p != bg.palette)
    image = scene_parse(Scene(scene.objects, Background(other_pattern, other_palette)))
    scores = tm.score_example(image, ex)
    assert scores["per_condition"] == {"text": 1.0, "style": 0.0}
    assert scores["o"] == 0.0
    empty = scene_parse(Scene((), bg))
    assert tm.score_example(empty, ex)["per_condition"]["text"] == 0.0


def test_role_transfer_scores_the_roles_read_the_other_way_round(scene_parse):
    # `swapped` is 1 where the sample took the style scene's objects and the
    # content's background, and the SC goes under the content's marker.
    for index in range(8):
        ex = tasks.make_example("role_transfer", index, 0, R, world="simple")
        meta = ex.meta
        own = f"sc/content_{meta['content_ref'][1:-1].replace('#', '')}"
        other = ({"sc/content_ref1", "sc/content_ref2"} - {own}).pop()
        right = tm.score_example(scene_parse(meta["scene"]), ex)
        assert (right["sc"], right["swapped"], right[own]) == (1.0, 0.0, 1.0)
        assert other not in right
        swap = meta["swapped"]
        reversed_scene = Scene(swap["content"].objects, swap["style"].background)
        wrong = tm.score_example(scene_parse(reversed_scene), ex)
        assert (wrong["sc"], wrong["swapped"], wrong[own]) == (0.0, 1.0, 0.0)


def test_edit_left_undone_fails_the_edit_condition(scene_parse):
    ex = tasks.make_example("edit", 0, 0, R)
    image = scene_parse(ex.meta["input_scene"])  # The input, unedited.
    scores = tm.score_example(image, ex)
    assert scores["per_condition"]["preserve"] == 1.0
    assert scores["per_condition"]["edit"] < 1.0 and scores["sc"] < 1.0


def test_perceptual_quality_drops_with_noise(scene_parse):
    ex = tasks.make_example("text_to_image", 0, 0, R)
    objects, background = list(ex.meta["scene"].objects), ex.meta["scene"].background
    assert tm.perceptual_quality(ex.target, objects, background) == 1.0
    noise = np.random.default_rng(0).integers(0, 256, ex.target.shape, dtype=np.uint8)
    assert tm.perceptual_quality(noise, objects, background) == 0.0
    assert tm.perceptual_quality(ex.target, objects, None) == 0.0


def test_score_example_checks_the_shape():
    ex = tasks.make_example("segmentation", 0, 0, R)
    with pytest.raises(ValueError, match="target has"):
        tm.score_example(np.zeros((16, 16, 3), np.uint8), ex)


def test_object_pattern_reads_the_fill():
    for shape in shapes_world.SHAPES:
        for pattern in shapes_world.PATTERNS:
            obj = Obj(shape, "orange", "large", "top right", pattern)
            image = shapes_world.render(Scene((obj,), Background("dots", "beige")), R)
            top, left, side = shapes_world.object_box(R, obj)
            assert (
                tm.object_pattern(image, (top, left, side, side), "orange") == pattern
            )
    # A small dotted cross has every dot outside its arms: it looks solid.
    assert tm.visible_pattern("cross", "green", "small", "dotted", R) == "dotted"
    assert tm.visible_pattern("cross", "green", "large", "dotted", R) == "dotted"


needs_oracle = pytest.mark.skipif(
    not HAS_ORACLE, reason="evaluation/oracle.py not written yet"
)


@needs_oracle
@pytest.mark.parametrize("name", GENERATION)
def test_generation_targets_score_one_with_the_real_oracle(name):
    for index in range(8):
        ex = tasks.make_example(name, index, 0, R)
        scores = tm.score_example(ex.target, ex)
        assert math.isclose(scores["o"], 1.0), scores


@needs_oracle
def test_real_oracle_scores_wrong_images_low():
    ex = tasks.make_example("multi_subject", 0, 0, R)
    a, b = ex.meta["scene"].objects
    # Swap the two subjects' places: both are present, neither where asked.
    swapped = Scene(
        (
            dataclasses.replace(a, position=b.position),
            dataclasses.replace(b, position=a.position),
        ),
        ex.meta["scene"].background,
    )
    scores = tm.score_example(shapes_world.render(swapped, R), ex)
    assert scores["per_condition"]["subject1"] == 1.0
    assert scores["per_condition"]["text"] == 0.0 and scores["o"] == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (R, R, 3), dtype=np.uint8)
    assert tm.score_example(noise, ex)["pq"] == 0.0


def test_condition_attributes_say_what_failed(scene_parse):
    ex = next(
        e
        for e in (
            tasks.make_example("subject", i, 0, R, world="simple") for i in range(40)
        )
        if e.meta["conditions"]["subject"].identity[2] == "solid"
    )
    (subject,) = ex.meta["scene"].objects
    right = tm.score_example(scene_parse(ex.meta["scene"]), ex)["attributes"]
    assert right["subject/identity"] == 1.0
    assert right["text/position"] == 1.0
    # Right identity, wrong colour: identity and colour fail, shape and fill hold.
    colour = next(c for c in shapes_world.COLOURS if c != subject.colour)
    recoloured = dataclasses.replace(subject, colour=colour)
    image = scene_parse(Scene((recoloured,), ex.meta["scene"].background))
    got = tm.score_example(image, ex)["attributes"]
    assert got["subject/identity"] == 0.0 and got["subject/colour"] == 0.0
    assert got["subject/shape"] == 1.0 and got["subject/pattern"] == 1.0
    # The fill's score is also kept under the fill wanted, and only that one.
    assert got["subject/pattern_solid"] == 1.0
    assert "subject/pattern_dotted" not in got
    # Drawn striped: the fill fails, under its wanted fill too.
    striped = dataclasses.replace(subject, pattern="striped")
    image = scene_parse(Scene((striped,), ex.meta["scene"].background))
    got = tm.score_example(image, ex)["attributes"]
    assert got["subject/pattern"] == 0.0 and got["subject/pattern_solid"] == 0.0
    # Moved: the position fails, the identity holds.
    spot = next(p for p in shapes_world.POSITIONS if p != subject.position)
    moved = dataclasses.replace(subject, position=spot)
    image = scene_parse(Scene((moved,), ex.meta["scene"].background))
    got = tm.score_example(image, ex)["attributes"]
    assert got["subject/identity"] == 1.0 and got["text/position"] == 0.0


def test_style_attributes():
    bg = Background("dots", "mint")
    style = Condition("style", background=bg)
    assert tm.condition_attributes(style, [], Background("dots", "grey")) == {
        "pattern": 1.0,
        "palette": 0.0,
    }
    assert tm.condition_attributes(style, [], None) == {"pattern": 0.0, "palette": 0.0}


def test_segmentation_of_two_objects_says_which_one_was_drawn():
    from imagen_jax.data import controls, tasks

    seg = tasks.make_example("segmentation", 2, 1, 32, world="simple", query_objects=2)
    scene, query = seg.meta["scene"], seg.meta["query"]
    other = controls.segmentation_target(scene, 1 - query, 32)
    right = tm.score_example(seg.target, seg)
    wrong = tm.score_example(other, seg)
    assert (right["iou"], right["named"]) == (1.0, 1.0)
    assert wrong["named"] == 0.0 and wrong["iou"] < 1.0
    one = tasks.make_example("segmentation", 2, 1, 32, world="simple")
    assert "named" not in tm.score_example(one.target, one)  # nothing to pick
