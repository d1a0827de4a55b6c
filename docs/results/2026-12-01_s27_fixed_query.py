"""Classification with one fixed query class (session 27 diagnostic).

Every classification example asks about "a red circle"; half of the scenes hold
one (a red circle of any size, fill and place), the others any other object.
The answer then depends on the image alone: no matching of the text against the
image is needed, but the object's local evidence must still be read out over
the whole image. Runs a module or script with the task so changed:

    python docs/results/2026-12-01_s27_fixed_query.py launch.train --config ...
    python docs/results/2026-12-01_s27_fixed_query.py \
        docs/results/2026-12-01_s24_decision_probe.py WORKDIR
"""

import dataclasses
import runpy
import sys

sys.path.insert(0, ".")

from imagen_jax.data import controls, shapes_world, tasks  # noqa: E402
from imagen_jax.instructions import MultiModalInstruction  # noqa: E402

QUERY = ("circle", "red")


def fixed_query(rng, w, templates):
    """`tasks._classification` with the query class always QUERY."""
    scene = tasks._random_scene(rng, w, counts=w.query_objects)
    present = bool(rng.random() < 0.5)
    obj = scene.objects[0]
    if present:
        obj = dataclasses.replace(obj, shape=QUERY[0], colour=QUERY[1])
    elif (obj.shape, obj.colour) == QUERY:
        obj = dataclasses.replace(obj, colour="green")
    scene = shapes_world.Scene((obj,), scene.background)
    a_object = f"a {QUERY[1]} {QUERY[0]}"
    _, template = tasks._pick(rng, templates, a_object=a_object)
    text = tasks._name_answers(template, w.answers).format(a_object=a_object)
    colours = tuple(controls.ANSWER_COLOURS[n] for n in w.answers)
    meta = {
        "scene": scene,
        "query_class": QUERY,
        "present": present,
        "template": template,
        "answer_colours": colours,
    }
    image = shapes_world.render(scene, w.resolution)
    target = controls.classification_target(present, w.resolution, *colours)
    return MultiModalInstruction(text, input_image=image), target, meta


if __name__ == "__main__":
    # Tasks are frozen dataclasses; the data pipeline reads them in threads.
    object.__setattr__(tasks.TASKS["classification"], "build", fixed_query)
    target, sys.argv = sys.argv[1], sys.argv[1:]
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
