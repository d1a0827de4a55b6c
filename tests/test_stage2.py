"""Stage 2 in miniature: init from text-to-image, train on the task mixture,
evaluate every task (including zero-shot and unseen paraphrases)."""

import numpy as np
import pytest

from experiments import stage2_shapes, t2i_shapes
from imagen_jax import checkpointing, train
from imagen_jax.data.tfds import shapes_world as shapes_world_tfds
from imagen_jax.evaluation import evaluate


@pytest.fixture(scope="module")
def t2i_workdir(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("data"))
    cfg = t2i_shapes.get_config("smoke")
    shapes_world_tfds.build(
        data, 32, num_train=32, num_test=4, variant=cfg.data.variant
    )
    cfg.data.data_dir = data
    cfg.train.num_steps = 3
    workdir = str(tmp_path_factory.mktemp("t2i"))
    train.train_and_evaluate(cfg, workdir)
    return workdir


def _stage2(init_from, steps):
    cfg = stage2_shapes.get_config("smoke")
    cfg.init_from = init_from
    cfg.train.num_steps = steps
    cfg.evals.tasks.per_task = 2
    cfg.evals.tasks.batch_size = 2
    return cfg


def test_stage2_starts_from_the_text_to_image_model(t2i_workdir, tmp_path):
    # Step 0 has learning rate 0 (warm-up): after it the params are the init.
    state = train.train_and_evaluate(_stage2(t2i_workdir, 1), str(tmp_path / "s2"))
    t2i = checkpointing.load_config(t2i_workdir)
    from imagen_jax import inference

    loaded = inference.load(t2i_workdir, t2i)
    np.testing.assert_array_equal(
        np.asarray(state.params["unet"]["conv_in"]["kernel"]),
        np.asarray(loaded.params["unet"]["conv_in"]["kernel"]),
    )
    assert "cond_image_in" in state.params["unet"]
    assert "ctx_attn_0" in state.params["unet"]["enc_2"]


def test_stage2_trains_on_the_mixture_and_scores_every_task(t2i_workdir, tmp_path):
    from imagen_jax.data import tasks

    workdir = str(tmp_path / "s2")
    cfg = _stage2(t2i_workdir, 3)
    state = train.train_and_evaluate(cfg, workdir)
    assert int(state.step) == 3
    rows = evaluate.evaluate(cfg, workdir)
    names = {r["task"] for r in rows}
    for name in tasks.TRAIN_TASKS:
        assert name in names and f"{name}/unseen_paraphrase" in names
    for name in tasks.ZERO_SHOT_TASKS:
        assert f"zero_shot/{name}" in names
    for r in rows:
        assert np.isfinite(r["value"]), r
    metrics = {(r["task"], r["metric"]) for r in rows}
    assert ("segmentation", "iou") in metrics and ("text_to_image", "o") in metrics
