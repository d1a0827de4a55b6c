"""Packing the real context items of a batch into fewer encoder slots.

A batch pads every example to K context items, but most examples carry fewer
(the CPU task mixture averages one item per example against K = 4). The
context encoder is the UNet's whole down-sampling stack, so encoding the
padding costs as much as encoding real items. Packing gathers the real items
into S < B*K slots, encodes those, and scatters the features back to [B, K];
items beyond S (a rare, unusually context-heavy batch) are dropped as if
masked. Static shapes throughout: S is a constant of the compiled step.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Packing:
    """Where each real item of a [B, K] batch goes.

    Attributes:
      source: [S] int32, the flat (b * K + k) item each slot holds (0 for an
        empty slot).
      slot: [B, K] int32, the slot holding each item, S where it has none
        (padding, or dropped for want of slots).
      kept: [B, K] bool, the items that got a slot.
    """

    source: jax.Array
    slot: jax.Array
    kept: jax.Array


def plan(mask: jax.Array, slots: int) -> Packing:
    """Assigns the items of `mask` [B, K] to `slots` slots, in order."""
    flat = mask.reshape(-1)
    position = jnp.cumsum(flat.astype(jnp.int32)) - 1  # slot of each real item
    kept = flat & (position < slots)
    slot = jnp.where(kept, position, slots)
    source = (
        jnp.zeros((slots,), jnp.int32)
        .at[slot]
        .set(jnp.arange(flat.shape[0], dtype=jnp.int32), mode="drop")
    )
    return Packing(
        source=source, slot=slot.reshape(mask.shape), kept=kept.reshape(mask.shape)
    )


def gather(x: jax.Array, packing: Packing) -> jax.Array:
    """[B, K, ...] per-item arrays -> [S, ...] in slot order."""
    flat = x.reshape((-1,) + x.shape[2:])
    return flat[packing.source]


def scatter(features: jax.Array, packing: Packing) -> jax.Array:
    """[S, ...] slot features -> [B, K, ...], zeros where an item has no slot."""
    padded = jnp.concatenate([features, jnp.zeros_like(features[:1])])
    return padded[packing.slot]
