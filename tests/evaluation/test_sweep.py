"""Evaluation sweeps: cells, resuming a killed sweep, the results file, report."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from experiments import stage1_shapes, stage2_shapes, t2i_shapes
from imagen_jax.evaluation import evaluate, report, sweep
from tests.child_env import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_product_is_the_grid_of_its_axes():
    cells = sweep.product(sampler=["ddim", "dpmpp_2m"], steps=[10, 20], guidance=3.0)
    assert len(cells) == 4
    assert cells[0] == {"sampler": "ddim", "steps": 10, "guidance": 3.0}
    assert cells[-1] == {"sampler": "dpmpp_2m", "steps": 20, "guidance": 3.0}


def test_units_resolve_checkpoints_and_record_every_setting():
    config = stage2_shapes.get_config("smoke,simple,t2i")
    cells = [
        {"checkpoint": "all", "sampler": "dpmpp_2m", "steps": 10},
        {"checkpoint": 20, "sampler": "dpmpp_2m", "steps": 10},  # a repeat
        {"tasks": "text_to_image", "guidance": 5, "image_guidance": 2.0},
    ]
    units = sweep.units(config, cells, [10, 20])
    assert [(u["checkpoint_step"], u["eval"]) for u in units] == [
        (10, "held_out"),
        (10, "tasks"),
        (20, "held_out"),
        (20, "tasks"),
        (20, "held_out"),  # latest, at another guidance
        (20, "tasks"),
    ]
    last = units[-1]
    assert set(last) == set(sweep.SETTINGS)
    assert last["tasks"] == ["text_to_image"] and last["guidance"] == 5.0
    assert last["image_guidance"] == 2.0 and last["oscillate"] is False
    assert last["sampler"] == config.sample.sampler
    assert units[-2]["tasks"] is None  # names apply to "tasks" evaluators only


@pytest.mark.parametrize(
    "cell, match",
    [
        ({"sampler": "euler"}, "sampler='euler'"),
        ({"steps": 0}, "steps=0"),
        ({"guidance": "high"}, "guidance='high'; expected a number"),
        ({"checkpoint": 7}, r"saved \[10, 20\]"),
        ({"checkpoint": "first"}, "'latest' or 'all'"),
        ({"guidence": 3.0}, r"unknown keys \['guidence'\]"),
        ({"evals": ["nope"]}, "config.evals has"),
        ({"tasks": ["subjekt"]}, "unknown tasks"),
    ],
)
def test_bad_cells_are_named(cell, match):
    config = stage2_shapes.get_config("smoke,simple,t2i")
    with pytest.raises(ValueError, match=match):
        sweep.units(config, [cell], [10, 20])


def test_every_sweep_of_the_experiment_files_is_valid():
    experiments = [
        (t2i_shapes, "smoke"),
        (stage2_shapes, "smoke,simple"),
        (stage1_shapes, "smoke"),
    ]
    for module, arg in experiments:
        config = module.get_config(arg)
        for name, cells in module.sweeps().items():
            assert sweep.units(config, cells, [5, 9]), name


def test_a_failed_write_leaves_the_results_file_whole(tmp_path):
    path = str(tmp_path / "results.json")
    sweep.save_rows([{"task": "a", "value": 1.0}], path)
    with pytest.raises(TypeError):
        sweep.save_rows([{"task": "b", "value": object()}], path)
    assert sweep.load_rows(path) == [{"task": "a", "value": 1.0}]
    with open(path, "w") as f:
        f.write('[{"task": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        sweep.load_rows(path)


def _rows():
    """Rows of a synthetic sweep: 2 samplers x 2 step counts x 2 guidances at
    2 checkpoints, with a task average and a distribution score."""
    rows = []
    for cell in sweep.product(
        checkpoint_step=[100, 200],
        sampler=["ddim", "dpmpp_2m"],
        steps=[10, 50],
        guidance=[2.0, 4.0],
    ):
        settings = {
            **cell,
            "image_guidance": 1.0,
            "oscillate": False,
            "eval": "tasks",
            "tasks": None,
        }
        score = cell["steps"] / 100 + cell["guidance"] / 10 + cell["checkpoint_step"]
        rows += [
            {"task": "average/in_domain", "metric": "o", "value": score / 1e3},
            {"task": "subject", "metric": "o", "value": 0.5},
            {"task": "tasks", "metric": "fid", "value": 10.0 - score / 1e3},
            {"task": "tasks", "metric": "kid", "value": None, "note": "none"},
        ]
        rows[-4:] = [{**r, **settings, "n": 8, "grids": "sweep/x"} for r in rows[-4:]]
    return rows


def test_report_tables_plots_and_html(tmp_path):
    out = str(tmp_path)
    os.makedirs(os.path.join(out, "sweep", "x", "tasks"))
    for name in ("tasks.png", "tasks/subject.png"):
        Image.new("RGB", (8, 8)).save(os.path.join(out, "sweep", "x", name))
    rows = _rows()
    legacy = {"task": "subject", "metric": "o", "value": 0.1, "n": 8}
    paths = report.write([legacy, *rows], out)
    assert [os.path.basename(p) for p in paths["plots"]] == [
        "vs_guidance.png",
        "vs_steps.png",
        "vs_training.png",
    ]
    for path in paths["plots"]:
        assert Image.open(path).size[0] > 300
    header, lines = report.pivot(rows)
    assert header[-3:] == ["average/in_domain o", "tasks fid", "tasks kid"]
    assert len(lines) == 16 and "subject o" not in header  # averages only
    with open(paths["markdown"]) as f:
        text = f.read()
    assert "| 200 | dpmpp_2m | 50 | 4 | 1 | no |" in text
    with open(paths["html"]) as f:
        page = f.read()
    for src in ("plots/vs_steps.png", "sweep/x/tasks.png", "sweep/x/tasks/subject.png"):
        assert f'"{src}"' in page and os.path.exists(os.path.join(out, src))


def _steps_rows(fill: dict, n: int = 100) -> list[dict]:
    """Held-out rows of a fewer-steps sweep at checkpoint 5: colour 0.5
    everywhere, fill per (sampler, steps) from `fill`."""
    base = {
        "checkpoint_step": 5,
        "guidance": 3.0,
        "image_guidance": 1.0,
        "oscillate": False,
        "eval": "held_out",
        "tasks": None,
        "n": n,
    }
    rows = []
    for (sampler, steps), value in fill.items():
        cell = {**base, "sampler": sampler, "steps": steps}
        rows += [
            {**cell, "task": "held_out", "metric": "colour", "value": 0.5},
            {**cell, "task": "held_out", "metric": "fill", "value": value},
            # Not proportions: never compared.
            {**cell, "task": "held_out", "metric": "fid", "value": 100.0 * steps},
            {**cell, "task": "average/in_domain", "metric": "sc", "value": 0.0},
        ]
    return rows


def test_steps_study_picks_the_fewest_steps_within_noise(tmp_path):
    # Reference fill 0.5 over 100 samples: one standard error is 0.05.
    fill = {
        ("ddim", 50): 0.5,
        ("ddim", 5): 0.3,  # 4 errors: out
        ("dpmpp_2m", 5): 0.39,  # 2.2 errors: out
        ("ddim", 10): 0.41,  # 1.8 errors: in
        ("dpmpp_2m", 10): 0.6,  # 2 errors: in (at the bound)
    }
    study = report.steps_study(_steps_rows(fill))
    verdict = {(c["sampler"], c["steps"]): c["within_noise"] for c in study["cells"]}
    assert verdict == {
        ("ddim", 5): False,
        ("dpmpp_2m", 5): False,
        ("ddim", 10): True,
        ("dpmpp_2m", 10): True,
    }
    assert study["chosen"] == {"sampler": "ddim", "steps": 10}  # the tie: ddim
    worst = study["cells"][0]["worst"]
    assert (worst["metric"], worst["standard_errors"]) == ("fill", 4.0)
    # Another checkpoint's or guidance's cells are not compared.
    other = [{**r, "guidance": 5.0} for r in _steps_rows({("ddim", 5): 0.5})]
    assert report.steps_study(_steps_rows(fill) + other)["chosen"]["steps"] == 10
    # No reference cell, or nothing but it: no verdict.
    assert report.steps_study(_steps_rows({("ddim", 10): 0.5})) is None
    assert report.steps_study(_steps_rows({("ddim", 50): 0.5})) is None
    # results.md carries the verdict.
    with open(report.write_markdown(_steps_rows(fill), str(tmp_path))) as f:
        assert "Fewest steps within noise: **ddim, 10 steps**" in f.read()


def test_results_md_lists_the_unseen_phrasings_by_template(tmp_path):
    cell = {**_steps_rows({("ddim", 50): 0.5})[0], "metric": "o"}
    split = [
        {"template": "Isolate the {object}.", "value": 0.0, "n": 4},
        {"template": "Label the {object}.", "value": 0.75, "n": 4},
    ]
    rows = [
        {**cell, "task": "segmentation", "value": 0.9},
        {**cell, "task": "segmentation/unseen_paraphrase", "value": 0.375},
    ]
    assert report.phrasings_markdown(rows) is None  # no row has them
    rows[1]["by_template"] = split
    # another setting's split is not listed beside the first one's
    other = {**rows[1], "guidance": 5.0, "by_template": split[:1]}
    text = report.phrasings_markdown([*rows, other])
    lines = [line for line in text.splitlines() if line.startswith("| segmentation")]
    assert lines == [
        "| segmentation | o | 0.900 | Isolate the {object}. | 0.000 | 4 |",
        "| segmentation | o | 0.900 | Label the {object}. | 0.750 | 4 |",
    ]
    paths = report.write(rows, str(tmp_path))
    with open(paths["markdown"]) as f:
        assert "## Unseen phrasings by template (checkpoint_step 5," in f.read()
    with open(paths["html"]) as f:
        assert "<td>Isolate the {object}.</td><td>0.000</td>" in f.read()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A smoke text-to-image run with checkpoints at steps 2 and 4, written as
    training writes them (its initial state: sampling needs no trained model)."""
    import jax

    from imagen_jax import checkpointing, optim, sharding, train_state
    from imagen_jax.models.imagen import build_model
    from imagen_jax.text.tokenizers import make_tokenizer

    workdir = str(tmp_path_factory.mktemp("sweep_run"))
    config = _config()
    checkpointing.save_config(workdir, config)
    model = build_model(config, make_tokenizer(config).vocab_size)
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes)
    tx, _ = optim.build_optimizer(config)
    state, _ = train_state.init_state(
        model, tx, config, mesh, train_state.mesh_rules(config)
    )
    mngr = checkpointing.manager(os.path.join(workdir, "checkpoints"))
    for step in (2, 4):
        checkpointing.save(mngr, step, state.replace(step=jax.numpy.int32(step)), None)
    mngr.wait_until_finished()
    mngr.close()
    return workdir


