"""The task catalogue: templates, determinism, valid instructions, mixture."""

import re

import numpy as np
import pytest

from imagen_jax import instructions
from imagen_jax.data import controls, shapes_world, tasks

R = 32
ALL = tuple(tasks.TASKS)
GENERATION = tuple(t for t in ALL if t not in tasks.VISION_TASKS)
FIELDS = {
    "caption",
    "content",
    "control",
    "scene",
    "extra",
    "object",
    "a_object",
    "colour",
    "position",
    "where1",
    "where2",
    "content_ref",
    "style_ref",
}


def test_catalogue_names():
    assert set(ALL) == {
        "text_to_image",
        "edge_to_image",
        "mask_to_image",
        "depth_to_image",
        "sketch_to_image",
        "subject",
        "style_generation",
        "style_transfer",
        "role_transfer",
        "role_transfer_told",
        "reference_objects",
        "reference_style",
        "edit",
        "segmentation",
        "detection",
        "depth_estimation",
        "classification",
        "subject+style",
        "control+subject",
        "control+style",
        "multi_subject",
        "subject+reference_style",
    }
    assert set(tasks.ZERO_SHOT_TASKS) == {
        "subject+style",
        "control+subject",
        "control+style",
        "multi_subject",
    }
    assert not set(tasks.TRAIN_TASKS) & set(tasks.ZERO_SHOT_TASKS)
    assert set(tasks.TRAIN_TASKS) | set(tasks.ZERO_SHOT_TASKS) == set(ALL) - {
        "role_transfer",  # opt-in: trained and scored only when named
        "role_transfer_told",
        "reference_objects",
        "reference_style",
        "subject+reference_style",  # opt-in zero-shot: scored when composed
    }


@pytest.mark.parametrize("name", ALL)
def test_templates(name):
    task = tasks.TASKS[name]
    seen, unseen = task.templates, task.unseen_templates
    assert len(set(seen)) == len(seen) >= 20
    assert len(set(unseen)) == len(unseen) >= 5
    assert not set(seen) & set(unseen)
    for template in seen + unseen:
        assert tasks.template_fields(template) <= FIELDS, template
        instructions.parse_markers(template)  # Well-formed markers only.
    # Every variant (field set) can be phrased both ways.
    variants = {tasks.template_fields(t) for t in seen}
    assert variants == {tasks.template_fields(t) for t in unseen}
    markers = {tuple(instructions.parse_markers(t)) for t in seen + unseen}
    assert {frozenset(m) for m in markers} == {frozenset(next(iter(markers)))}


def _same(a, b):
    assert a.instruction.text == b.instruction.text
    np.testing.assert_array_equal(a.target, b.target)
    assert len(a.instruction.context) == len(b.instruction.context)
    for x, y in zip(a.instruction.context, b.instruction.context, strict=True):
        assert (x.marker, x.text) == (y.marker, y.text)
        np.testing.assert_array_equal(x.image, y.image)
    assert (a.instruction.input_image is None) == (b.instruction.input_image is None)
    if a.instruction.input_image is not None:
        np.testing.assert_array_equal(
            a.instruction.input_image, b.instruction.input_image
        )


@pytest.mark.parametrize("name", ALL)
def test_examples_are_deterministic_and_valid(name):
    targets = set()
    for index in range(6):
        for unseen in (False, True):
            ex = tasks.make_example(name, index, seed=3, resolution=R, unseen=unseen)
            _same(
                ex, tasks.make_example(name, index, seed=3, resolution=R, unseen=unseen)
            )
            assert ex.task == name and ex.zero_shot == tasks.TASKS[name].zero_shot
            assert ex.target.shape == (R, R, 3) and ex.target.dtype == np.uint8
            instructions.validate(
                ex.instruction, max_context=tasks.MAX_CONTEXT, resolution=R
            )
            pool = (
                tasks.TASKS[name].unseen_templates
                if unseen
                else tasks.TASKS[name].templates
            )
            assert ex.meta["template"] in pool
            inputs = ex.instruction.input_image
            key = (ex.instruction.text, ex.target.tobytes())
            targets.add(key + (None if inputs is None else inputs.tobytes(),))
    assert len(targets) >= 10  # Different indices give different examples.
    first = tasks.make_example(name, 0, seed=3, resolution=R)
    other = tasks.make_example(name, 0, seed=4, resolution=R)
    assert (other.instruction.text, other.meta["scene"]) != (
        first.instruction.text,
        first.meta["scene"],
    )


@pytest.mark.parametrize("name", GENERATION)
def test_generation_targets_render_their_scene(name):
    for index in range(4):
        ex = tasks.make_example(name, index, seed=0, resolution=R)
        np.testing.assert_array_equal(
            ex.target, shapes_world.render(ex.meta["scene"], R)
        )
        assert ex.meta["conditions"]


