"""The comparison table: headline scores per column and the averages."""

import math
import os
import shutil

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
        _row("a", "subject/unseen_paraphrase", "o", 0.1),
        _row("a", "segmentation/unseen_paraphrase", "score", 0.3),
        _row("a", "subject/unseen_paraphrase/sc", "o", 0.2),  # not a table row
        _row("a", "subject/text_only", "o", 0.2),  # not a table row
        _row("a", "average/in_domain", "o", 0.7),  # recomputed, not copied
        _row("b", "subject", "o", 0.4),
        _row("b", "segmentation", "score", 0.7),
        _row("b", "average/unseen_paraphrase", "o", 0.9),  # not (b)'s column
        _row("c", "subject", "o", 0.2),
        _row("c", "edit", "o", 0.2),
    ]
    lines = table.markdown(results).splitlines()
    assert lines[0].startswith("| task | (a) instruction-tuned | (b) single-task |")
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert "subject/text_only" not in cells
    assert "subject/unseen_paraphrase/sc" not in cells
    # Each task's unseen phrasings follow its row; their average is the
    # generation tasks' (subject), as the in-domain one.
    names = list(cells)
    assert names.index("subject/unseen_paraphrase") == names.index("subject") + 1
    assert cells["segmentation/unseen_paraphrase"] == ["0.30", "", " |"]
    assert cells["average/unseen_paraphrase"] == ["0.10", "", " |"]
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
        if row.get("init_from") or row.get("resume"):  # trained first
            assert table._parent(row) in trained_before, row["name"]
        trained_before.add(row["name"])
        config_utils.validate(table._config(stage2_shapes.get_config, row, "runs"))


def test_cpu_table_compares_its_models_at_equal_minutes_and_options():
    """(a) and (a) after stage 1 get the same minutes after the text start
    (issue 14 item 5: with and without stage 1 at the same compute), (c) the
    steps of (a) on (a)'s mixture, and every model after the start the same
    stage-2 options, evaluated with them."""
    import json

    from experiments import stage2_shapes
    from imagen_jax import config_utils

    rows = {row["name"]: row for row in stage2_shapes.table()}

    def minutes_after_start(name):
        row = rows[name]
        if row["init_from"] == "cpu_t2i":
            return row["minutes"]
        return row["minutes"] + minutes_after_start(row["init_from"])

    a = [r["name"] for r in rows.values() if r["row"] in ("a", "a_stage1")]
    assert len(a) == 2
    assert len({minutes_after_start(name) for name in a}) == 1
    (c,) = [r for r in rows.values() if r["row"] == "c"]
    assert c["steps"] == stage2_shapes.A_STEPS and c["minutes"] == 0
    assert c["arg"] == rows["cpu_instruct"]["arg"] + ",plain"
    # (a) and (c) continued, each to twice A_STEPS, on its own data.
    for name in ("cpu_instruct", "cpu_plain"):
        long = rows[f"{name}_long"]
        assert long["resume"] == name and long["arg"] == rows[name]["arg"]
        assert long["steps"] == 2 * stage2_shapes.A_STEPS and long["minutes"] == 0
    # A_STEPS are the steps of the (a) whose record the table carries.
    with open("docs/results/table/cpu_instruct.json") as f:
        carried = json.load(f)
    assert {r["checkpoint_step"] for r in carried["rows"]} == {stage2_shapes.A_STEPS}
    text = set()
    for row in rows.values():
        config = table._config(stage2_shapes.get_config, row, "runs")
        # every model reads its text as the start does (init_from needs the
        # start's embedding table)
        text.add(
            (config.text.tokenizer, config.text.vocab_path, config.data.max_text_len)
        )
        if row["row"] not in ("t2i", "stage1"):  # not the text start nor stage 1
            for field, value in stage2_shapes.RECIPE.items():
                assert config_utils._get(config, field) == value, (row["name"], field)
    assert len(text) == 1


def test_the_readme_command_trains_row_a():
    """`launch/instruct.sh` (the README's one command) is the table's (a):
    same minutes for the start and for stage 2, same options in training and
    evaluation."""
    import os
    import re

    from experiments import stage2_shapes

    path = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "instruct.sh")
    with open(path) as f:
        script = f.read()
    by_name = {row["name"]: row for row in stage2_shapes.table()}
    rows = {"t2i": by_name["cpu_t2i"], "a": by_name["cpu_instruct"]}
    for var, row in (("T2I_MINUTES", "t2i"), ("STAGE2_MINUTES", "a")):
        default = re.search(rf'{var}="\$\{{{var}:-(\d+)\}}"', script)
        assert default and int(default.group(1)) == rows[row]["minutes"], var
    # Every RECIPE field as its Python literal; the model's fields (the ones
    # evaluation needs as well) in MODEL.
    model = re.search(r"^MODEL=\((.*)\)$", script, re.M).group(1).split()
    for field, value in stage2_shapes.RECIPE.items():
        flag = f"--config.{field}={value!r}"
        assert flag in script, flag
        assert (flag in model) == field.startswith("model."), flag
    assert f'ARG="{rows["a"]["arg"]}"' in script
    assert f'T2I_ARG="{rows["t2i"]["arg"]}"' in script
    assert 'stage2_shapes.py:$T2I_ARG,minutes=$T2I_MINUTES"' in script
    # the vocabulary the `words` option reads is built before the first run
    built = script.index("launch.build_data --dataset vocabulary --variant simple")
    assert built < script.index("launch.train")
    assert 'stage2_shapes.py:$ARG,minutes=$STAGE2_MINUTES"' in script
    assert 'stage2_shapes.py:$ARG" --workdir' in script
    trained = script[script.index("stage2_shapes.py:$ARG,minutes") :]
    assert '"${RECIPE[@]}"' in trained[: trained.index("launch.eval")]
    assert 'RECIPE=("${MODEL[@]}"' in script
    assert '"${MODEL[@]}"' in script[script.index("launch.eval") :]