def _config():
    return t2i_shapes.get_config("smoke")


def test_killed_sweep_resumes_without_repeating_cells(workdir, monkeypatch):
    calls = []
    real = evaluate.EVALUATORS["single_object"]

    def counted(loaded, eval_cfg, sample_cfg, out_dir, samples=None):
        calls.append((loaded.step, sample_cfg.sampler, sample_cfg.guidance))
        if len(calls) == 2 and kill:
            raise KeyboardInterrupt("killed in the second cell")
        return real(loaded, eval_cfg, sample_cfg, out_dir, samples)

    monkeypatch.setitem(evaluate.EVALUATORS, "single_object", counted)
    config = _config()
    cells = [
        {"sampler": "ddim", "steps": 2},
        {"sampler": "dpmpp_2m", "steps": 2, "guidance": 2.0, "oscillate": True},
        {"checkpoint": 2, "sampler": "ddim", "steps": 2},
    ]
    path = os.path.join(workdir, "eval", "results.json")
    kill = True
    with pytest.raises(KeyboardInterrupt):
        sweep.run(config, workdir, cells)
    with open(path) as f:
        first = json.load(f)  # valid JSON holding the first cell only
    assert {(r["checkpoint_step"], r["sampler"]) for r in first} == {(2, "ddim")}
    assert len(calls) == 2

    kill = False
    rows = sweep.run(config, workdir, cells)
    # The finished cell is not sampled again; the killed one and the rest are.
    assert calls[2:] == [(4, "ddim", 3.0), (4, "dpmpp_2m", 2.0)]
    assert sweep.run(config, workdir, cells) == rows and len(calls) == 4
    with open(path) as f:
        assert json.load(f) == rows

    by_cell = {}
    for r in rows:
        assert set(sweep.SETTINGS) <= set(r), r
        by_cell.setdefault(sweep.cell_name(r), []).append(r)
    assert sorted(by_cell) == [
        "step2_ddim_2steps_g3_ig1_osc0",
        "step4_ddim_2steps_g3_ig1_osc0",
        "step4_dpmpp_2m_2steps_g2_ig1_osc1",
    ]
    for name, cell_rows in by_cell.items():
        got = {r["metric"]: r for r in cell_rows}
        assert 0.0 <= got["colour"]["value"] <= 1.0
        # No embedder in this run: the distribution rows say so.
        assert got["fid"]["value"] is None and "--embedder" in got["fid"]["note"]
        grids = os.path.join(workdir, "eval", "sweep", name, "single_object.png")
        assert os.path.exists(grids)
    eval_dir = os.path.join(workdir, "eval")
    assert os.path.exists(os.path.join(eval_dir, "plots", "vs_training.png"))
    with open(os.path.join(eval_dir, "report.html")) as f:
        assert "sweep/step2_ddim_2steps_g3_ig1_osc0/single_object.png" in f.read()
    events = os.listdir(os.path.join(eval_dir, "tensorboard"))
    assert any(e.startswith("events.out.tfevents") for e in events)

    # A plain evaluation is one more setting beside the sweep's rows.
    plain = sweep.evaluate(config, workdir)
    assert {(r["sampler"], r["steps"]) for r in plain} == {("ddim", 4)}
    with open(path) as f:
        assert len(json.load(f)) == len(rows) + len(plain)
    assert os.path.exists(os.path.join(eval_dir, "single_object.png"))