@pytest.mark.parametrize("name", tasks.VISION_TASKS)
def test_vision_tasks_take_the_input_image(name):
    for index in range(4):
        ex = tasks.make_example(name, index, seed=0, resolution=R)
        assert ex.instruction.context == ()
        np.testing.assert_array_equal(
            ex.instruction.input_image, shapes_world.render(ex.meta["scene"], R)
        )


def test_vision_targets():
    for index in range(6):
        seg = tasks.make_example("segmentation", index, 0, R)
        np.testing.assert_array_equal(
            seg.target,
            controls.segmentation_target(seg.meta["scene"], seg.meta["query"], R),
        )
        cls = tasks.make_example("classification", index, 0, R)
        shape, colour = cls.meta["query_class"]
        present = any(
            (o.shape, o.colour) == (shape, colour) for o in cls.meta["scene"].objects
        )
        assert present == cls.meta["present"]
        assert f"{colour} {shape}" in cls.instruction.text
        np.testing.assert_array_equal(
            cls.target, controls.classification_target(present, R)
        )
    answers = {
        tasks.make_example("classification", i, 0, R).meta["present"] for i in range(20)
    }
    assert answers == {True, False}


def test_subject_context_names_the_subject_and_shows_it():
    for index in range(6):
        ex = tasks.make_example("subject", index, 0, R)
        (name,) = ex.meta["subjects"]
        shape, colour, pattern = shapes_world.NAMED_SUBJECTS[name]
        assert 1 <= len(ex.instruction.context) <= 3
        for item in ex.instruction.context:
            assert item.marker == "[ref#1]" and item.text.endswith(name)
            assert (item.image == shapes_world.COLOURS[colour]).all(-1).any()
        assert "[ref#1]" in ex.instruction.text and name not in ex.instruction.text
        assert ex.meta["conditions"]["subject"].identity == (shape, colour, pattern)


def test_style_tasks_share_the_background_style():
    for index in range(6):
        gen = tasks.make_example("style_generation", index, 0, R)
        # Pixel (0, 0) is never covered by an object and shows the main colour.
        np.testing.assert_array_equal(
            gen.instruction.context[0].image[0, 0], gen.target[0, 0]
        )
        transfer = tasks.make_example("style_transfer", index, 0, R)
        content, style = transfer.instruction.context
        np.testing.assert_array_equal(content.image, transfer.instruction.input_image)
        assert transfer.meta["input_scene"].objects == transfer.meta["scene"].objects
        assert (
            transfer.meta["input_scene"].background != transfer.meta["scene"].background
        )
        assert (
            transfer.meta["scene"].background
            == transfer.meta["conditions"]["style"].background
        )


def test_controls_are_context_and_input_image():
    for kind in ("edge", "mask", "depth", "sketch"):
        ex = tasks.make_example(f"{kind}_to_image", 0, 0, R)
        (item,) = ex.instruction.context
        np.testing.assert_array_equal(item.image, ex.instruction.input_image)
        expected = getattr(controls, f"{kind}_map")(ex.meta["scene"], R)
        np.testing.assert_array_equal(item.image, expected)


@pytest.mark.parametrize("task", ["edge_to_image", "sketch_to_image", "control+style"])
def test_control_captions_leave_the_layout_to_the_map(task):
    position_words = re.compile(r"\b(top|bottom|left|right|center|middle)\b")
    for index in range(16):
        for unseen in (False, True):
            ex = tasks.make_example(task, index, 0, R, unseen=unseen)
            text = ex.instruction.text
            assert not position_words.search(text), text
            conditions = ex.meta["conditions"]
            assert conditions["text"].anywhere and conditions["text"].exclusive
            assert not conditions["control"].anywhere  # The map's places count.
            scene = ex.meta["scene"]
            assert all(o.colour in text and o.shape in text for o in scene.objects)


def test_edit_changes_one_object():
    ops = set()
    for index in range(12):
        ex = tasks.make_example("edit", index, 0, R)
        before, after = ex.meta["input_scene"], ex.meta["scene"]
        ops.add(ex.meta["op"])
        np.testing.assert_array_equal(
            ex.instruction.input_image, shapes_world.render(before, R)
        )
        assert not np.array_equal(ex.instruction.input_image, ex.target)
        key = lambda o: (o.shape, o.colour, o.position)  # noqa: E731
        changed = {key(o) for o in before.objects} ^ {key(o) for o in after.objects}
        assert len(changed) == (1 if ex.meta["op"] == "remove" else 2)
    assert ops == {"recolour", "move", "remove"}


def test_task_scenes_avoid_held_out_triples_and_use_ground_plane_depth():
    held_out = shapes_world.held_out_triples()
    for name in ("text_to_image", "depth_estimation", "edit", "subject"):
        for index in range(10):
            scene = tasks.make_example(name, index, 0, R).meta["scene"]
            assert not {o.triple for o in scene.objects} & held_out
            for a in scene.objects:
                for b in scene.objects:
                    row_a = shapes_world.POSITIONS.index(a.position) // 3
                    row_b = shapes_world.POSITIONS.index(b.position) // 3
                    if row_a > row_b:  # a is lower in the image, so nearer.
                        assert a.z > b.z


