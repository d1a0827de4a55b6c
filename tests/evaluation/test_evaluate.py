"""The task evaluator's passes, rows and averages (no model needed), and the
role probe (a smoke model for its wiring)."""

import ml_collections
import numpy as np
import pytest

from imagen_jax.data import tasks
from imagen_jax.evaluation import evaluate


def _cfg(**kw):
    return ml_collections.ConfigDict(
        {"names": [], "robustness": True, "text_only": True, **kw}
    )


def test_runs_cover_trained_zero_shot_unseen_and_text_only():
    runs = evaluate._runs(_cfg(), tasks)
    by_suffix = {suffix: (names, unseen, drop) for names, unseen, suffix, drop in runs}
    assert by_suffix["/unseen_paraphrase"] == (list(tasks.TRAIN_TASKS), True, False)
    text_only, _, drop = by_suffix["/text_only"]
    assert drop and "subject" in text_only and "zero_shot" not in text_only
    # No baseline where there is nothing to drop, nor for the vision tasks.
    assert "text_to_image" not in text_only
    assert not set(text_only) & set(tasks.VISION_TASKS)


def test_runs_of_named_tasks_only():
    runs = evaluate._runs(_cfg(names=["subject"], robustness=False), tasks)
    assert [(n, s) for n, _, s, _ in runs] == [
        (["subject"], ""),
        ([], ""),
        (["subject"], "/text_only"),
    ]
    # evals.tasks.text_only False: no baseline pass.
    runs = evaluate._runs(_cfg(robustness=False, text_only=False), tasks)
    assert [s for _, _, s, _ in runs] == ["", ""]
    with pytest.raises(ValueError, match="unknown tasks"):
        evaluate._runs(_cfg(names=["subjekt"]), tasks)


def test_opt_in_tasks_are_scored_when_trained_or_named():
    first = lambda runs: runs[0][0]  # noqa: E731
    assert "role_transfer" not in first(evaluate._runs(_cfg(), tasks))
    trained = {"subject": 0.5, "role_transfer": 0.3, "role_transfer_told": 0.2}
    scored = first(evaluate._runs(_cfg(), tasks, trained))
    assert scored == [*tasks.TRAIN_TASKS, "role_transfer", "role_transfer_told"]
    # Names given: those alone, whatever the mixture.
    named = evaluate._runs(_cfg(names=["subject"]), tasks, trained)
    assert first(named) == ["subject"]


def test_opt_in_zero_shot_tasks_are_scored_when_their_parts_are_trained():
    zero = lambda *a: evaluate._runs(*a)[1][0]  # noqa: E731
    combo = "subject+reference_style"
    assert zero(_cfg(), tasks) == list(tasks.ZERO_SHOT_TASKS)
    assert combo not in zero(_cfg(), tasks, {"subject": 1.0, "reference_objects": 1})
    parts = {"subject": 0.5, "reference_objects": 0.2, "reference_style": 0.3}
    assert zero(_cfg(), tasks, parts) == [*tasks.ZERO_SHOT_TASKS, combo]
    assert zero(_cfg(names=[combo]), tasks) == [combo]
    # Never trained: not among the in-domain tasks, whatever is named.
    assert combo not in evaluate._runs(_cfg(names=[combo]), tasks, parts)[0][0]


def test_zero_shot_tasks_can_take_more_examples():
    counts = evaluate._examples_per_task(_cfg(per_task=24), tasks)
    assert set(counts) == set(tasks.TASKS) and set(counts.values()) == {24}
    counts = evaluate._examples_per_task(
        _cfg(per_task=24, zero_shot_per_task=96), tasks
    )
    zero_shot = tasks.ZERO_SHOT_TASKS + tasks.OPT_IN_ZERO_SHOT_TASKS
    assert {counts[n] for n in zero_shot} == {96}
    assert {counts[n] for n in tasks.TRAIN_TASKS} == {24}


def test_drop_conditions_masks_context_and_input_image_only():
    batch = {
        "text_mask": np.ones((2, 4), bool),
        "ctx_mask": np.ones((2, 3), bool),
        "cond_image_mask": np.ones((2,), bool),
    }
    dropped = evaluate._drop_conditions(batch)
    assert dropped["text_mask"].all()
    assert not dropped["ctx_mask"].any() and not dropped["cond_image_mask"].any()
    assert batch["ctx_mask"].all()  # the caller's batch is left alone


