"""Classification with one fixed query class (session 27 diagnostic).

Every classification example asks about "a red circle"; half of the scenes hold
one (a red circle of any size, fill and place), the others any other object.
With QUERY_CLASSES=K in the environment, the query is one of K classes.
The answer then depends on the image alone: no matching of the text against the
image is needed, but the object's local evidence must still be read out over
the whole image. Runs a module or script with the task so changed:

    python docs/results/2026-12-01_s27_fixed_query.py launch.train --config ...
    python docs/results/2026-12-01_s27_fixed_query.py \
        docs/results/2026-12-01_s24_decision_probe.py WORKDIR
"""

import dataclasses
import os
import runpy
import sys

sys.path.insert(0, ".")

from imagen_jax.data import shapes_world, tasks  # noqa: E402

QUERY = ("circle", "red")
# Environment QUERY_CLASSES=K (default 1): the query is one of K classes, QUERY
# and the next ones in (shape, colour) order, drawn per example.
_ALL = [(s, c) for s in shapes_world.SHAPES for c in shapes_world.COLOURS]
_FIRST = _ALL.index(QUERY)
CLASSES = [
    _ALL[(_FIRST + i) % len(_ALL)]
    for i in range(int(os.environ.get("QUERY_CLASSES", "1")))
]


def fixed_query(rng, w, templates):
    """`tasks._classification` with the query class one of CLASSES."""
    scene = tasks._random_scene(rng, w, counts=w.query_objects)
    present = bool(rng.random() < 0.5)
    query = CLASSES[int(rng.integers(len(CLASSES)))] if len(CLASSES) > 1 else QUERY
    obj = scene.objects[0]
    if present:
        obj = dataclasses.replace(obj, shape=query[0], colour=query[1])
    elif (obj.shape, obj.colour) == query:
        other = [c for c in shapes_world.COLOURS if c != query[1]]
        colour = "green" if len(CLASSES) == 1 else other[int(rng.integers(5))]
        obj = dataclasses.replace(obj, colour=colour)
    scene = shapes_world.Scene((obj,), scene.background)
    return tasks._classification_example(rng, w, templates, scene, query, present)


if __name__ == "__main__":
    # Tasks are frozen dataclasses; the data pipeline reads them in threads.
    object.__setattr__(tasks.TASKS["classification"], "build", fixed_query)
    target, sys.argv = sys.argv[1], sys.argv[1:]
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