def test_multi_subject_has_two_subjects_under_two_markers():
    for index in range(5):
        ex = tasks.make_example("multi_subject", index, 0, R)
        a, b = ex.meta["subjects"]
        assert a != b
        by_marker = {}
        for item in ex.instruction.context:
            by_marker.setdefault(item.marker, set()).add(item.text)
        assert by_marker == {"[ref#1]": {f"a {a}"}, "[ref#2]": {f"a {b}"}}


def test_mixture():
    assert abs(sum(tasks.MIXTURE.values()) - 1) < 1e-9
    assert set(tasks.MIXTURE) == set(tasks.TRAIN_TASKS)
    assert max(tasks.MIXTURE, key=tasks.MIXTURE.get) == "subject"
    rng = np.random.default_rng(0)
    draws = [tasks.sample_task(rng) for _ in range(4000)]
    share = draws.count("subject") / len(draws)
    assert abs(share - tasks.MIXTURE["subject"]) < 0.03
    assert tasks.sample_task(rng, {"edit": 1.0, "subject": 0.0}) == "edit"


def test_context_slots_cover_the_mixture():
    # Subjects bring 1-3 references (mean 2): 2 x 1.25 -> 2.5 slots.
    assert tasks.context_slots({"subject": 1.0}, "simple") == 2.5
    # Style transfer always brings 2 items.
    assert tasks.context_slots({"style_transfer": 1.0}, "simple") == 2.5
    # No context at all still packs (0 would encode every padded slot).
    assert tasks.context_slots({"segmentation": 1.0}, "simple") == 0.25
    # Half subject, half text: mean about 1 -> 1.25.
    half = tasks.context_slots({"subject": 1.0, "text_to_image": 1.0}, "simple")
    assert half == 1.25
    full = tasks.context_slots(tasks.MIXTURE, "simple")
    assert 1.25 <= full <= 1.75
    with pytest.raises(ValueError, match="no task with a positive weight"):
        tasks.context_slots({"subject": 0.0})


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: tasks.make_example("painting", 0, 0), "unknown task 'painting'"),
        (lambda: tasks.make_example("edit", -1, 0), "index and seed must be >= 0"),
        (lambda: tasks.make_example("edit", 0, 0, resolution=20), "multiple of 16"),
        (
            lambda: tasks.sample_task(np.random.default_rng(0), {"x": 1.0}),
            "unknown task",
        ),
        (
            lambda: tasks.sample_task(np.random.default_rng(0), {"edit": -1.0}),
            "must be finite, >= 0",
        ),
        (
            lambda: tasks.sample_task(np.random.default_rng(0), {"edit": 0.0}),
            "not all 0",
        ),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_examples_tokenise_to_arrays():
    from imagen_jax.text.tokenizers import ByteTokenizer

    tok = ByteTokenizer(extra_tokens=instructions.MARKERS)
    for name in ALL:
        ex = tasks.make_example(name, 1, 0, R)
        arrays = instructions.to_arrays(
            ex.instruction,
            tok,
            max_context=tasks.MAX_CONTEXT,
            text_len=256,
            ctx_text_len=32,
            resolution=R,
        )
        assert arrays["ctx_mask"].sum() == len(ex.instruction.context)
        assert bool(arrays["cond_image_mask"]) == (
            ex.instruction.input_image is not None
        )


@pytest.mark.parametrize("name", ALL)
def test_simple_world_scenes_hold_one_object(name):
    wanted = {"multi_subject": 2, "depth_estimation": 2}.get(name, 1)
    for index in range(8):
        ex = tasks.make_example(name, index, 0, R, world="simple")
        scene = ex.meta.get("input_scene", ex.meta["scene"])  # edits may remove
        assert len(scene.objects) == wanted, scene
        for item in ex.instruction.context:  # references and style images too
            assert item.image.shape == (R, R, 3)
        instructions.validate(
            ex.instruction, max_context=tasks.MAX_CONTEXT, resolution=R
        )


def test_simple_world_subjects_are_any_identity_under_a_made_up_name():
    identities, names = set(), set()
    for index in range(60):
        ex = tasks.make_example("subject", index, 0, R, world="simple")
        (name,) = ex.meta["subjects"]
        identity = ex.meta["conditions"]["subject"].identity
        identities.add(identity)
        names.add(name)
        assert name not in shapes_world.NAMED_SUBJECTS
        assert name not in ex.instruction.text
        for item in ex.instruction.context:
            assert item.text.endswith(name)
            assert (item.image == shapes_world.COLOURS[identity[1]]).all(-1).any()
    # Far more identities than the 8 named ones, and a fresh name almost always.
    assert len(identities) > 25 and len(names) > 50