def test_task_rows_report_conditions_and_attributes():
    examples = [
        tasks.make_example("style_generation", i, 0, 32, world="simple")
        for i in range(2)
    ]
    rows = evaluate._task_rows(
        "style_generation", examples, [e.target for e in examples]
    )
    values = {r["metric"]: r["value"] for r in rows}
    assert values["o"] == 1.0 and values["sc/style"] == 1.0
    assert values["style/palette"] == 1.0 and values["text/colour"] == 1.0
    # A blank image: the objects are missing, the style is wrong.
    blank = [np.zeros_like(e.target) for e in examples]
    values = {
        r["metric"]: r["value"]
        for r in evaluate._task_rows("style_generation", examples, blank)
    }
    assert values["text/position"] == 0.0 and values["o"] == 0.0


@pytest.mark.parametrize(
    "task, shown", [("role_transfer", 2), ("style_transfer", 1), ("text_to_image", 1)]
)
def test_task_grid_shows_each_examples_conditions_sample_and_target(
    task, shown, monkeypatch
):
    # Both references of a role transfer (no input image); the input image
    # of a style transfer; a blank for text to image.
    examples = [tasks.make_example(task, i, 0, 32, world="simple") for i in range(3)]
    samples = [np.full_like(e.target, 7) for e in examples]
    saved = {}
    monkeypatch.setattr(
        evaluate.grids, "save_grid", lambda cells, path, cols: saved.update(locals())
    )
    evaluate._task_grid(examples, samples, "grid.png")
    cells, width = saved["cells"], shown + 2
    assert saved["cols"] == 2 * width and len(cells) == 3 * width
    for i, example in enumerate(examples):
        row = cells[i * width : (i + 1) * width]
        ins = example.instruction
        wanted = (
            [ins.input_image]
            if ins.input_image is not None
            else [c.image for c in ins.context] or [np.zeros_like(example.target)]
        )
        np.testing.assert_array_equal(row[:shown], np.stack(wanted))
        np.testing.assert_array_equal(row[shown], samples[i])
        np.testing.assert_array_equal(row[shown + 1], example.target)


def test_summary_averages_by_kind():
    def row(task, metric, value):
        return {
            "task": task,
            "metric": metric,
            "value": value,
            "n": 4,
        }

    rows = [
        row("subject", "o", 0.8),
        row("edit", "o", 0.4),
        row("segmentation", "iou", 0.9),
        row("zero_shot/multi_subject", "o", 0.5),
        row("subject/unseen_paraphrase", "o", 0.6),
        row("subject/text_only", "sc", 0.1),
        row("zero_shot/multi_subject/text_only", "sc", 0.0),
    ]
    got = {
        (r["task"], r["metric"]): (r["value"], r["n"])
        for r in evaluate.summary_rows(rows, tasks.VISION_TASKS)
    }
    assert got[("average/in_domain", "o")] == (pytest.approx(0.6), 2)
    assert got[("average/zero_shot", "o")] == (0.5, 1)
    assert got[("average/unseen_paraphrase", "o")] == (0.6, 1)
    assert got[("average/text_only", "sc")] == (0.1, 1)


def test_fill_is_read_from_the_largest_object():
    from imagen_jax.data import shapes_world

    solid = shapes_world.Obj("square", "red", "large", "center", "solid")
    striped = shapes_world.Obj("square", "red", "large", "center", "striped")
    for drawn, want, right in [(solid, solid, 1.0), (striped, solid, 0.0)]:
        image = shapes_world.render(shapes_world.Scene((drawn,)), 32)
        assert evaluate._fill_right(image, want, 32) == right
    blank = np.full((32, 32, 3), 205, np.uint8)  # grey background, no object
    assert evaluate._fill_right(blank, solid, 32) == 0.0


def test_fill_confusion_counts_wanted_against_drawn():
    from imagen_jax.data import shapes_world

    def example(fill):
        subject = tasks.Condition("subject", identity=("square", "red", fill))
        return tasks.TaskExample(
            "retrieval_only", None, None, {"conditions": {"subject": subject}}
        )

    def drawn(fill):
        obj = shapes_world.Obj("square", "red", "large", "center", fill)
        return shapes_world.render(shapes_world.Scene((obj,)), 32)

    blank = np.full((32, 32, 3), 205, np.uint8)  # grey background, no object
    examples = [
        example("solid"),
        example("solid"),
        example("dotted"),
        example("striped"),
    ]
    images = [drawn("solid"), drawn("dotted"), drawn("solid"), blank]
    assert evaluate.fill_confusion(examples, images) == {
        "dotted -> solid": 1,
        "solid -> dotted": 1,
        "solid -> solid": 1,
        "striped -> none": 1,
    }


