"""Stage 2 in miniature: init from text-to-image, train on the task mixture,
evaluate every task (including zero-shot and unseen paraphrases)."""

import jax
import numpy as np
import pytest

from experiments import stage2_shapes, t2i_shapes
from imagen_jax import checkpointing, instructions, train
from imagen_jax.data.tfds import shapes_world as shapes_world_tfds
from imagen_jax.evaluation import evaluate, sweep


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
    cfg.evals.tasks.zero_shot_per_task = 3
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


@pytest.fixture(scope="module")
def stage2_run(t2i_workdir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("s2"))
    cfg = _stage2(t2i_workdir, 3)
    state = train.train_and_evaluate(cfg, workdir)
    return cfg, workdir, state


def test_stage2_trains_on_the_mixture_and_scores_every_task(stage2_run):
    from imagen_jax.data import tasks

    cfg, workdir, state = stage2_run
    assert int(state.step) == 3
    rows = sweep.evaluate(cfg, workdir)
    names = {r["task"] for r in rows}
    for name in tasks.TRAIN_TASKS:
        assert name in names and f"{name}/unseen_paraphrase" in names
    for name in tasks.ZERO_SHOT_TASKS:
        assert f"zero_shot/{name}" in names
    counts = {r["task"]: r["n"] for r in rows if r["metric"] == "o"}
    assert counts["subject"] == 2 and counts["subject/text_only"] == 2
    assert counts["zero_shot/multi_subject"] == 3
    assert counts["zero_shot/multi_subject/text_only"] == 3
    for r in rows:
        # This run has no embedder: its distribution rows say so instead.
        if r["value"] is None:
            assert r["metric"] in ("fid", "kid") and "no feature" in r["note"], r
        else:
            assert np.isfinite(r["value"]), r
    metrics = {(r["task"], r["metric"]) for r in rows}
    assert ("segmentation", "iou") in metrics and ("text_to_image", "o") in metrics
    for name in ("subject", "mask_to_image", "zero_shot/subject+style"):
        assert (name, "x0_error") in metrics and (name, "x0_error/text_only") in metrics
    # the headline scores split by the examples' templates, every example counted
    split = [r for r in rows if r["task"].endswith("/unseen_paraphrase")]
    split = [r for r in split if "by_template" in r]
    assert split and all(sum(t["n"] for t in r["by_template"]) == r["n"] for r in split)


def test_x0_error_pairs_the_noise_and_drops_only_the_conditions(stage2_run):
    from imagen_jax import inference

    cfg, workdir, _ = stage2_run
    loaded = inference.load(workdir, cfg)
    error_fn = evaluate.make_x0_error_fn(loaded)
    for name, examples, batch in evaluate._task_batches(loaded, ["subject"], 4, False):
        x = np.stack([e.target for e in examples]).astype(np.float32) / 127.5 - 1
        rng = jax.random.PRNGKey(0)
        full = np.asarray(error_fn(loaded.params, batch, x, rng, True))
        alone = np.asarray(error_fn(loaded.params, batch, x, rng, False))
        assert full.shape == (4,) and np.all(full > 0)
        # The references reach the denoiser (3 steps in, barely): dropping them
        # changes the error...
        assert np.any(full != alone), name
        # ...and an example without any condition is unaffected by the flag.
        bare = {**batch, "ctx_mask": 0 * batch["ctx_mask"]}
        bare["cond_image_mask"] = 0 * batch["cond_image_mask"]
        np.testing.assert_array_equal(
            np.asarray(error_fn(loaded.params, bare, x, rng, True)),
            np.asarray(error_fn(loaded.params, bare, x, rng, False)),
        )


def test_task_fit_scores_the_trained_tasks_on_the_evaluators_noise(stage2_run):
    from imagen_jax import inference

    cfg, workdir, _ = stage2_run
    loaded = inference.load(workdir, cfg)
    names = evaluate.trained_tasks(loaded)
    assert set(names) == {n for n, w in cfg.data.mixture.items() if w > 0}
    fit = evaluate.task_fit(loaded, names[:2], 2, 2)
    assert list(fit) == names[:2] and all(v > 0 for v in fit.values())
    # the evaluator's own x0_error row of the same examples and noise
    error_fn = evaluate.make_x0_error_fn(loaded)
    for name, examples, batch in evaluate._task_batches(loaded, names[:1], 2, False):
        rows = evaluate._x0_error_rows(loaded, error_fn, name, examples, batch, 2)
        assert [r["metric"] for r in rows] == ["x0_error", "x0_error/text_only"]
        np.testing.assert_allclose(fit[name], rows[0]["value"], rtol=1e-6)


