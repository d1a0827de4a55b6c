"""Tests of the guidance rules against their formulas in float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.diffusion import guidance, losses

SHAPE = (4, 3, 3, 2)


def _outputs(n, seed=0):
    r = np.random.default_rng(seed)
    return [r.standard_normal(SHAPE) for _ in range(n)]


def _f32(a):
    return jnp.asarray(a, jnp.float32)


def test_cfg_formula_and_limits():
    cond, uncond = _outputs(2)
    np.testing.assert_allclose(
        guidance.cfg(_f32(cond), _f32(uncond), 7.5),
        uncond + 7.5 * (cond - uncond),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        guidance.cfg(_f32(cond), _f32(uncond), 1.0), cond, atol=1e-6
    )
    np.testing.assert_allclose(guidance.cfg(_f32(cond), _f32(uncond), 0.0), uncond)


def test_cfg_per_example_scale():
    cond, uncond = _outputs(2)
    scale = np.array([0.0, 1.0, 2.0, 5.0])
    got = guidance.cfg(_f32(cond), _f32(uncond), jnp.asarray(scale))
    want = uncond + scale[:, None, None, None] * (cond - uncond)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_dual_guidance_formula_and_reductions():
    e00, ei0, eit = _outputs(3)
    s_t, s_i = 7.5, 1.5
    got = guidance.dual_guidance(_f32(e00), _f32(ei0), _f32(eit), s_t, s_i)
    want = e00 + s_t * (eit - ei0) + s_i * (ei0 - e00)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # s_I = 1: plain cfg on the text with the image kept.
    np.testing.assert_allclose(
        guidance.dual_guidance(_f32(e00), _f32(ei0), _f32(eit), s_t, 1.0),
        ei0 + s_t * (eit - ei0),
        atol=1e-5,
    )
    # Equal scales: cfg of the full prediction against the unconditional one.
    np.testing.assert_allclose(
        guidance.dual_guidance(_f32(e00), _f32(ei0), _f32(eit), 3.0, 3.0),
        e00 + 3.0 * (eit - e00),
        atol=1e-5,
    )


def test_multi_cfg_chain_of_two_is_dual_guidance():
    e00, ei0, eit = [_f32(a) for a in _outputs(3)]
    outputs = {(): e00, ("image",): ei0, ("text", "image"): eit}
    got = guidance.multi_cfg(outputs, ("image", "text"), {"text": 7.5, "image": 1.5})
    np.testing.assert_allclose(
        got, guidance.dual_guidance(e00, ei0, eit, 7.5, 1.5), atol=1e-5
    )


def test_multi_cfg_chain_of_three_formula():
    e0, e1, e2, e3 = _outputs(4)
    outputs = {
        frozenset(): _f32(e0),
        frozenset({"image"}): _f32(e1),
        frozenset({"image", "context"}): _f32(e2),
        frozenset({"image", "context", "text"}): _f32(e3),
    }
    scales = {"image": 1.5, "context": 2.0, "text": 5.0}
    got = guidance.multi_cfg(outputs, ("image", "context", "text"), scales)
    want = e0 + 1.5 * (e1 - e0) + 2.0 * (e2 - e1) + 5.0 * (e3 - e2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    unit = guidance.multi_cfg(outputs, ("image", "context", "text"), {})
    np.testing.assert_allclose(unit, e3, atol=1e-5)


def test_multi_cfg_one_condition_is_cfg():
    cond, uncond = [_f32(a) for a in _outputs(2)]
    got = guidance.multi_cfg({(): uncond, ("text",): cond}, ["text"], {"text": 4.0})
    np.testing.assert_allclose(got, guidance.cfg(cond, uncond, 4.0), atol=1e-6)


@pytest.mark.parametrize(
    "outputs,chain,scales,match",
    [
        ({(): 0.0, ("text",): 1.0}, ["text", "image"], {}, "\\['image', 'text'\\]"),
        ({(): 0.0, "text": 1.0}, ["text"], {}, "'text'"),
        ({(): 0.0, ("text",): 1.0}, ["text"], {"txt": 2.0}, "'txt'"),
        ({(): 0.0, ("text",): 1.0}, ["text", "text"], {}, "repeats"),
    ],
)
def test_multi_cfg_errors(outputs, chain, scales, match):
    with pytest.raises(ValueError, match=match):
        guidance.multi_cfg(outputs, chain, scales)


def test_oscillating_scale_traced():
    scales = jax.jit(jax.vmap(guidance.oscillating_scale, in_axes=(0, None)))(
        jnp.arange(6), 25.0
    )
    np.testing.assert_array_equal(scales, [25.0, 1.0, 25.0, 1.0, 25.0, 1.0])
    cond, uncond = [_f32(a) for a in _outputs(2)]
    odd = guidance.cfg(cond, uncond, guidance.oscillating_scale(3, 25.0))
    np.testing.assert_allclose(odd, cond, atol=1e-6)  # no guidance on odd steps


def test_interleaved_guidance_extremes_and_mixing():
    full, no_text, no_ctx = [_f32(a) for a in _outputs(3)]
    key = jax.random.key(0)
    on_text = guidance.interleaved_guidance(full, no_text, no_ctx, 3.0, key, 1.0)
    np.testing.assert_allclose(on_text, guidance.cfg(full, no_text, 3.0), atol=1e-6)
    on_ctx = guidance.interleaved_guidance(full, no_text, no_ctx, 3.0, key, 0.0)
    np.testing.assert_allclose(on_ctx, guidance.cfg(full, no_ctx, 3.0), atol=1e-6)

    big = 4000
    ones = jnp.ones((big, 2))
    mixed = guidance.interleaved_guidance(2 * ones, ones, 0 * ones, 2.0, key, 0.3)
    # Each example guides on exactly one condition: 3 (text) or 4 (neighbours).
    assert set(np.unique(np.asarray(mixed))) == {3.0, 4.0}
    assert np.all(mixed[:, 0] == mixed[:, 1])
    frac_text = float(jnp.mean(mixed[:, 0] == 3.0))
    assert abs(frac_text - 0.3) < 4 * np.sqrt(0.3 * 0.7 / big)


@pytest.mark.parametrize("param", ["eps", "v"])
def test_guidance_commutes_with_parameterisation(param):
    """cfg is affine with weights summing to 1: guiding eps or v equals guiding x0."""
    cond, uncond, z = [_f32(a) for a in _outputs(3, seed=5)]
    logsnr = jnp.asarray([-3.0, -0.5, 1.0, 4.0])
    guided_x0 = losses.predict_x0(guidance.cfg(cond, uncond, 6.0), z, logsnr, param)
    x0_c = losses.predict_x0(cond, z, logsnr, param)
    x0_u = losses.predict_x0(uncond, z, logsnr, param)
    np.testing.assert_allclose(
        guided_x0, guidance.cfg(x0_c, x0_u, 6.0), rtol=1e-4, atol=1e-4
    )