def test_headline_scores_split_by_template_lowest_first():
    templates = [
        "Segment the {object}.",
        "Isolate the {object}.",
        "Segment the {object}.",
    ]
    o, sc = evaluate._mean_rows(
        "segmentation/unseen_paraphrase",
        {"o": [1.0, 0.0, 0.5], "sc": [1.0, 0.0, 1.0]},
        templates,
    )
    assert o["by_template"] == [
        {"template": "Isolate the {object}.", "value": 0.0, "n": 1},
        {"template": "Segment the {object}.", "value": 0.75, "n": 2},
    ]
    assert "by_template" not in sc  # the headline scores only, as per_example
    # one template, or none known: nothing to split
    assert (
        "by_template"
        not in evaluate._mean_rows("edit", {"o": [1.0, 0.0]}, ["a", "a"])[0]
    )
    assert "by_template" not in evaluate._mean_rows("edit", {"o": [1.0, 0.0]})[0]
    with pytest.raises(ValueError):  # one template per example
        evaluate.by_template([1.0, 0.0], ["a"])


def test_each_mean_carries_its_standard_error_and_so_do_the_averages():
    rows = evaluate._mean_rows("subject", {"o": [0.0, 1.0, 1.0, 0.0]})
    # sample deviation sqrt(1/3), over sqrt(4)
    assert rows[0]["se"] == pytest.approx(np.sqrt(1 / 3) / 2)
    assert evaluate._mean_rows("edit", {"o": [0.5]})[0]["se"] == 0.0
    # the headline keeps its examples' values, in order, for paired comparisons
    o, sc = evaluate._mean_rows("edit", {"o": [0.5, 0.25], "sc": [1.0, 0.0]})
    assert o["per_example"] == [0.5, 0.25] and "per_example" not in sc
    base = {"metric": "o", "n": 4}
    summary = evaluate.summary_rows(
        [
            {**base, "task": "subject", "value": 0.8, "se": 0.3},
            {**base, "task": "edit", "value": 0.4, "se": 0.4},
            {**base, "task": "zero_shot/multi_subject", "value": 0.5},
        ],
        tasks.VISION_TASKS,
    )
    got = {r["task"]: r for r in summary}
    assert got["average/in_domain"]["se"] == pytest.approx(0.25)  # 0.5 / 2
    assert "se" not in got["average/zero_shot"]  # its task's error unknown


def _pairs(n=200, c=16, seed=0):
    rng = np.random.default_rng(seed)
    first = np.arange(n) % 2 == 0  # balanced, so always guessing one side is 0.5
    return rng.standard_normal((n, 2, c)), rng.permutation(first)


def test_role_probe_reads_a_role_the_encoding_carries():
    pooled, first = _pairs()
    content = np.where(first, 0, 1)
    # A role direction of norm 4 against N(0, 1) noise: the pair's projection
    # is 16 against a deviation of 4 sqrt(2), read right 99.8% of the time.
    pooled[np.arange(len(first)), content] += 1.0
    assert np.mean(evaluate.paired_role_probe(pooled, first)) >= 0.95


def test_role_probe_is_at_chance_on_an_encoding_of_item_order():
    pooled, first = _pairs()
    # Item 1 looks far from item 2 whatever its role (as a marker makes it).
    # Uncentred, the left-out example's own label would tip the direction
    # against it: with balanced labels it is read wrong almost always.
    pooled[:, 0] += 10.0
    accuracy = np.mean(evaluate.paired_role_probe(pooled, first))
    assert abs(accuracy - 0.5) < 0.1  # 0.5 +- 0.035 (one standard error)
    with pytest.raises(ValueError, match="at least 3 examples"):
        evaluate.paired_role_probe(pooled[:2], first[:2])


@pytest.mark.parametrize("option", ["context_instruction", "context_marker"])
def test_role_probe_row_of_a_model_that_encodes_the_items_with_the_instruction(
    option,
):
    from experiments import stage2_shapes
    from imagen_jax import inference, sharding, train_state
    from imagen_jax.models.imagen import build_model
    from imagen_jax.text.tokenizers import make_tokenizer
    from tests.params import perturbed

    cfg = stage2_shapes.get_config("smoke,simple,task=role_transfer/subject")
    cfg.model[option] = True
    cfg = inference.with_conditioning(cfg)
    tok = make_tokenizer(cfg)
    model = build_model(cfg, tok.vocab_size)
    mesh = sharding.make_mesh((-1, 1, 1), cfg.mesh.axes)
    params, _ = sharding.sharded_init(
        lambda: train_state.init_params(model, cfg), mesh, train_state.mesh_rules(cfg)
    )
    loaded = inference.Loaded(cfg, tok, model, perturbed(params), step=0)
    rows = evaluate._role_probe_rows(loaded, count=8, batch_size=4)
    assert [(r["task"], r["metric"], r["n"]) for r in rows] == [
        ("role_transfer", "role_probe", 8),
        ("role_transfer", "role_probe/text", 8),
        ("role_transfer", "role_probe/instruction", 8),
    ]
    assert all(0.0 <= r["value"] <= 1.0 and "se" in r for r in rows)
