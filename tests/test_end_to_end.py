"""The README's job in miniature: build data, train, resume, evaluate, sample."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import t2i_shapes
from imagen_jax import generate, inference, instructions, train
from imagen_jax.evaluation import sweep
from tests.child_env import child_env


def _config(smoke_world, steps):
    cfg = t2i_shapes.get_config("smoke")
    cfg.data.data_dir = smoke_world
    cfg.mesh.shape = (2, 2, 2)
    cfg.train.num_steps = steps
    return cfg


def test_train_resume_eval_sample(smoke_world, tmp_path):
    workdir = str(tmp_path / "run")
    state = train.train_and_evaluate(_config(smoke_world, 4), workdir)
    assert int(state.step) == 4
    assert os.path.exists(os.path.join(workdir, "config.json"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    # Same workdir, more steps: resumes from step 4 (with the data iterator).
    state = train.train_and_evaluate(_config(smoke_world, 6), workdir)
    assert int(state.step) == 6
    assert os.path.exists(os.path.join(workdir, "samples", "step_6.png"))

    rows = sweep.evaluate(_config(smoke_world, 6), workdir)
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        assert json.load(f) == rows
    metrics = {r["metric"]: r for r in rows}
    for name in ("colour", "shape", "position", "colour_and_shape", "fill"):
        assert 0.0 <= metrics[name]["value"] <= 1.0
        assert metrics[name]["checkpoint_step"] == 6
    assert os.path.exists(os.path.join(workdir, "eval", "results.md"))

    loaded = inference.load(workdir)
    # config.sample.use_ema picks the trained weights instead of the EMA ones.
    raw_cfg = _config(smoke_world, 6)
    raw_cfg.sample.use_ema = False
    ema, raw, raw_arg = (
        jax.tree.leaves(x.params)
        for x in (
            loaded,
            inference.load(workdir, raw_cfg),
            inference.load(workdir, use_ema=False),
        )
    )
    assert not all(np.allclose(a, b) for a, b in zip(ema, raw))
    for a, b in zip(raw, raw_arg):
        np.testing.assert_array_equal(a, b)
    req = instructions.parse_request(
        {"text": "a red circle", "steps": 3, "num_images": 2, "seed": 1}
    )
    images = generate.generate_images(loaded, req)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match="text-to-image model"):
        generate.generate_images(
            loaded,
            instructions.parse_request(
                {"text": "x [ref#1]", "context": [{"marker": "[ref#1]"}]}
            ),
        )


def test_sample_grid_written_by_launcher(smoke_world, tmp_path):
    import subprocess
    import sys

    workdir = str(tmp_path / "run")
    train.train_and_evaluate(_config(smoke_world, 2), workdir)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"text": "a blue square", "steps": 2, "num_images": 3}))
    out = tmp_path / "out.png"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = child_env()  # one CPU device: restores onto another mesh
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.sample",
            "--workdir",
            workdir,
            "--instruction",
            str(req),
            "--out",
            str(out),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The console holds no library INFO lines (orbax's restore logs a dozen).
    assert "checkpoint_manager.py" not in proc.stderr, proc.stderr[-3000:]
    assert Image.open(out).size == (70, 70)  # 3 samples on a 2x2 grid of 32 + 2 px