def test_the_parts_columns_differ_in_the_instructions_only():
    """(a) and (c) on "parts": the text start of "classify", RECIPE (no
    text-only pass), the same steps; (c) plain. The mixture is "classify"
    with the two reference-part tasks, whose raw texts are alike."""
    from experiments import stage2_shapes
    from imagen_jax.data import tasks

    rows = {row["name"]: row for row in stage2_shapes.table()}
    a, c = rows["cpu_parts_a"], rows["cpu_parts_c"]
    assert c["arg"] == a["arg"] + ",plain"
    assert a["arg"] == "simple,mix=parts,words"
    for row in (a, c):
        assert (row["init_from"], row["steps"], row["minutes"]) == (
            rows["cpu_instruct"]["init_from"],
            stage2_shapes.ROLES_STEPS,
            0,
        )
        assert row["config"] == {
            **stage2_shapes.RECIPE,
            "evals.tasks.text_only": False,
        }
        assert row["row"] in table.COLUMNS
        long = rows[row["name"] + "_long"]  # continued to twice the steps
        assert (long["resume"], long["arg"], long["config"]) == (
            row["name"],
            row["arg"],
            row["config"],
        )
        assert long["steps"] == 2 * row["steps"] and long["row"] in table.COLUMNS
        long3 = rows[row["name"] + "_long3"]  # and on to three times
        assert (long3["resume"], long3["config"]) == (long["name"], row["config"])
        assert long3["steps"] == 3 * row["steps"] and long3["row"] in table.COLUMNS
        # and anew from twice the steps, on the mixture with more of the parts
        focus = rows[row["name"].replace("parts", "parts_focus")]
        assert focus["init_from"] == long["name"] and focus["row"] in table.COLUMNS
        assert focus["arg"] == row["arg"].replace("mix=parts", "mix=parts_focus")
        assert focus["config"] == row["config"]
        assert focus["steps"] == stage2_shapes.PARTS_FOCUS_STEPS
        focus_long = rows[focus["name"] + "_long"]  # continued to twice that
        assert (focus_long["resume"], focus_long["arg"]) == (
            focus["name"],
            focus["arg"],
        )
        assert focus_long["steps"] == 2 * focus["steps"]
        assert focus_long["row"] in table.COLUMNS
        focus_long3 = rows[focus["name"] + "_long3"]  # and on to three times
        assert focus_long3["resume"] == focus_long["name"]
        assert focus_long3["steps"] == 3 * focus["steps"]
        assert focus_long3["row"] in table.COLUMNS
        focus_long4 = rows[focus["name"] + "_long4"]  # and on to four times
        assert focus_long4["resume"] == focus_long3["name"]
        assert focus_long4["steps"] == 4 * focus["steps"]
        assert focus_long4["row"] in table.COLUMNS
        # and the focus legs again, the text encoder at a tenth of the LR
        # after the first of them
        sched = rows[focus["name"].replace("parts_focus", "parts_focus_sched")]
        assert {
            k: v for k, v in sched.items() if k not in ("row", "name", "config")
        } == {k: v for k, v in focus.items() if k not in ("row", "name", "config")}
        assert sched["config"] == {
            **focus["config"],
            "optim.text_lr_scale": 0.1,
            "optim.text_full_lr_steps": focus["steps"],
        }
        for times, suffix in ((2, "_long"), (3, "_long3"), (4, "_long4")):
            later = rows[sched["name"] + suffix]
            assert later["steps"] == times * focus["steps"]
            assert later["config"] == sched["config"] and later["row"] in table.COLUMNS
        assert rows[sched["name"] + "_long4"]["resume"] == sched["name"] + "_long3"
    parts = stage2_shapes.MIXTURES["parts"]
    extra = {
        n: w for n, w in parts.items() if n not in stage2_shapes.MIXTURES["classify"]
    }
    assert set(extra) == {"reference_objects", "reference_style"}
    assert set(extra) <= set(tasks.OPT_IN_TASKS)
    for name, weight in stage2_shapes.MIXTURES["classify"].items():
        assert parts[name] == weight
    cfg = stage2_shapes.get_config(a["arg"])
    assert dict(cfg.data.mixture) == parts and not cfg.data.plain_text
    focus = stage2_shapes.MIXTURES["parts_focus"]
    assert {n: w for n, w in focus.items() if n not in extra} == {
        n: w for n, w in parts.items() if n not in extra
    }
    assert sum(focus[n] for n in extra) / sum(focus.values()) == pytest.approx(0.375)
    assert stage2_shapes.get_config(c["arg"]).data.plain_text