def test_unknown_world_is_an_error():
    with pytest.raises(ValueError, match="unknown task world 'tiny'"):
        tasks.make_example("subject", 0, 0, R, world="tiny")


def test_unseen_examples_use_the_unseen_caption_grammar():
    # The held-apart constructions never appear in training captions.
    markers = (": a", ": an", "there is", " over a ")
    for index in range(40):
        seen = tasks.make_example("text_to_image", index, 0, R, world="simple")
        assert not any(m in seen.instruction.text for m in markers)
    unseen = [
        tasks.make_example("text_to_image", i, 0, R, unseen=True, world="simple")
        for i in range(40)
    ]
    assert sum(any(m in e.instruction.text for m in markers) for e in unseen) > 20


def test_plain_examples_keep_the_conditions_without_instruction_words():
    assert tasks.plain_templates(
        ("Generate {content} in the style of [ref#1].", "Draw {content} like [ref#1].")
    ) == ("{content} [ref#1]",)
    for name in ALL:
        plain = tasks.make_example(name, 5, 0, R, world="simple", plain=True)
        full = tasks.make_example(name, 5, 0, R, world="simple")
        np.testing.assert_array_equal(plain.target, full.target)
        assert len(plain.instruction.context) == len(full.instruction.context)
        words = set(plain.instruction.text.lower().split())
        assert not words & {"generate", "draw", "style", "render", "image"}, name
        instructions.validate(
            plain.instruction, max_context=tasks.MAX_CONTEXT, resolution=R
        )


def test_a_forced_template_phrases_the_same_example():
    """`make_example(template=)`: the example as usual, every template of the
    same fields read as that one, so only the words change."""
    for name in ("subject+style", "sketch_to_image", "segmentation"):
        template = tasks.get_task(name).unseen_templates[0]
        for index in range(6):
            usual = tasks.make_example(name, index, 1, R, world="simple")
            forced = tasks.make_example(
                name, index, 1, R, world="simple", template=template
            )
            np.testing.assert_array_equal(forced.target, usual.target)
            assert [c.image.tobytes() for c in forced.instruction.context] == [
                c.image.tobytes() for c in usual.instruction.context
            ]
            assert forced.meta["template"] == template
    # edit's templates differ in their fields: an example whose fields the
    # template lacks keeps its own
    template = "Get rid of the {object}."
    kept = set()
    for index in range(12):
        usual = tasks.make_example("edit", index, 1, R, world="simple")
        forced = tasks.make_example(
            "edit", index, 1, R, world="simple", template=template
        )
        np.testing.assert_array_equal(forced.target, usual.target)
        same = tasks.template_fields(usual.meta["template"]) == {"object"}
        assert (forced.meta["template"] == template) == same
        kept.add(same)
    assert kept == {True, False}


def test_plain_items_drop_the_context_texts_and_keep_the_rest():
    dropped = 0
    for name in ALL:
        raw = tasks.make_example(
            name, 5, 0, R, world="simple", plain=True, plain_items=True
        )
        plain = tasks.make_example(name, 5, 0, R, world="simple", plain=True)
        np.testing.assert_array_equal(raw.target, plain.target)
        assert raw.instruction.text == plain.instruction.text
        for r, p in zip(
            raw.instruction.context, plain.instruction.context, strict=True
        ):
            assert (r.marker, r.text) == (p.marker, "")
            np.testing.assert_array_equal(r.image, p.image)
            dropped += bool(p.text)
        instructions.validate(
            raw.instruction, max_context=tasks.MAX_CONTEXT, resolution=R
        )
    assert dropped > 0
    # The config field (option `raw` of stage2_shapes) reaches the examples.
    from imagen_jax.data import pipeline

    cfg = _simple_data_config("style_generation", num_examples=10)
    cfg.plain_items = True
    example = pipeline.TaskSource(cfg, "train")[0]
    assert [c.text for c in example.instruction.context] == [""]


def _markers(text: str) -> list[str]:
    return sorted(set(tasks._MARKER.findall(text)))


def test_word_noise_makes_up_instruction_words_and_keeps_the_conditions():
    changed = 0
    for name in ALL:
        for i in range(4):
            full = tasks.make_example(name, i, 0, R, world="simple")
            noisy = tasks.make_example(name, i, 0, R, world="simple", word_noise=0.5)
            again = tasks.make_example(name, i, 0, R, world="simple", word_noise=0.5)
            assert noisy.instruction.text == again.instruction.text
            # The scene, context and target are the example's own; only
            # instruction words change, never a field or a marker.
            np.testing.assert_array_equal(noisy.target, full.target)
            assert len(noisy.instruction.context) == len(full.instruction.context)
            clean, made_up = full.meta["template"], noisy.meta["template"]
            assert tasks.template_fields(made_up) == tasks.template_fields(clean)
            assert _markers(made_up) == _markers(clean)
            assert len(made_up.split()) == len(clean.split()), (clean, made_up)
            changed += made_up != clean
    assert changed > 0.8 * 4 * len(ALL)
    # Without noise nothing more is drawn: the example is the one of old.
    off = tasks.make_example("segmentation", 3, 0, R, world="simple", word_noise=0.0)
    on = tasks.make_example("segmentation", 3, 0, R, world="simple")
    assert off.instruction.text == on.instruction.text


