"""Typed :arg options, config validation and every experiment config."""

import glob

import ml_collections
import pytest

from imagen_jax import config_utils


def test_parse_arg_types():
    out = config_utils.parse_arg(
        "res=64,smoke,minutes=2.5", res=32, smoke=False, minutes=0.0
    )
    assert out.res == 64 and out.smoke is True and out.minutes == 2.5
    assert config_utils.parse_arg(None, res=32).res == 32


@pytest.mark.parametrize(
    "arg,match",
    [
        ("bogus=1", "unknown config option"),
        ("res=abc", "is not a int"),
        ("res", "needs a value"),
        ("smoke=maybe", "not a boolean"),
    ],
)
def test_parse_arg_errors(arg, match):
    with pytest.raises(ValueError, match=match):
        config_utils.parse_arg(arg, res=32, smoke=False)


def _experiment_configs():
    for path in sorted(glob.glob("experiments/*.py")):
        module = config_utils.load_experiment(path)
        if hasattr(module, "get_config"):
            yield path, module


@pytest.mark.parametrize("path,module", list(_experiment_configs()))
def test_every_experiment_config_validates(path, module):
    config_utils.validate(module.get_config())
    config_utils.validate(module.get_config("smoke"))


def test_validate_names_the_bad_value():
    from experiments import t2i_shapes

    c = t2i_shapes.get_config("smoke")
    c.optim.name = "sgdx"
    with pytest.raises(ValueError, match=r"config.optim.name='sgdx'"):
        config_utils.validate(c)
    c = t2i_shapes.get_config("smoke")
    c.diffusion.cond_drop.all = 1.5
    with pytest.raises(ValueError, match="cond_drop.all"):
        config_utils.validate(c)
    c = t2i_shapes.get_config("smoke")
    c.diffusion.low_snr_share = -0.1
    with pytest.raises(ValueError, match="low_snr_share=-0.1"):
        config_utils.validate(c)
    c = t2i_shapes.get_config("smoke")
    c.model.text_pool = "max"
    with pytest.raises(ValueError, match=r"config.model.text_pool='max'"):
        config_utils.validate(c)
    del c.model["text_pool"]  # optional field: absent is fine
    config_utils.validate(c)
    c = t2i_shapes.get_config("smoke")
    c.text.marker_text_loss = 1.0  # a text-to-image model has no items
    with pytest.raises(ValueError, match="marker_text_loss needs context items"):
        config_utils.validate(c)
    c.model.conditioning = "instruction"
    c.text.marker_text_loss = -1.0
    with pytest.raises(ValueError, match="marker_text_loss=-1.0 must be >= 0"):
        config_utils.validate(c)
    c.text.marker_text_loss, c.text.frozen = 1.0, True
    with pytest.raises(ValueError, match="cannot be frozen"):
        config_utils.validate(c)
    c = t2i_shapes.get_config("smoke")
    c.text.marker_loss_form = "infonce"
    with pytest.raises(ValueError, match="config.text.marker_loss_form='infonce'"):
        config_utils.validate(c)
    c = t2i_shapes.get_config("smoke")
    c.optim.text_lr_scale = 0.0
    with pytest.raises(ValueError, match="text_lr_scale=0.0 must be > 0"):
        config_utils.validate(c)
    c.optim.text_lr_scale, c.text.frozen = 0.1, True
    with pytest.raises(ValueError, match="it has none when frozen"):
        config_utils.validate(c)


def test_allowed_values_come_from_the_registries():
    from experiments import t2i_shapes
    from imagen_jax.diffusion import samplers, schedules

    allowed = config_utils.choices()
    assert allowed["diffusion.schedule"] == schedules.get_schedule_names()
    assert allowed["sample.sampler"] == samplers.get_sampler_names()
    c = t2i_shapes.get_config("smoke")
    c.diffusion.schedule = "linear"  # registered, so allowed
    config_utils.validate(c)
    c.diffusion.schedule = "sigmoid"
    with pytest.raises(ValueError, match="'cosine', 'linear', 'shifted_cosine'"):
        config_utils.validate(c)


def test_override_sets_existing_fields_and_names_a_bad_one():
    config = ml_collections.ConfigDict({"model": {"level": -1, "name": "unet"}})
    config_utils.override(config, {"model.level": -2})
    assert config.model.level == -2
    with pytest.raises(ValueError, match="no field 'model.levels'"):
        config_utils.override(config, {"model.levels": -2})
    with pytest.raises(ValueError, match="'model.name'"):
        config_utils.override(config, {"model.name": 3})
    assert "levels" not in config.model


def test_load_experiment_names_a_missing_file():
    assert hasattr(
        config_utils.load_experiment("experiments/stage1_shapes.py"), "get_config"
    )
    with pytest.raises(FileNotFoundError, match="experiments/nope.py"):
        config_utils.load_experiment("experiments/nope.py")


def test_text_full_lr_steps_needs_a_scale_and_a_count():
    from experiments import t2i_shapes

    c = t2i_shapes.get_config("smoke")
    c.optim.text_full_lr_steps = 100
    with pytest.raises(ValueError, match="text_full_lr_steps=100 delays"):
        config_utils.validate(c)
    c.optim.text_full_lr_steps = -1
    c.optim.text_lr_scale = 0.1
    with pytest.raises(ValueError, match="text_full_lr_steps=-1 must be an int"):
        config_utils.validate(c)
    c.optim.text_full_lr_steps = 100
    config_utils.validate(c)