def test_the_role_columns_differ_in_the_instructions_only():
    """(a) and (c) on "roles": same start, fields and minutes; (c) plain; both
    score role transfer, which only a model trained on it is asked."""
    from experiments import stage2_shapes
    from imagen_jax.data import tasks
    from imagen_jax.evaluation import evaluate

    rows = {row["name"]: row for row in stage2_shapes.table()}
    a, c = rows["cpu_roles_a"], rows["cpu_roles_c"]
    assert c["arg"] == a["arg"] + ",plain"
    assert (a["config"], a["minutes"], a["init_from"]) == (
        c["config"],
        c["minutes"],
        c["init_from"],
    )

    def origin(row):  # what a column trains on, from which run, for how long
        return row["arg"], table._parent(row), row["steps"]

    for row in (a, c):  # continued to twice the steps on their own data
        long = rows[row["name"] + "_long"]
        assert (long["resume"], long["arg"], long["config"]) == (
            row["name"],
            row["arg"],
            row["config"],
        )
        assert long["steps"] == 2 * stage2_shapes.ROLES_STEPS
        # the same from the start at three tenths of the text LR, step-matched
        lr03 = rows[row["name"].replace("roles", "roles03")]
        assert origin(lr03) == (row["arg"], row["init_from"], stage2_shapes.ROLES_STEPS)
        assert lr03["config"] == {**row["config"], "optim.text_lr_scale": 0.3}
        long03 = rows[lr03["name"] + "_long"]
        assert (long03["resume"], long03["config"], long03["steps"]) == (
            lr03["name"],
            lr03["config"],
            long["steps"],
        )
    # (a) and (c) from the start, the text encoder at the full LR for a
    # quarter of the long columns' steps, then as in "a_roles" / "c_roles"
    for row in (a, c):
        sched = rows[row["name"].replace("roles", "roles_sched")]
        assert origin(sched) == (
            row["arg"],
            row["init_from"],
            2 * stage2_shapes.ROLES_STEPS,
        )
        quarter = math.ceil(sched["steps"] / 4)
        assert sched["config"] == {
            **row["config"],
            "optim.text_full_lr_steps": quarter,
        }
        # continued to three times the steps, the schedule unchanged
        sched_long = rows[sched["name"] + "_long"]
        assert origin(sched_long) == (
            row["arg"],
            sched["name"],
            3 * stage2_shapes.ROLES_STEPS,
        )
        assert sched_long["resume"] == sched["name"]
        assert sched_long["config"] == sched["config"]
        # and from the x0.1 model, the text encoder at the full LR for as many
        # steps again (the reverse order), the rest of the recipe kept
        rev = rows[row["name"].replace("roles", "roles_rev")]
        assert origin(rev) == (row["arg"], row["name"], stage2_shapes.ROLES_STEPS)
        assert rev["config"] == {**row["config"], "optim.text_lr_scale": 1.0}
    start = rows[a["init_from"]]
    assert start["row"] == "t2i" and start["config"].items() <= a["config"].items()
    for row in (a, c):
        config = table._config(stage2_shapes.get_config, row, "runs")
        assert config.text.relative_attention_init_scale == 10.0
        assert config.optim.text_lr_scale == 0.1 and config.model.context_marker
        scored = evaluate._runs(config.evals.tasks, tasks, config.data.mixture)[0][0]
        assert {"role_transfer", "role_transfer_told"} <= set(scored)


def test_each_column_states_its_training_compute():
    def trained(model_row, model, minutes, step):
        return {
            **_row(model_row, "subject", "o", 0.5),
            "model": model,
            "minutes_after_start": minutes,
            "checkpoint_step": step,
        }

    results = [
        trained("a", "cpu_instruct", 55.0, 3144),
        trained("b", "cpu_single_subject", 20.0, 909),
        {**trained("b", "cpu_single_edit", 20.0, 1117), "task": "edit"},
        trained("c", "cpu_plain", 55.0, 3300),
    ]
    last = table.markdown(results).splitlines()[-1]
    assert last == (
        "| training after the start: min (steps) | 55 (3144) | 20 each (909-1117)"
        " | 55 (3300) |"
    )
    # Stage 1's minutes count toward the model trained after it; the start's do not.
    from experiments import stage2_shapes

    rows = stage2_shapes.table()
    by_row = {r["row"]: r for r in rows}
    assert table._minutes_after_start(rows, by_row["a_stage1"]) == 55.0
    assert table._minutes_after_start(rows, by_row["t2i"]) == 0.0
    # A model started anew from another (init_from) counts that one's steps
    # too; a resumed one's count already holds them; the start's never count.
    by_name = {r["name"]: r for r in rows}
    steps = {"cpu_t2i_pos": 9000, "cpu_roles_a": 2717, "cpu_stage1": 500}
    assert table._steps_before(rows, by_name["cpu_roles_rev_a"], steps) == 2717
    assert table._steps_before(rows, by_name["cpu_roles_a_long"], steps) == 0
    assert table._steps_before(rows, by_name["cpu_roles_a"], steps) == 0
    assert table._steps_before(rows, by_row["a_stage1"], steps) == 500
    assert table._steps_before(rows, by_name["cpu_roles_rev_c"], steps) is None
    rev = {**trained("a_roles_rev", "cpu_roles_rev_a", 0.0, 2717)}
    last = table.markdown([{**rev, "steps_after_start": 5434}]).splitlines()[-1]
    assert last == "| training after the start: min (steps) | - (5434) |"