def _simple_data_config(task: str, num_examples: int = 10, **fields):
    """A `config.data` of one task on the CPU world, with `fields` set."""
    import ml_collections

    return ml_collections.ConfigDict(
        dict(
            mixture={task: 1.0},
            seed=0,
            resolution=R,
            variant="simple",
            num_examples=num_examples,
            **fields,
        )
    )


def test_word_noise_rate_is_checked_and_applies_to_training_only():
    import ml_collections

    from imagen_jax.data import pipeline

    with pytest.raises(ValueError, match=r"word noise must be in \[0, 1\)"):
        tasks.noisy_templates(("Segment the {object}.",), np.random.default_rng(0), 1)
    cfg = _simple_data_config("segmentation", num_examples=100, word_noise=0.5)
    quiet = ml_collections.ConfigDict({**cfg.to_dict(), "word_noise": 0.0})
    texts = {
        (split, noise): [
            pipeline.TaskSource(c, split)[i].instruction.text for i in range(8)
        ]
        for split in ("train", "eval")
        for noise, c in ((True, cfg), (False, quiet))
    }
    assert texts["train", True] != texts["train", False]
    assert texts["eval", True] == texts["eval", False]
    with pytest.raises(ValueError, match="config.data.word_noise"):
        pipeline.TaskSource(
            ml_collections.ConfigDict({**cfg.to_dict(), "word_noise": -0.1}), "train"
        )


def test_query_objects_puts_that_many_objects_in_the_query_scenes():

    from imagen_jax.data import pipeline

    positives = 0
    for index in range(16):
        seg = tasks.make_example(
            "segmentation", index, 0, R, world="simple", query_objects=2
        )
        scene, query = seg.meta["scene"], seg.meta["query"]
        assert len(scene.objects) == 2
        other = controls.segmentation_target(scene, 1 - query, R)
        assert (seg.target != other).any()  # the answer depends on the name
        cls = tasks.make_example(
            "classification", index, 0, R, world="simple", query_objects=2
        )
        assert len(cls.meta["scene"].objects) == 2
        positives += cls.meta["present"]
        det = tasks.make_example(
            "detection", index, 0, R, world="simple", query_objects=2
        )
        assert len(det.meta["scene"].objects) == 2
        # The other tasks keep the world's scenes, example for example.
        for name in ("text_to_image", "depth_estimation"):
            a = tasks.make_example(name, index, 0, R, world="simple", query_objects=2)
            b = tasks.make_example(name, index, 0, R, world="simple")
            assert a.instruction.text == b.instruction.text
            np.testing.assert_array_equal(a.target, b.target)
    assert 0 < positives < 16
    with pytest.raises(ValueError, match=r"query_objects must be 0 .* got 4"):
        tasks.make_example("segmentation", 0, 0, R, world="simple", query_objects=4)
    cfg = _simple_data_config("classification", query_objects=2)
    for split in ("train", "eval"):
        assert len(pipeline.TaskSource(cfg, split)[3].meta["scene"].objects) == 2


def test_answers_rename_classification_answer_words_and_colours():

    from imagen_jax.data import pipeline
    from imagen_jax.evaluation import task_metrics

    white, black = (controls.ANSWER_COLOURS[n] for n in ("white", "black"))
    for index in range(12):
        kwargs = dict(world="simple", answers=("white", "black"))
        renamed = tasks.make_example("classification", index, 0, R, **kwargs)
        default = tasks.make_example("classification", index, 0, R, world="simple")
        text, query = renamed.instruction.text, default.meta["query_class"]
        assert renamed.meta["query_class"] == query
        # The answer words change; the queried object keeps its colour.
        assert re.search(r"\bwhite\b", text, re.I) and re.search(
            r"\bblack\b", text, re.I
        )
        assert f"{query[1]} {query[0]}" in text
        assert text.lower().count(" red") == (query[1] == "red")
        want = white if renamed.meta["present"] else black
        np.testing.assert_array_equal(renamed.target, np.full((R, R, 3), want))
        # Scored against the example's own answer colours.
        score = task_metrics.score_example(renamed.target, renamed)
        assert score["accuracy"] == 1.0
        flipped = np.full((R, R, 3), black if renamed.meta["present"] else white)
        assert task_metrics.score_example(flipped, renamed)["accuracy"] == 0.0
        unseen = tasks.make_example(
            "classification", index, 0, R, unseen=True, **kwargs
        )
        assert not re.search(r"\b(red|blue) =", unseen.instruction.text, re.I)
    with pytest.raises(ValueError, match=r"answers must be two different names"):
        tasks.make_example("classification", 0, 0, R, answers=("white", "pink"))
    cfg = _simple_data_config("classification", answers="white/black")
    for split in ("train", "eval"):
        example = pipeline.TaskSource(cfg, split)[3]
        assert example.meta["answer_colours"] == (white, black)