def test_launcher_names_the_sweeps_it_knows(tmp_path):
    env = child_env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.eval",
            "--config",
            "experiments/t2i_shapes.py:smoke",
            "--workdir",
            str(tmp_path),
            "--sweep",
            "nosuch",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "defines the sweeps ['fewer_steps', 'guidance'" in proc.stderr


def test_launcher_writes_a_record_of_its_command_and_rows(workdir, tmp_path):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)  # the module's run keeps its results
    record_path = str(tmp_path / "docs" / "record.json")
    args = ["--config", "experiments/t2i_shapes.py:smoke", "--workdir", run]
    proc = subprocess.run(
        [sys.executable, "-m", "launch.eval", *args, "--record", record_path],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(record_path) as f:
        record = json.load(f)
    with open(os.path.join(run, "eval", "results.json")) as f:
        saved = json.load(f)  # with the rows of evaluations before this one
    assert record["rows"] and all(r in saved for r in record["rows"])
    # This evaluation's rows only: the latest checkpoint at config.sample's steps.
    assert {(r["checkpoint_step"], r["steps"]) for r in record["rows"]} == {(4, 4)}
    assert record["model"] == run
    assert record["command"].startswith("python -m launch.eval --config ")
    assert record["command"].endswith(f"--record {record_path}")
    assert record["machine"] and record["date"]
