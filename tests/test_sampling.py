"""Generation with the full model: one compilation for any steps/guidance."""

import jax
import numpy as np
import pytest

from experiments import t2i_shapes
from imagen_jax import sampling, sharding, train


@pytest.fixture(scope="module")
def setup():
    cfg = t2i_shapes.get_config("smoke")
    tok = train.make_tokenizer(cfg)
    model = train.build_model(cfg, tok.vocab_size)
    mesh = sharding.make_mesh((-1, 1, 1), cfg.mesh.axes)
    params, _ = sharding.sharded_init(
        lambda: train.init_params(model, cfg), mesh, train.mesh_rules(cfg)
    )
    tokens, mask = tok.encode_batch(["a red circle", "a blue square"], 32)
    return cfg, model, params, tokens, mask


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_steps_and_guidance_do_not_recompile(setup, sampler):
    cfg, model, params, tokens, mask = setup
    generate = sampling.make_generate_fn(model, cfg, sampler)
    outs = []
    for steps, scale in [(2, 1.0), (3, 5.0), (5, 2.5)]:
        out = generate(params, tokens, mask, jax.random.PRNGKey(0), steps, scale)
        outs.append(np.asarray(out))
        assert out.shape == (2, 32, 32, 3)
        assert float(np.abs(out).max()) <= 1.0
    assert generate._cache_size() == 1


def test_unknown_sampler(setup):
    cfg, model, *_ = setup
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sampling.make_generate_fn(model, cfg, "euler")


def test_to_uint8_range():
    x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(sampling.to_uint8(x), [0, 0, 128, 255, 255])
