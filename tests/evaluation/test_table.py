"""The comparison table: headline scores per column and the averages."""

import pytest

from imagen_jax.evaluation import table


def _row(model_row, task, metric, value):
    return {"task": task, "metric": metric, "value": value, "row": model_row, "n": 4}


def test_markdown_columns_and_averages():
    results = [
        _row("a", "subject", "o", 0.8),
        _row("a", "edit", "o", 0.6),
        _row("a", "segmentation", "score", 0.9),
        _row("a", "zero_shot/multi_subject", "o", 0.5),
        _row("a", "subject/unseen_paraphrase", "o", 0.1),  # not a table row
        _row("a", "average/in_domain", "o", 0.7),  # recomputed, not copied
        _row("b", "subject", "o", 0.4),
        _row("b", "segmentation", "score", 0.7),
        _row("c", "subject", "o", 0.2),
        _row("c", "edit", "o", 0.2),
    ]
    lines = table.markdown(results).splitlines()
    assert lines[0].startswith("| task | (a) instruction-tuned | (b) single-task |")
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert "subject/unseen_paraphrase" not in cells
    assert cells["subject"] == ["0.80", "0.40", "0.20 |"]
    assert cells["average/in_domain"] == ["0.70", "", "0.20 |"]
    # On the specialists' tasks (subject, segmentation): (0.8+0.9)/2, (0.4+0.7)/2.
    assert cells["average/specialist_tasks"] == ["0.85", "0.55", "0.20 |"]
    assert cells["average/zero_shot"] == ["0.50", "", " |"]


def test_a_models_rows_are_its_own_setting_at_its_latest_step():
    from experiments import stage2_shapes

    config = stage2_shapes.get_config("smoke,simple")
    own = {
        "checkpoint_step": 9,
        "sampler": config.sample.sampler,
        "steps": config.sample.steps,
        "guidance": config.sample.guidance,
        "image_guidance": config.sample.image_guidance,
        "oscillate": False,
        "eval": "tasks",
        "tasks": None,
    }
    rows = [
        {**_row("a", "subject", "o", 0.8), **own},
        {**_row("a", "subject", "o", 0.1), **own, "steps": 10},  # a sweep's
        {**_row("a", "subject", "o", 0.2), **own, "checkpoint_step": 5},
        {**_row("a", "edit", "o", 0.6), "checkpoint_step": 9},  # older: no settings
    ]
    kept = table._own_rows(rows, config)
    assert [r["value"] for r in kept] == [0.8, 0.6]


def test_a_row_from_another_experiment_with_fields_set():
    from experiments import stage2_shapes

    row = {
        "row": "s1",
        "name": "stage1",
        "arg": "smoke",
        "minutes": 7,
        "init_from": "t2i",
        "experiment": "experiments/stage1_shapes.py",
        "config": {"model.context_level": -1, "data.object_weight": 9.0},
    }
    config = table._config(stage2_shapes.get_config, row, "runs")
    assert config.data.name == "shapes_world_retrieval"  # stage 1's, not stage 2's
    assert config.model.context_level == -1 and config.data.object_weight == 9.0
    assert config.init_from == "runs/t2i" and config.train.time_budget_minutes == 7.0
    with pytest.raises(ValueError, match="data.object_weights"):
        table._config(
            stage2_shapes.get_config,
            {**row, "config": {"data.object_weights": 9.0}},
            "runs",
        )


def test_every_row_of_the_cpu_table_builds_a_valid_config():
    from experiments import stage2_shapes
    from imagen_jax import config_utils

    trained_before = set()
    for row in stage2_shapes.table():
        if row.get("init_from"):  # a start the table trains first
            assert row["init_from"] in trained_before, row["name"]
        trained_before.add(row["name"])
        config_utils.validate(table._config(stage2_shapes.get_config, row, "runs"))
