"""The one conditioning switch, `config.model.conditioning`: it alone decides
the batch fields, the parameters, the dropout and the generate path."""

import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from experiments import stage2_shapes, t2i_shapes
from imagen_jax import (
    conditioning,
    config_utils,
    generate,
    inference,
    instructions,
    train,
    train_state,
)
from imagen_jax.models.imagen import build_model
from imagen_jax.text.tokenizers import make_tokenizer


def _config(kind: str, data_name: str):
    # The dataset name is set against the conditioning on purpose: the switch
    # must decide, not the dataset.
    cfg = t2i_shapes.get_config("smoke")
    cfg.model.conditioning = kind
    cfg.data.name = data_name
    cfg.data.max_context, cfg.data.ctx_text_len = 2, 8
    return cfg


def _model(cfg):
    return build_model(cfg, make_tokenizer(cfg).vocab_size)


def test_experiment_defaults():
    assert t2i_shapes.get_config().model.conditioning == "text"
    assert stage2_shapes.get_config().model.conditioning == "instruction"
    assert stage2_shapes.get_config("t2i").model.conditioning == "text"


@pytest.mark.parametrize(
    "kind, data_name", [("text", "shapes_world_tasks"), ("instruction", "shapes_world")]
)
def test_switch_decides_batch_fields_and_params(kind, data_name):
    cfg = _config(kind, data_name)
    model = _model(cfg)
    assert model.conditioning is conditioning.get(kind)
    batch = train_state.dummy_batch(cfg, model.conditioning, batch_size=3)
    instruction = kind == "instruction"
    assert set(batch) == {"image", *model.conditioning.batch_fields}
    assert ("ctx_images" in batch) == instruction
    if instruction:
        assert batch["ctx_images"].shape == (3, 2, 32, 32, 3)
        assert batch["ctx_mask"].all() and batch["cond_image_mask"].all()
    boxed = jax.eval_shape(lambda: train_state.init_params(model, cfg))
    unet = nn.meta.unbox(boxed)["unet"]
    assert ("cond_image_in" in unet) == instruction
    assert ("mid_ctx_attn" in unet) == instruction
    assert any(k.startswith("ctx_attn") for k in unet["enc_2"]) == instruction


@pytest.mark.parametrize("kind", ["text", "instruction"])
def test_switch_decides_the_dropout(kind):
    model = _model(_config(kind, "shapes_world_tasks"))
    cfg = _config("instruction", "shapes_world_tasks")
    batch = train_state.dummy_batch(cfg, conditioning.INSTRUCTION, batch_size=64)
    drop = cfg.diffusion.cond_drop
    drop.all, drop.text, drop.context, drop.image = 0.25, 0.25, 0.25, 0.25
    masks = train.drop_conditions(
        jax.random.PRNGKey(0), batch, drop, model.conditioning
    )
    if kind == "text":
        assert set(masks) == {"text_mask"}
        return
    text = np.asarray(masks["text_mask"]).any(1)
    ctx = np.asarray(masks["ctx_mask"]).any(1)
    image = np.asarray(masks["cond_keep"])
    # Exclusive choices: all dropped, or exactly one, never two of three.
    kept = text.astype(int) + ctx + image
    assert set(kept) == {0, 2}
    assert not (~text & ~ctx & image).any() and not (~text & ctx & ~image).any()


def _loaded(kind):
    cfg = _config(kind, "shapes_world")
    cfg.sample.steps = 2
    model = _model(cfg)
    params = nn.meta.unbox(train_state.init_params(model, cfg))
    return inference.Loaded(cfg, make_tokenizer(cfg), model, params, step=0)


def _request(tmp_path, **fields):
    from PIL import Image

    path = str(tmp_path / "ref.png")
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path)
    req = {
        "text": "Generate [ref#1] at the top left",
        # Marker, space, 4 bytes and EOS: 7 tokens, within ctx_text_len = 8.
        "context": [{"marker": "[ref#1]", "text": "glim", "image": path}],
        "image": path,
        "num_images": 1,
    }
    return instructions.parse_request({**req, **fields})