def test_low_snr_tasks_mark_their_examples_in_the_batch():
    import ml_collections

    from imagen_jax import instructions
    from imagen_jax.data import pipeline
    from imagen_jax.text.tokenizers import ByteTokenizer

    mixture = {"classification": 1.0, "segmentation": 1.0}
    cfg = _simple_data_config("classification", num_examples=100)
    cfg.mixture = mixture
    cfg.update(max_context=2, max_text_len=96, ctx_text_len=24)
    cfg.low_snr_tasks = ("classification",)
    source = pipeline.TaskSource(cfg, "train")
    transform = pipeline.element_transform(
        ml_collections.ConfigDict({**cfg.to_dict(), "name": "shapes_world_tasks"}),
        ByteTokenizer(extra_tokens=instructions.MARKERS),
    )
    marks = {}
    for i in range(16):
        example = source[i]
        marks.setdefault(example.task, set()).add(
            int(transform.map(example)["low_snr"])
        )
    assert marks == {"classification": {1}, "segmentation": {0}}
    # A task the mixture leaves out marks nothing; a misspelt one is refused.
    cfg.low_snr_tasks = ("segmentation_x", "edit")
    with pytest.raises(ValueError, match=r"unknown tasks \['segmentation_x'\]"):
        pipeline.TaskSource(cfg, "train")
    cfg.mixture = {"segmentation": 1.0}
    cfg.low_snr_tasks = ("classification",)
    source = pipeline.TaskSource(cfg, "train")
    assert {int(transform.map(source[i])["low_snr"]) for i in range(4)} == {0}


def test_object_weight_tasks_weigh_only_their_examples_toward_the_objects():
    import ml_collections

    from imagen_jax import instructions
    from imagen_jax.data import pipeline
    from imagen_jax.text.tokenizers import ByteTokenizer

    cfg = _simple_data_config("subject", num_examples=100)
    cfg.mixture = {"subject": 1.0, "mask_to_image": 1.0}
    cfg.update(max_context=4, max_text_len=96, ctx_text_len=24, object_weight=9.0)
    cfg.object_weight_tasks = ("mask_to_image",)
    source = pipeline.TaskSource(cfg, "train")

    def transform():
        return pipeline.element_transform(
            ml_collections.ConfigDict({**cfg.to_dict(), "name": "shapes_world_tasks"}),
            ByteTokenizer(extra_tokens=instructions.MARKERS),
        )

    weighted, weigh = {}, transform()
    for i in range(16):
        example = source[i]
        mask = weigh.map(example)["position_mask"]
        assert mask.shape == (cfg.resolution,) * 2 and mask.dtype == np.uint8
        weighted.setdefault(example.task, set()).add(bool(mask.any()))
        if example.task == "mask_to_image":  # the target's boxes, as before
            expected = pipeline.target_position_mask(example, cfg.resolution)
            np.testing.assert_array_equal(mask, expected)
    # The subject's pixels weigh alike; the control task keeps its boxes.
    assert weighted == {"subject": {False}, "mask_to_image": {True}}
    cfg.object_weight_tasks = ()  # empty: every task's objects
    out = transform().map(source[0])
    np.testing.assert_array_equal(
        out["position_mask"], pipeline.target_position_mask(source[0], cfg.resolution)
    )
    assert out["position_mask"].any()
    cfg.object_weight_tasks = ("subjects",)
    with pytest.raises(ValueError, match=r"object_weight_tasks names unknown"):
        pipeline.TaskSource(cfg, "train")


def test_background_weight_tasks_weigh_the_background_of_their_examples():
    import ml_collections

    from imagen_jax import instructions
    from imagen_jax.data import pipeline
    from imagen_jax.text.tokenizers import ByteTokenizer

    cfg = _simple_data_config("subject", num_examples=100)
    cfg.mixture = {"subject": 1.0, "style_generation": 1.0}
    cfg.update(max_context=4, max_text_len=96, ctx_text_len=24, object_weight=9.0)
    cfg.object_weight_tasks = ()
    cfg.background_weight_tasks = ("style_generation",)
    source = pipeline.TaskSource(cfg, "train")
    weigh = pipeline.element_transform(
        ml_collections.ConfigDict({**cfg.to_dict(), "name": "shapes_world_tasks"}),
        ByteTokenizer(extra_tokens=instructions.MARKERS),
    )
    seen = set()
    for i in range(16):
        example = source[i]
        mask = weigh.map(example)["position_mask"]
        boxes = pipeline.target_position_mask(example, cfg.resolution)
        assert mask.dtype == np.uint8 and 0 < boxes.sum() < boxes.size
        # Style generation weighs the pixels outside its objects' boxes (the
        # reference's background); the subject keeps its boxes.
        expected = 1 - boxes if example.task == "style_generation" else boxes
        np.testing.assert_array_equal(mask, expected)
        seen.add(example.task)
    assert seen == {"subject", "style_generation"}
    cfg.background_weight_tasks = ("style",)
    with pytest.raises(ValueError, match=r"background_weight_tasks names unknown"):
        pipeline.TaskSource(cfg, "train")