def test_untrained_models_stop_the_table_or_are_left_out(tmp_path, capsys):
    from experiments import stage2_shapes

    rows = [r for r in stage2_shapes.table() if r["row"] in ("a", "c")]
    with pytest.raises(FileNotFoundError, match="cpu_instruct holds no finished"):
        table.run(stage2_shapes.get_config, rows, str(tmp_path))
    assert (
        table.run(stage2_shapes.get_config, rows, str(tmp_path), skip_missing=True)
        == []
    )
    assert "skipping cpu_plain" in capsys.readouterr().out
    assert (tmp_path / "table" / "results.md").exists()


def test_models_of_earlier_sessions_are_carried_by_their_records(tmp_path, capsys):
    import json

    from experiments import stage2_shapes

    rows = [r for r in stage2_shapes.table() if r["row"] in ("t2i", "a", "c")]
    entry = {r["row"]: r for r in rows}["a"]
    scored = {**_row("a", "subject", "o", 0.8), "model": "cpu_instruct"}
    carry = tmp_path / "carry"
    table._write_record(entry, [scored], str(carry / "."))
    record = json.loads((carry / "cpu_instruct.json").read_text())
    assert record["entry"] == table.as_json(entry) and record["rows"] == [scored]
    assert record["machine"] and record["date"]

    runs = str(tmp_path / "runs")
    results = table.run(
        stage2_shapes.get_config, rows, runs, skip_missing=True, carry=str(carry)
    )
    assert results == [scored]  # (a) carried; the start and (c) have nothing
    out = capsys.readouterr().out
    assert "cpu_instruct: carried from" in out and "skipping cpu_plain" in out
    with pytest.raises(FileNotFoundError, match="cpu_plain holds no finished training"):
        table.run(stage2_shapes.get_config, rows[1:], runs, carry=str(carry))

    # A record made for another entry (here other minutes) is refused.
    record["entry"]["minutes"] = 30
    (carry / "cpu_instruct.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="cpu_instruct.json was made for the table"):
        table.run(stage2_shapes.get_config, rows[1:], runs, carry=str(carry))


def test_only_some_models_and_their_starts_are_trained(tmp_path, capsys, monkeypatch):
    from experiments import stage2_shapes
    from imagen_jax import train
    from imagen_jax.data import vocabulary
    from imagen_jax.evaluation import sweep

    rows = stage2_shapes.table()
    names = [r["name"] for r in table.select(rows, ["b", "cpu_instruct_stage1"])]
    specialists = [r["name"] for r in rows if r["row"] == "b"]
    # Stage 1 comes along as the start of (a) after stage 1, and the text start.
    assert names == ["cpu_t2i", "cpu_stage1", "cpu_instruct_stage1", *specialists]
    assert table.select(rows, []) == rows
    with pytest.raises(ValueError, match=r"no table row or run named \['d'\]"):
        table.select(rows, ["d"])

    trained, evaluated = [], []
    monkeypatch.setattr(
        train,
        "train_and_evaluate",
        lambda config, workdir, **_: trained.append(workdir),
    )

    def evaluate(config, workdir):  # no rows: the stub trained nothing
        evaluated.append(workdir)
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
            f.write("[]")

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    built = []
    monkeypatch.setattr(
        vocabulary, "build", lambda data_dir, world: built.append((data_dir, world))
    )
    monkeypatch.chdir(tmp_path)  # a new machine: no data/vocab
    # (stage 1's rows name their experiment file relative to the checkout)
    rows = [r for r in rows if not r.get("experiment")]
    runs = tmp_path / "runs"
    # Training only: nothing is scored and no table is written.
    assert (
        table.run(
            stage2_shapes.get_config,
            rows,
            str(runs),
            train_missing=True,
            only=["c"],
            evaluate=False,
        )
        == []
    )
    assert trained == [str(runs / "cpu_t2i"), str(runs / "cpu_plain")]
    assert evaluated == [] and not (runs / "table").exists()
    # The world's word pieces are built before a training that reads them
    # (the stub writes no file, so before each).
    assert built == [(os.path.join("data", "vocab"), "simple")] * 2
    # ... and not again once they are there.
    (tmp_path / "data" / "vocab").mkdir(parents=True)
    (tmp_path / "data" / "vocab" / "shapes_simple.model").write_bytes(b"")
    trained.clear()
    table.run(stage2_shapes.get_config, rows, str(runs), train_missing=True, only=["c"])
    assert len(built) == 2
    assert trained == [str(runs / "cpu_t2i"), str(runs / "cpu_plain")]
    # Only (c)'s start and then (c) were trained, and (c) evaluated; (a) and
    # the rest were left out.
    assert evaluated == [str(runs / "cpu_plain")]
    assert "skipping cpu_instruct:" in capsys.readouterr().out
    assert (runs / "table" / "models" / "cpu_plain.json").exists()

    # A trained model not named is not evaluated (another job may be scoring
    # it): with its evaluation gone, it is left out.
    os.remove(runs / "cpu_plain" / "eval" / "results.json")
    monkeypatch.setattr(table, "_trained", lambda workdir, steps=0: True)
    monkeypatch.setattr(table, "_check_same_model", lambda *_: None)
    evaluated.clear()
    results = table.run(stage2_shapes.get_config, rows, str(runs), only=["t2i"])
    assert evaluated == [] and results == []
    assert "leaving out cpu_plain: not evaluated" in capsys.readouterr().out

    # A named model is scored; the column it starts from is trained along but
    # not scored (nor carried into the table) unless it is named too.
    parts = ["cpu_t2i", "cpu_parts_a", "cpu_parts_a_long"]
    parts = [r for r in stage2_shapes.table() if r["name"] in parts]
    table.run(stage2_shapes.get_config, parts, str(runs), only=["a_parts_long"])
    assert evaluated == [str(runs / "cpu_parts_a_long")]
    assert "leaving out cpu_parts_a: not evaluated" in capsys.readouterr().out
    evaluated.clear()
    table.run(
        stage2_shapes.get_config, parts, str(runs), only=["a_parts", "a_parts_long"]
    )
    assert evaluated == [str(runs / "cpu_parts_a"), str(runs / "cpu_parts_a_long")]


def test_the_table_reads_the_scores_after_its_trainings(tmp_path, monkeypatch):
    """A model scored again by another job while this one trains shows its
    new rows in this job's table and record, not those read before."""
    import json

    from experiments import stage2_shapes
    from imagen_jax import train
    from imagen_jax.evaluation import sweep

    names = ("cpu_t2i", "cpu_instruct", "cpu_plain")
    rows = [r for r in stage2_shapes.table() if r["name"] in names]
    runs = tmp_path / "runs"

    def scores(name, value):
        os.makedirs(runs / name / "eval", exist_ok=True)
        row = {"task": "subject", "metric": "o", "value": value, "checkpoint_step": 0}
        with open(runs / name / "eval" / "results.json", "w") as f:
            json.dump([row], f)

    scores("cpu_instruct", 0.1)  # (a) trained and scored before
    monkeypatch.setattr(
        table, "_trained", lambda workdir, steps=0: not workdir.endswith("cpu_plain")
    )
    monkeypatch.setattr(table, "_check_same_model", lambda *_: None)
    # While (c) trains, another job scores (a) again.
    monkeypatch.setattr(
        train, "train_and_evaluate", lambda *_, **__: scores("cpu_instruct", 0.9)
    )
    monkeypatch.setattr(
        sweep, "evaluate", lambda config, workdir: scores("cpu_plain", 0.5)
    )
    results = table.run(
        stage2_shapes.get_config, rows, str(runs), train_missing=True, only=["c"]
    )
    assert {r["model"]: r["value"] for r in results} == {
        "cpu_instruct": 0.9,
        "cpu_plain": 0.5,
    }
    with open(runs / "table" / "models" / "cpu_instruct.json") as f:
        assert [r["value"] for r in json.load(f)["rows"]] == [0.9]


def test_a_run_directory_of_another_model_is_refused(tmp_path, monkeypatch):
    import json

    from experiments import stage2_shapes
    from imagen_jax import checkpointing
    from imagen_jax.evaluation import sweep

    rows = [r for r in stage2_shapes.table() if r["row"] == "c"]
    runs = str(tmp_path)
    workdir = os.path.join(runs, "cpu_plain")
    monkeypatch.setattr(table, "_trained", lambda workdir, steps=0: True)
    monkeypatch.setattr(sweep, "evaluate", lambda config, workdir: None)
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
        f.write("[]")

    # The row's own config (a budget of its own is no difference) is used.
    config = table._config(stage2_shapes.get_config, rows[0], runs)
    config.train.time_budget_minutes = 7.0
    checkpointing.save_config(workdir, config)
    assert table.run(stage2_shapes.get_config, rows, runs) == []
    # A run older than a field the table leaves off is the same model too.
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    del saved["model"]["context_norm"]
    with open(path, "w") as f:
        json.dump(saved, f)
    assert table.run(stage2_shapes.get_config, rows, runs) == []

    # A run left from an earlier table, on another mixture, is not.
    config.data.mixture = {"subject": 1.0}
    config.model.context_level = -1
    checkpointing.save_config(workdir, config)
    with pytest.raises(ValueError, match="holds another model") as raised:
        table.run(stage2_shapes.get_config, rows, runs)
    said = str(raised.value)
    assert "data.mixture.subject: trained 1.0" in said
    assert "model.context_level: trained -1, the table asks -2" in said
    assert "data.variant" not in said and "data.plain_text" not in said


def test_the_committed_records_match_the_table_they_stand_in_for():
    import glob
    import json

    from experiments import stage2_shapes

    entries = {r["name"]: r for r in stage2_shapes.table()}
    paths = sorted(glob.glob("docs/results/table/*.json"))
    assert paths, "docs/results/table holds the records that --carry reads"
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        name = os.path.basename(path)[: -len(".json")]
        # A record whose entry is no longer the table's would be refused by
        # --carry: retrain the model or remove the record.
        assert record["entry"] == table.as_json(entries[name]), path
        assert {r["model"] for r in record["rows"]} == {name}, path
        assert {r["row"] for r in record["rows"]} == {entries[name]["row"]}, path


def test_specialists_trained_to_a_step_count_get_their_own_column():
    results = [
        _row("a", "subject", "o", 0.8),
        _row("a", "edit", "o", 0.6),
        _row("b", "subject", "o", 0.9),
        _row("b_steps", "subject", "o", 0.3),
        _row("b_steps", "zero_shot/multi_subject", "o", 0.1),  # not averaged
    ]
    for r, model in zip(results, ("a", "a", "b", "m", "m")):
        r.update(model=model, minutes_after_start=0.0 if model == "m" else 20.0)
        r["checkpoint_step"] = 147 if model == "m" else 900
    lines = table.markdown(results).splitlines()
    assert lines[0].endswith(
        "| (b) single-task | (b) single-task, (a)'s steps per task |"
    )
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert cells["subject"] == ["0.80", "0.90", "0.30 |"]
    # Like (b), the column is averaged over the specialists' tasks only.
    assert cells["average/in_domain"] == ["0.70", "", " |"]
    assert cells["average/specialist_tasks"] == ["0.80", "0.90", "0.30 |"]
    assert lines[-1].endswith("| 20 (900) | 20 (900) | - (147) |")


def test_step_matched_specialists_get_their_tasks_share_of_a_steps():
    from experiments import stage2_shapes

    rows = stage2_shapes.table()
    mixture = stage2_shapes.MIXTURES[stage2_shapes.MATCHED_MIXTURE]
    matched = [r for r in rows if r["row"] == "b_steps"]
    assert {r["arg"] for r in matched} == {r["arg"] for r in rows if r["row"] == "b"}
    for row in matched:
        task = row["arg"].split("task=")[1].split(",")[0]
        share = mixture[task] / sum(mixture.values())
        assert abs(row["steps"] - stage2_shapes.MATCHED_STEPS * share) <= 0.5
        config = table._config(stage2_shapes.get_config, row, "runs")
        assert config.train.num_steps == row["steps"]
        assert config.train.time_budget_minutes == 0.0


def test_parts_matched_specialists_get_their_tasks_share_of_the_parts_a_steps():
    from experiments import stage2_shapes

    rows = {row["name"]: row for row in stage2_shapes.table()}
    long3 = rows["cpu_parts_focus_a_long3"]
    # the legs are the mixtures and steps of the parts_focus (a) that they match
    ((first, first_steps), (focus, focus_steps)) = stage2_shapes.PARTS_FOCUS_LEGS
    start = rows[rows["cpu_parts_focus_a"]["init_from"]]
    assert (first, first_steps) == ("parts", start["steps"])
    assert focus == "parts_focus" and focus_steps == long3["steps"]
    assert f"mix={focus}" in long3["arg"]
    matched = [r for r in rows.values() if r["row"] == "b_parts_steps"]
    assert {r["arg"] for r in matched} == {
        r["arg"] for r in rows.values() if r["row"] == "b"
    }
    assert "b_parts_steps" in table.SINGLE and "b_parts_steps" in table.COLUMNS
    for row in matched:
        task = row["arg"].split("task=")[1].split(",")[0]
        spent = sum(
            steps
            * stage2_shapes.MIXTURES[m][task]
            / sum(stage2_shapes.MIXTURES[m].values())
            for m, steps in stage2_shapes.PARTS_FOCUS_LEGS
        )
        assert abs(row["steps"] - spent) <= 0.5
        # from the parts columns' own start, with their recipe
        assert row["init_from"] == rows["cpu_parts_a"]["init_from"]
        assert row["config"] == rows["cpu_parts_a"]["config"]
    assert rows["cpu_parts_matched_subject"]["steps"] == 1565


def test_a_continued_run_starts_from_a_copy_of_its_runs_checkpoints(
    tmp_path, capsys, monkeypatch
):
    import numpy as np

    from experiments import stage2_shapes
    from imagen_jax import checkpointing, train
    from imagen_jax.evaluation import sweep

    rows = stage2_shapes.table()
    assert [r["name"] for r in table.select(rows, ["a_long"])] == [
        "cpu_t2i",
        "cpu_instruct",
        "cpu_instruct_long",
    ]
    # Its minutes are not stated: it trains to a number of steps.
    by_name = {r["name"]: r for r in rows}
    assert table._minutes_after_start(rows, by_name["cpu_instruct_long"]) == 0.0

    runs = tmp_path / "runs"
    chosen = [by_name["cpu_instruct"], by_name["cpu_instruct_long"]]

    def evaluate(config, workdir):  # no rows
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
            f.write("[]")

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    seen = []

    def train_and_evaluate(config, workdir, **_):
        held = os.path.isdir(os.path.join(workdir, "checkpoints"))
        seen.append((workdir, checkpointing.all_steps(workdir) if held else []))
        checkpointing.save_config(workdir, config)
        if not seen[1:]:  # the run it continues: one small checkpoint
            mngr = checkpointing.manager(workdir + "/checkpoints")
            checkpointing.save(mngr, 7, {"w": np.arange(3.0)}, None)
            mngr.wait_until_finished()
        assert config.train.num_steps == by_name[os.path.basename(workdir)].get(
            "steps", config.train.num_steps
        )

    monkeypatch.setattr(train, "train_and_evaluate", train_and_evaluate)
    # Without the run it continues, the table stops and says so.
    with pytest.raises(FileNotFoundError, match="cpu_instruct holds no checkpoint to"):
        table.run(stage2_shapes.get_config, chosen[1:], str(runs), train_missing=True)
    table.run(stage2_shapes.get_config, chosen, str(runs), train_missing=True)
    # The continued run's directory held the other's checkpoint when it trained.
    assert seen == [
        (str(runs / "cpu_instruct"), []),
        (str(runs / "cpu_instruct_long"), [7]),
    ]
    assert "== continuing" in capsys.readouterr().out
    # Stopped before its steps (it holds only the copied step), it trains again.
    (runs / "cpu_instruct_long" / "eval" / "results.json").unlink()
    table.run(stage2_shapes.get_config, chosen, str(runs), train_missing=True)
    assert seen[2:] == [(str(runs / "cpu_instruct_long"), [7])]


def test_the_averages_state_their_standard_error_when_every_task_has_one():
    """The tasks' examples are drawn apart, so the error of a mean over k
    tasks is the root of the summed squares over k; a column with a task
    of unknown error (a record written before the errors were) shows none."""
    results = [
        {**_row("a", "subject", "o", 0.8), "se": 0.03},
        {**_row("a", "edit", "o", 0.6), "se": 0.04},
        {**_row("c", "subject", "o", 0.2), "se": 0.03},
        _row("c", "edit", "o", 0.2),
    ]
    cells = {
        line.split(" | ")[0][2:]: line.split(" | ")[1:]
        for line in table.markdown(results).splitlines()[2:]
    }
    assert cells["average/in_domain"] == ["0.70 ±0.03", "0.20 |"]  # 0.05 / 2
    assert cells["subject"] == ["0.80", "0.20 |"]  # a task's own row: no error


def test_paired_differences_rest_on_the_same_examples(tmp_path):
    """(a) - (c) per average is the difference of the averages, its error
    that of the examples' differences: scores that rise and fall together on
    the same examples differ by less than either varies."""
    import json

    import numpy as np

    def scored(row, task, metric, values):
        return {
            **_row(row, task, metric, float(np.mean(values))),
            "per_example": values,
        }

    a_subject, c_subject = [1.0, 0.0, 1.0, 0.5], [0.75, 0.0, 0.75, 0.25]
    results = [
        scored("a_long", "subject", "o", a_subject),
        scored("a_long", "edit", "o", [0.5, 0.5, 1.0, 0.0]),
        scored("a_long", "segmentation", "score", [1.0, 1.0, 0.5, 1.0]),
        scored("a_long", "zero_shot/multi_subject", "o", [0.0, 1.0, 0.0, 0.0]),
        scored("c_long", "subject", "o", c_subject),
        scored("c_long", "edit", "o", [0.5, 0.0, 1.0, 0.0]),
        scored("c_long", "segmentation", "score", [0.0, 1.0, 0.5, 0.0]),
        _row("c_long", "zero_shot/multi_subject", "o", 0.0),  # no examples' values
        scored("b", "subject", "o", [1.0, 1.0, 1.0, 0.5]),
        scored("b", "segmentation", "score", [1.0, 1.0, 1.0, 1.0]),
        scored("a", "subject", "o", [1.0, 1.0]),  # no (c) column "c"
    ]
    got = {(d["first"], d["second"], d["task"]): d for d in table.differences(results)}
    in_domain = got[("a_long", "c_long", "average/in_domain")]
    # subject +0.1875 (each example +0.25 or 0: se 0.0625), edit +0.125
    assert in_domain["value"] == pytest.approx((0.1875 + 0.125) / 2)
    se_subject = np.std(np.subtract(a_subject, c_subject), ddof=1) / 2
    se_edit = np.std([0.0, 0.5, 0.0, 0.0], ddof=1) / 2
    assert in_domain["se"] == pytest.approx(np.hypot(se_subject, se_edit) / 2)
    assert se_subject < np.std(a_subject, ddof=1) / 2  # less than unpaired
    # a task without the examples' values leaves its average out
    assert ("a_long", "c_long", "average/zero_shot") not in got
    # (a) against a specialist column: its tasks only
    special = got[("a_long", "b", "average/specialist_tasks")]
    assert special["value"] == pytest.approx(((0.625 - 0.875) + (0.875 - 1.0)) / 2)
    assert [k for k in got if k[1] == "b" and k[0] == "a_long"] == [
        ("a_long", "b", "average/specialist_tasks")
    ]
    assert ("a_long", "b", "average/in_domain") not in got
    # shown in the table's markdown, below the columns
    text = table.markdown(results)
    line = next(x for x in text.splitlines() if x.startswith("| a_long - c_long |"))
    assert f"{in_domain['value']:+.3f} ±{in_domain['se']:.3f}" in line
    # written beside the table it shows (computed once for both)
    assert table.write(results, str(tmp_path / "out")) == text
    assert (tmp_path / "out" / "results.md").read_text() == text
    stored = json.loads((tmp_path / "out" / "differences.json").read_text())
    assert stored == json.loads(json.dumps(table.differences(results)))


def test_a_preempted_model_stops_the_table_and_an_earlier_evaluation_is_redone(
    tmp_path, monkeypatch
):
    import json

    import numpy as np

    from experiments import stage2_shapes
    from imagen_jax import checkpointing, preemption, train
    from imagen_jax.evaluation import sweep

    rows = [r for r in stage2_shapes.table() if r["row"] == "c"]
    runs = str(tmp_path)
    workdir = os.path.join(runs, "cpu_plain")
    config = table._config(stage2_shapes.get_config, rows[0], runs)
    evaluated = []

    def evaluate(config, workdir):  # one row at the latest step
        evaluated.append(workdir)
        step = checkpointing.all_steps(workdir)[-1]
        (unit,) = sweep.units(config, [{}], [step])
        row = {**unit, "task": "subject", "metric": "o", "value": 0.5, "n": 1}
        with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
            json.dump([row], f)

    trainings = []

    def preempted(config, workdir, raise_on_preemption=False):
        assert raise_on_preemption  # the table must not take it for trained
        trainings.append(workdir)
        stopped = train.Preempted(5, "preempted (SIGTERM)")
        preemption.mark(workdir, str(stopped))  # as train_and_evaluate does
        raise stopped

    checkpointing.save_config(workdir, config)
    mngr = checkpointing.manager(os.path.join(workdir, "checkpoints"))

    def save(step):
        checkpointing.save(mngr, step, {"w": np.arange(3.0)}, None)
        mngr.wait_until_finished()

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    monkeypatch.setattr(train, "train_and_evaluate", preempted)
    save(5)  # what the preempted training left
    # Run again and again, its step 5 is not taken for the finished model: it
    # is trained on each time, with a step budget or a minutes one.
    for budget in ({}, {}, {"steps": 0, "minutes": 1}):
        again = [{**r, **budget} for r in rows]
        with pytest.raises(SystemExit, match="cpu_plain preempted .SIGTERM. at step 5"):
            table.run(stage2_shapes.get_config, again, runs, train_missing=True)
    assert trainings == [workdir] * 3 and evaluated == []
    # Short of its step budget, a run is not finished even without the marker.
    os.remove(os.path.join(workdir, preemption.MARKER))
    with pytest.raises(FileNotFoundError, match="holds no finished training"):
        table.run(stage2_shapes.get_config, rows, runs)
    # A training that ends (and takes the marker away) is evaluated.
    open(os.path.join(workdir, preemption.MARKER), "w").close()
    finished = lambda _, workdir, **k: preemption.mark(workdir, None)  # noqa: E731
    monkeypatch.setattr(train, "train_and_evaluate", finished)
    os.makedirs(os.path.join(workdir, "eval"))
    table.run(stage2_shapes.get_config, rows, runs, train_missing=True)
    assert evaluated == [workdir]
    shutil.rmtree(workdir)
    evaluated.clear()
    checkpointing.save_config(workdir, config)
    mngr = checkpointing.manager(os.path.join(workdir, "checkpoints"))

    # Trained on after its evaluation (step 3 -> 7): evaluated again.
    rows = [{**r, "steps": 7} for r in rows]
    save(3)
    os.makedirs(os.path.join(workdir, "eval"))
    evaluate(config, workdir)
    save(7)
    assert evaluated == [workdir]
    results = table.run(stage2_shapes.get_config, rows, runs)
    assert evaluated == [workdir, workdir]
    assert {r["checkpoint_step"] for r in results} == {7}
