"""Classifier-free guidance rules, over one or several conditions.

Each rule is an affine combination of denoiser outputs whose weights sum to 1
(e.g. cfg = (1 - s) uncond + s cond). The conversions between x0, eps and v
predictions are affine in the output with coefficients that depend only on
(z, logsnr), which all the combined outputs share; an affine map commutes with
such a combination, so guiding x0 predictions gives exactly the x0 implied by
guiding eps or v predictions. The rules therefore take any of the three.

Scales may be Python floats, traced scalars, or [B] arrays (one per example).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import jax
import jax.numpy as jnp


def _scale_like(scale: jax.typing.ArrayLike, like: jax.Array) -> jax.Array:
    """Float32 scale, a [B] scale reshaped [B, 1, ..., 1] to broadcast on `like`."""
    scale = jnp.asarray(scale, jnp.float32)
    return jnp.reshape(scale, scale.shape + (1,) * (like.ndim - scale.ndim))


def cfg(cond: jax.Array, uncond: jax.Array, scale: jax.typing.ArrayLike) -> jax.Array:
    """Classifier-free guidance: uncond + scale (cond - uncond); scale 1 is cond."""
    return uncond + _scale_like(scale, cond) * (cond - uncond)


def _condition_set(key: Collection[str]) -> frozenset[str]:
    if isinstance(key, str):
        raise ValueError(
            f"Output key {key!r} must be a collection of condition names,"
            f" e.g. ({key!r},) or frozenset({{{key!r}}})."
        )
    return frozenset(key)


def multi_cfg(
    outputs: Mapping[Collection[str], jax.Array],
    chain: Sequence[str],
    scales: Mapping[str, jax.typing.ArrayLike],
) -> jax.Array:
    """Guidance over a chain of conditions added one at a time.

    With c_0 = {} and c_k = c_{k-1} + {chain[k-1]}, and e(c) the output given the
    conditions in c (the others dropped),

        e = e(c_0) + sum_k scales[chain[k-1]] * (e(c_k) - e(c_{k-1})).

    All scales 1 give e(c_n); a single condition is `cfg`; the chain
    ("image", "text") is InstructPix2Pix's dual guidance.

    Args:
      outputs: predictions keyed by the set of conditions they saw (any
        collection of names: tuple, frozenset); needs every prefix of `chain`.
      chain: condition names in the order they are added.
      scales: guidance scale per condition name; a name not given gets 1.

    Returns:
      The guided prediction.

    Raises:
      ValueError: on a missing prefix output, a repeated name in `chain`, or a
        scale for a name not in `chain`.
    """
    if len(set(chain)) != len(chain):
        raise ValueError(f"Condition chain {list(chain)} repeats a name.")
    unknown = set(scales) - set(chain)
    if unknown:
        raise ValueError(f"Scales for {sorted(unknown)} not in chain {list(chain)}.")
    by_set = {_condition_set(k): v for k, v in outputs.items()}
    prefixes = [frozenset(chain[:k]) for k in range(len(chain) + 1)]
    missing = [sorted(p) for p in prefixes if p not in by_set]
    if missing:
        raise ValueError(
            f"multi_cfg needs outputs for conditions {missing}; got"
            f" {[sorted(k) for k in by_set]}."
        )
    guided = by_set[prefixes[0]]
    for name, before, after in zip(chain, prefixes[:-1], prefixes[1:], strict=True):
        delta = by_set[after] - by_set[before]
        guided = guided + _scale_like(scales.get(name, 1.0), delta) * delta
    return guided


def dual_guidance(
    e_00: jax.Array,
    e_i0: jax.Array,
    e_it: jax.Array,
    s_text: jax.typing.ArrayLike,
    s_image: jax.typing.ArrayLike,
) -> jax.Array:
    """InstructPix2Pix / InstructCV guidance on an input image I and a text T.

    e = e(0,0) + s_T [e(I,T) - e(I,0)] + s_I [e(I,0) - e(0,0)]; with s_I = 1 it is
    cfg on the text with the image kept.
    """
    s_text = _scale_like(s_text, e_00)
    s_image = _scale_like(s_image, e_00)
    return e_00 + s_text * (e_it - e_i0) + s_image * (e_i0 - e_00)


def oscillating_scale(
    step_index: jax.typing.ArrayLike, scale: jax.typing.ArrayLike
) -> jax.Array:
    """Instruct-Imagen's alternating guidance: `scale` on even steps, 1 on odd.

    A scale of 1 is no guidance (cfg returns the conditional output). Works with
    a traced step index.
    """
    even = jnp.mod(jnp.asarray(step_index), 2) == 0
    return jnp.where(even, jnp.asarray(scale, jnp.float32), jnp.float32(1.0))


def interleaved_guidance(
    e_full: jax.Array,
    e_no_text: jax.Array,
    e_no_ctx: jax.Array,
    scale: jax.typing.ArrayLike,
    rng: jax.Array,
    eta: jax.typing.ArrayLike,
) -> jax.Array:
    """Re-Imagen's interleaved guidance, one coin per example.

    With probability eta guide on the text (neighbours kept):
    cfg(e_full, e_no_text, scale); otherwise guide on the neighbours (text
    kept): cfg(e_full, e_no_ctx, scale).

    Args:
      e_full: prediction with text and neighbours, [B, ...].
      e_no_text: prediction with the text dropped, [B, ...].
      e_no_ctx: prediction with the neighbours dropped, [B, ...].
      scale: guidance scale.
      rng: PRNG key of this sampling step.
      eta: probability of guiding on the text.
    """
    on_text = jax.random.bernoulli(rng, eta, (e_full.shape[0],))  # [B]
    on_text = jnp.reshape(on_text, on_text.shape + (1,) * (e_full.ndim - 1))
    uncond = jnp.where(on_text, e_no_text, e_no_ctx)
    return cfg(e_full, uncond, scale)
