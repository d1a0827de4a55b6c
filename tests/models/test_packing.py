"""Packing context items into encoder slots: gather/scatter is exact."""

import jax.numpy as jnp
import numpy as np

from imagen_jax.models import packing


def test_round_trip_keeps_real_items_and_zeroes_the_rest():
    mask = jnp.asarray([[1, 0, 1], [0, 0, 0], [1, 1, 0]], bool)
    x = jnp.arange(9 * 2, dtype=jnp.float32).reshape(3, 3, 2) + 1.0
    plan = packing.plan(mask, slots=5)
    packed = packing.gather(x, plan)
    assert packed.shape == (5, 2)
    np.testing.assert_array_equal(packed[:4], x[np.asarray(mask)])
    back = packing.scatter(packed * 10.0, plan)
    want = np.where(np.asarray(mask)[..., None], np.asarray(x) * 10.0, 0.0)
    np.testing.assert_array_equal(back, want)
    np.testing.assert_array_equal(plan.kept, mask)


def test_items_beyond_the_slots_are_dropped_in_order():
    mask = jnp.ones((2, 3), bool)
    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3) + 1.0
    plan = packing.plan(mask, slots=4)
    np.testing.assert_array_equal(plan.kept, [[True, True, True], [True, False, False]])
    back = packing.scatter(packing.gather(x, plan), plan)
    np.testing.assert_array_equal(back, [[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
