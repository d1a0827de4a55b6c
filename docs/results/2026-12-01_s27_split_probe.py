"""Which classification examples does a model answer from the conditions?
(session 27)

Run through the fixed-query script, so that the examples are the ones the
model was trained on:

    python docs/results/2026-12-01_s27_fixed_query.py \
        docs/results/2026-12-01_s27_split_probe.py WORKDIR

x0 at log-SNR -18 and -12 (z_t from the true answer) for up to 48 examples
(evaluation seed 1) of each group: present; absent with an object in the
queried colour; absent with an object in the queried shape; absent, other.
The answer words and colours are the model's own (`data.answers`).
"""

import os
import runpy
import sys

import numpy as np

from imagen_jax import inference
from imagen_jax.data import controls, tasks
from imagen_jax.evaluation import evaluate

# The decision probe's model call and answer reading (its name starts with a
# date, so it is loaded by path).
probe = runpy.run_path(
    os.path.join(os.path.dirname(__file__), "2026-12-01_s24_decision_probe.py")
)


def group(example) -> str:
    obj, (shape, colour) = example.meta["scene"].objects[0], example.meta["query_class"]
    if example.meta["present"]:
        return "present"
    if obj.colour == colour:
        return "absent, object in the queried colour"
    if obj.shape == shape:
        return "absent, object in the queried shape"
    return "absent, other"


def main(workdir: str) -> None:
    loaded = inference.load(workdir)
    cfg = loaded.config
    res = cfg.data.resolution
    groups = {}
    answers = tasks.answer_names(cfg.data.get("answers", ""))
    for i in range(192):
        e = tasks.make_example(
            "classification", i, 1, res, world=cfg.data.variant, answers=answers
        )
        groups.setdefault(group(e), []).append(e)

    x0_hat = probe["x0_function"](loaded)

    rng = np.random.default_rng(0)
    for name, examples in sorted(groups.items()):
        examples = examples[:48]
        batch = evaluate._instruction_arrays(loaded, [e.instruction for e in examples])
        present = np.array([e.meta["present"] for e in examples])
        colours = examples[0].meta["answer_colours"]
        targets = [controls.classification_target(p, res, *colours) for p in present]
        image = np.stack(targets).astype(np.float32) / 127.5 - 1.0
        right = []
        for level in (-18.0, -12.0):
            alpha, sigma = probe["noise_levels"](level)
            noise = rng.standard_normal(image.shape).astype(np.float32)
            z = alpha * image + sigma * noise
            said = probe["answers_said"](loaded, x0_hat, batch, z, level, colours)
            right.append(float(np.mean(said == present)))
        print(
            f"{name:38s} n={len(examples):3d}  right at log-SNR -18 {right[0]:.2f}, "
            f"at -12 {right[1]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
