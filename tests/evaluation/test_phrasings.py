"""evaluation.phrasings: every template on the same scenes."""

import types

import ml_collections
import numpy as np
import pytest

from imagen_jax.data import tasks
from imagen_jax.evaluation import phrasings


def _loaded(**data):
    cfg = ml_collections.ConfigDict(
        {"data": {"resolution": 32, "variant": "simple", **data}}
    )
    return types.SimpleNamespace(config=cfg)


def test_each_template_phrases_the_evaluators_scenes():
    loaded = _loaded()
    template = tasks.get_task("sketch_to_image").unseen_templates[2]
    examples = phrasings.phrased(loaded, "sketch_to_image", template, 4, 1)
    for i, example in enumerate(examples):
        usual = tasks.make_example("sketch_to_image", i, 1, 32, world="simple")
        np.testing.assert_array_equal(example.target, usual.target)
        assert example.meta["template"] == template
    # edit's scenes that need a colour or a place cannot be phrased without them
    with pytest.raises(ValueError, match="other fields than"):
        phrasings.phrased(loaded, "edit", "Get rid of the {object}.", 12, 1)


def test_paired_differences_take_out_the_scenes():
    # scene 2 is hard for every template: it moves no template against another
    got = phrasings.paired({"a": [1.0, 1.0, 0.0], "b": [0.0, 1.0, 0.0]})
    assert got["a"][0] == pytest.approx(1 / 6) and got["b"][0] == pytest.approx(-1 / 6)
    # per-example differences a: [0.5, 0, 0]; their standard error
    assert got["a"][1] == pytest.approx(np.std([0.5, 0, 0], ddof=1) / np.sqrt(3))