def _request(tmp_path, image_size=32, **overrides):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for name in ("subject", "style", "input"):
        path = tmp_path / f"{name}.png"
        pixels = rng.integers(0, 256, (image_size, image_size, 3), np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    req = {
        "text": "Generate [ref#1] in the style of [ref#2]",
        "context": [
            {"marker": "[ref#1]", "text": "a glim", "image": paths[0]},
            {"marker": "[ref#2]", "text": "style image", "image": paths[1]},
        ],
        "image": paths[2],
        "steps": 2,
        "guidance": {"text": 3.0, "image": 1.5, "oscillate": 1},
        "num_images": 2,
    }
    return instructions.parse_request({**req, **overrides})


def test_stage2_model_answers_multimodal_requests(stage2_run, tmp_path):
    from imagen_jax import generate, inference

    _, workdir, _ = stage2_run
    loaded = inference.load(workdir)
    images = generate.generate_images(loaded, _request(tmp_path))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    # Same request without the input image: context alone still conditions.
    images = generate.generate_images(loaded, _request(tmp_path, image=None))
    assert images.shape == (2, 32, 32, 3)


@pytest.mark.parametrize(
    "overrides, size, message",
    [
        ({}, 16, "32"),
        ({"image": "/nonexistent/input.png"}, 32, "does not exist"),
        ({"guidance": {"style": 2.0}}, 32, "style"),
        ({"text": "Generate [ref#1] in the style of [ref#3]"}, 32, "ref#"),
    ],
)
def test_stage2_bad_requests_name_the_problem(
    stage2_run, tmp_path, overrides, size, message
):
    from imagen_jax import generate, inference

    _, workdir, _ = stage2_run
    loaded = inference.load(workdir)
    with pytest.raises(ValueError, match=message):
        generate.generate_images(loaded, _request(tmp_path, size, **overrides))


def test_task_option_selects_one_task_or_a_few():
    one = stage2_shapes.get_config("simple,task=subject")
    assert list(one.data.mixture) == ["subject"]
    assert list(one.evals.tasks.names) == ["subject"]
    # A zero-shot name holds a "+": it stays one task.
    combo = stage2_shapes.get_config("simple,task=subject+style")
    assert list(combo.data.mixture) == ["subject+style"]
    few = stage2_shapes.get_config("simple,task=subject/style_generation")
    ratio = few.data.mixture["subject"] / few.data.mixture["style_generation"]
    assert ratio == pytest.approx(0.35 / 0.15)  # their tasks.MIXTURE ratio
    assert list(few.evals.tasks.names) == ["subject", "style_generation"]


def test_evaluated_tasks_are_a_tuple_so_a_command_line_can_set_them():
    # ml_collections' config_flags overrides tuple fields and refuses lists
    # ("Type <class 'list'> ... is not supported for overriding").
    for arg in ("simple", "simple,t2i", "simple,task=edit"):
        names = stage2_shapes.get_config(arg).evals.tasks.names
        assert isinstance(names, tuple), (arg, names)


def test_mix_option_selects_a_named_mixture_and_its_context_slots():
    from imagen_jax.data import tasks

    paper = stage2_shapes.get_config("simple")
    even = stage2_shapes.get_config("simple,mix=even")
    assert not paper.data.mixture  # empty: the pipeline takes tasks.MIXTURE
    assert dict(even.data.mixture) == stage2_shapes.MIXTURES["even"]
    # Fewer subject examples (two references each) -> fewer slots to encode.
    assert even.model.context_slots < paper.model.context_slots
    for weights in stage2_shapes.MIXTURES.values():  # every task, no zero-shot
        assert set(tasks.TRAIN_TASKS) <= set(weights)
        assert set(weights) <= set(tasks.TRAIN_TASKS + tasks.OPT_IN_TASKS)
    roles = stage2_shapes.MIXTURES["roles"]
    assert {"role_transfer", "role_transfer_told"} <= set(roles)
    with pytest.raises(ValueError, match="mix='uneven'"):
        stage2_shapes.get_config("simple,mix=uneven")


def test_noise_option_makes_up_training_words_at_its_rate():
    assert stage2_shapes.get_config("simple").data.word_noise == 0.0
    noisy = stage2_shapes.get_config("simple,mix=even,words,noise=0.15")
    assert noisy.data.word_noise == 0.15
    # The training stream reads it: some instruction differs from the quiet one.
    from imagen_jax.data import pipeline

    quiet = stage2_shapes.get_config("simple,mix=even,words")
    texts = [
        [pipeline.TaskSource(c.data, "train")[i].instruction.text for i in range(8)]
        for c in (noisy, quiet)
    ]
    assert texts[0] != texts[1]


def test_pairs_option_reaches_training_and_evaluation_scenes(monkeypatch):
    import types

    from imagen_jax.data import pipeline
    from imagen_jax.evaluation import evaluate

    assert stage2_shapes.get_config("simple").data.query_objects == 0
    c = stage2_shapes.get_config("simple,pairs,task=classification")
    assert c.data.query_objects == 2
    assert len(pipeline.TaskSource(c.data, "train")[0].meta["scene"].objects) == 2
    loaded = types.SimpleNamespace(config=c)
    monkeypatch.setattr(evaluate, "_instruction_arrays", lambda *_: None)
    ((name, examples, _),) = evaluate._task_batches(loaded, ["segmentation"], 3, False)
    assert name == "segmentation"
    assert [len(e.meta["scene"].objects) for e in examples] == [2, 2, 2]