def test_reference_part_is_told_by_the_instruction_words_alone():
    # reference_objects: the reference's objects on the caption's background;
    # reference_style: the caption's objects on the reference's background.
    # Their raw texts and items are alike in kind; their instruction words
    # differ as sets, so a reader of words (no word order) tells them apart.
    from imagen_jax.evaluation import task_metrics

    for name in ("reference_objects", "reference_style"):
        assert name in tasks.OPT_IN_TASKS
        assert name not in tasks.TRAIN_TASKS + tuple(tasks.MIXTURE)
        for i in range(12):
            ex = tasks.make_example(name, i, 0, R, world="simple")
            raw = tasks.make_example(
                name, i, 0, R, world="simple", plain=True, plain_items=True
            )
            (item,) = ex.instruction.context
            assert item.marker == "[ref#1]" and item.text in tasks._NEUTRAL_TEXTS
            np.testing.assert_array_equal(ex.instruction.input_image, item.image)
            scene, reference = ex.meta["scene"], ex.meta["input_scene"]
            np.testing.assert_array_equal(item.image, shapes_world.render(reference, R))
            np.testing.assert_array_equal(ex.target, shapes_world.render(scene, R))
            # The parts the other way round (`swapped`): the other scene's
            # objects on the other background, which differs from the target's.
            swap = ex.meta["swapped"]
            assert swap["style"].background != scene.background
            if name == "reference_objects":  # its objects, the text's setting
                assert scene.objects == reference.objects
                assert swap["style"].background == reference.background
                described = shapes_world.Scene(
                    swap["content"].objects, scene.background
                )
            else:  # its background, the text's objects
                assert scene.background == reference.background
                assert swap["content"].objects == reference.objects
                described = shapes_world.Scene(scene.objects, swap["style"].background)
            # The caption names the described scene's background too.
            assert described.background.palette in ex.instruction.text
            # Raw: the caption and the marker, nothing of the part to take.
            assert raw.instruction.text.endswith(" [ref#1]")
            assert raw.instruction.context[0].text == ""
            score = task_metrics.score_generation(ex.target, ex)
            assert (score["sc"], score["swapped"]) == (1.0, 0.0)
    words = {
        name: {
            w.lower()
            for t in task.templates
            for w in re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", "", t))
        }
        for name, task in tasks.TASKS.items()
        if name.startswith("reference_")
    }
    assert "style" in words["reference_style"] - words["reference_objects"]
    assert {"objects", "shapes", "setting"} <= (
        words["reference_objects"] - words["reference_style"]
    )
    same = {
        tasks.plain_templates(tasks.TASKS[n].templates)
        for n in ("reference_objects", "reference_style")
    }
    assert same == {("{caption} [ref#1]",)}
    with pytest.raises(ValueError, match="'objects' or 'style'"):
        tasks._reference_part("subject")


def test_subject_reference_style_takes_the_style_by_the_words_alone():
    # subject+style with reference_style's reference as the style image: an
    # image of objects on a background, with a neutral text, that is also the
    # input image. Same words and raw text as subject+style.
    from imagen_jax.evaluation import task_metrics

    name = "subject+reference_style"
    task = tasks.TASKS[name]
    assert name in tasks.OPT_IN_ZERO_SHOT_TASKS
    assert name not in tasks.ZERO_SHOT_TASKS + tasks.OPT_IN_TASKS
    assert set(task.composes) == {"subject", "reference_style"}
    assert task.templates == tasks.TASKS["subject+style"].templates
    styled = tasks.make_example("subject+style", 0, 0, R, world="simple")
    assert styled.instruction.input_image is None
    for i in range(12):
        ex = tasks.make_example(name, i, 0, R, world="simple")
        raw = tasks.make_example(name, i, 0, R, world="simple", plain=True)
        assert ex.zero_shot
        *refs, item = ex.instruction.context
        assert [r.marker for r in refs] == ["[ref#1]"] * len(refs)
        assert item.marker == "[ref#2]" and item.text in tasks._NEUTRAL_TEXTS
        np.testing.assert_array_equal(ex.instruction.input_image, item.image)
        np.testing.assert_array_equal(
            ex.target, shapes_world.render(ex.meta["scene"], R)
        )
        assert raw.instruction.text.endswith("[ref#1] [ref#2]")
        # The reference: its background, and objects the target leaves out
        # (`swapped` scores them copied).
        assert ex.meta["scene"].background == ex.meta["input_scene"].background
        (swap,) = ex.meta["swapped"].values()
        assert (
            swap.objects == ex.meta["input_scene"].objects != ex.meta["scene"].objects
        )
        np.testing.assert_array_equal(
            item.image, shapes_world.render(ex.meta["input_scene"], R)
        )
        score = task_metrics.score_generation(ex.target, ex)
        assert score["sc"] == 1.0 and score["swapped"] < 1.0
        copied = task_metrics.score_generation(item.image, ex)
        assert copied["sc"] < 1.0 and copied["swapped"] == 1.0