def test_switch_decides_the_generate_path(tmp_path):
    text, instruction = _loaded("text"), _loaded("instruction")
    # An instruction model takes context items, an input image and "image"
    # guidance; a text-to-image model none of them.
    req = _request(tmp_path, guidance={"text": 2.0, "image": 1.5})
    assert generate.generate_images(instruction, req).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="image"):
        generate.generate_images(text, req)
    with pytest.raises(ValueError, match="text-to-image model"):
        generate.generate_images(text, _request(tmp_path))
    plain = instructions.parse_request({"text": "a red circle", "num_images": 1})
    for loaded in (text, instruction):
        assert generate.generate_images(loaded, plain).shape == (1, 32, 32, 3)


def test_old_saved_configs_get_the_conditioning_they_had():
    old = t2i_shapes.get_config("smoke")
    del old.model["conditioning"]
    assert inference.with_conditioning(old).model.conditioning == "text"
    old.data.max_context = 4
    new = inference.with_conditioning(old)
    assert new.model.conditioning == "instruction"
    assert "conditioning" not in old.model  # the caller's config is untouched
    assert inference.with_conditioning(new) is new


def test_validation_reads_the_registry():
    assert config_utils.choices()["model.conditioning"] == tuple(conditioning.KINDS)
    cfg = _config("image", "shapes_world")
    with pytest.raises(ValueError, match="config.model.conditioning='image'"):
        config_utils.validate(cfg)
    cfg = _config("instruction", "shapes_world")
    config_utils.validate(cfg)
    cfg.data.max_context = 0
    with pytest.raises(ValueError, match="config.data.max_context=0 must be > 0"):
        config_utils.validate(cfg)
    with pytest.raises(ValueError, match="unknown model conditioning 'x'"):
        conditioning.get("x")


@pytest.mark.parametrize("kind", ["text", "instruction"])
def test_train_step_takes_an_instruction_batch_with_dropout(kind):
    # The same instruction batch trains either model (a text model reads its
    # text only); the context encoder runs with dropout in training.
    from imagen_jax import sharding

    cfg = _config(kind, "shapes_world_tasks")
    cfg.model.dropout = 0.1
    cfg.optim.warmup_steps = 0
    cfg.mesh.shape = (-1, 1, 1)
    built, state = train.setup(cfg)
    local = train_state.dummy_batch(cfg, conditioning.INSTRUCTION, batch_size=8)
    local["ctx_images"] = np.random.default_rng(0).integers(
        0, 256, local["ctx_images"].shape, np.uint8
    )
    unet0 = jax.tree.map(np.array, state.params["unet"])
    with built.mesh, nn.logical_axis_rules(built.rules):
        # The zero-initialised output conv passes gradients on from step 2 on.
        for _ in range(2):
            batch = sharding.global_batch(local, built.batch_sharding)
            state, metrics = built.step_fn(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert ("mid_ctx_attn" in unet0) == (kind == "instruction")
    if kind == "instruction":  # the context path is trained
        out = state.params["unet"]["mid_ctx_attn"]["out"]["kernel"]
        assert np.abs(np.asarray(out) - unet0["mid_ctx_attn"]["out"]["kernel"]).max()


def test_a_given_config_keeps_the_trained_network(caplog):
    trained = stage2_shapes.get_config("smoke")
    trained.model.context_norm = True  # a training-time override
    trained.diffusion.param = "eps"
    saved = ml_collections.ConfigDict(json.loads(json.dumps(trained.to_dict())))
    given = stage2_shapes.get_config("smoke")
    given.sample.guidance = 7.0
    out = inference.trained_sections(given, saved)
    assert out.model.context_norm and out.diffusion.param == "eps"
    assert out.sample.guidance == 7.0  # evaluation settings stay the caller's
    assert not given.model.context_norm  # the caller's config is untouched
    assert "context_norm" in caplog.text and "param" in caplog.text
    caplog.clear()
    inference.trained_sections(saved, saved)  # tuples and lists compare equal
    assert "differs" not in caplog.text