def test_role_transfer_gives_the_roles_by_the_instruction_alone():
    from imagen_jax.evaluation import evaluate

    assert {"role_transfer", "role_transfer_told"} <= set(tasks.OPT_IN_TASKS)
    assert "role_transfer" not in tasks.TRAIN_TASKS + tuple(tasks.MIXTURE)
    roles, texts = set(), set()
    for i in range(16):
        ex = tasks.make_example("role_transfer", i, 0, R, world="simple")
        raw = tasks.make_example(
            "role_transfer", i, 0, R, world="simple", plain=True, plain_items=True
        )
        content_ref = ex.meta["content_ref"]
        style_ref = ({"[ref#1]", "[ref#2]"} - {content_ref}).pop()
        roles.add(content_ref)
        items = {c.marker: c for c in ex.instruction.context}
        assert [c.marker for c in ex.instruction.context] == ["[ref#1]", "[ref#2]"]
        texts |= {c.text for c in items.values()}
        assert ex.instruction.input_image is None
        # The instruction names the content under content_ref, the style under
        # the other marker.
        template = ex.meta["template"]
        assert ex.instruction.text == template.format(
            content_ref=content_ref, style_ref=style_ref
        )
        content, scene = ex.meta["input_scene"], ex.meta["scene"]
        np.testing.assert_array_equal(
            items[content_ref].image, shapes_world.render(content, R)
        )
        assert scene.objects == content.objects
        assert scene.background != content.background
        np.testing.assert_array_equal(ex.target, shapes_world.render(scene, R))
        # Read the other way round: the style image's objects on the content's
        # background (scored as `swapped`).
        swap = ex.meta["swapped"]
        assert swap["style"].background == content.background
        style_scene = shapes_world.Scene(swap["content"].objects, scene.background)
        np.testing.assert_array_equal(
            items[style_ref].image, shapes_world.render(style_scene, R)
        )
        # The raw baseline sees the same images and a text without roles.
        assert raw.instruction.text == "[ref#1] [ref#2]"
        for r, c in zip(raw.instruction.context, ex.instruction.context, strict=True):
            np.testing.assert_array_equal(r.image, c.image)
        instructions.validate(
            ex.instruction, max_context=tasks.MAX_CONTEXT, resolution=R
        )
    assert roles == {"[ref#1]", "[ref#2]"}  # either order occurs
    assert texts <= set(tasks._NEUTRAL_TEXTS)
    # The oracle: the items' texts say their roles as well.
    told_roles = set()
    for i in range(16):
        told = tasks.make_example("role_transfer_told", i, 0, R, world="simple")
        content_ref = told.meta["content_ref"]
        told_roles.add(content_ref)
        for item in told.instruction.context:
            if item.marker == content_ref:
                assert item.text in tasks._CONTENT_TEXTS
                content = shapes_world.render(told.meta["input_scene"], R)
                np.testing.assert_array_equal(item.image, content)
            else:
                assert item.text in tasks._STYLE_TEXTS
    assert told_roles == {"[ref#1]", "[ref#2]"}
    # Scored only when named.
    import ml_collections

    cfg = ml_collections.ConfigDict({"robustness": False, "text_only": False})
    assert "role_transfer" not in evaluate._runs(cfg, tasks)[0][0]
    cfg.names = ("role_transfer", "subject")
    assert evaluate._runs(cfg, tasks)[0][0] == ["subject", "role_transfer"]


def test_a_training_mixture_keeps_zero_shot_combinations_out_or_alone():
    from imagen_jax.data import pipeline

    cfg = _simple_data_config("subject", num_examples=10)
    cfg.mixture = {"subject": 1.0, "style_generation": 1.0, "subject+style": 0.1}
    with pytest.raises(
        ValueError, match=r"zero-shot combinations \['subject\+style'\]"
    ):
        pipeline.TaskSource(cfg, "train")
    # Scoring draws from any mixture; alone, a combination is an oracle probe.
    assert pipeline.TaskSource(cfg, "test")[0].task in cfg.mixture
    cfg.mixture = {"subject+style": 1.0, "control+style": 1.0}
    assert pipeline.TaskSource(cfg, "train")[0].task in cfg.mixture
