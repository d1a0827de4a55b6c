"""Which classification examples does a model answer from the conditions?
(session 27)

Run through the fixed-query script, so that the examples are the ones the
model was trained on:

    python docs/results/2026-12-01_s27_fixed_query.py \
        docs/results/2026-12-01_s27_split_probe.py WORKDIR

x0 at log-SNR -18 and -12 (z_t from the true answer) for up to 48 examples
(evaluation seed 1) of each group: present; absent with an object in the
queried colour; absent with an object in the queried shape; absent, other.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax import conditioning, inference
from imagen_jax.data import controls, tasks
from imagen_jax.diffusion import losses
from imagen_jax.evaluation import evaluate, task_metrics
from imagen_jax.models.imagen import Imagen


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
    model, cfg = loaded.model, loaded.config
    res = cfg.data.resolution
    groups = {}
    for i in range(192):
        e = tasks.make_example("classification", i, 1, res, world=cfg.data.variant)
        groups.setdefault(group(e), []).append(e)

    @jax.jit
    def x0_hat(params, batch, z, logsnr):
        yes = jnp.ones(z.shape[:1], bool)
        masks = conditioning.condition_masks(
            batch, model.conditioning, text=yes, context=yes, image=yes
        )
        variables = {"params": params}
        cond = model.apply(variables, batch, masks, method=Imagen.condition)
        text, text_mask = cond.pop("text"), cond.pop("text_mask")
        out = model.apply(
            variables, z, logsnr, text, text_mask, method=Imagen.denoise, **cond
        )
        return losses.predict_x0(out, z, logsnr, cfg.diffusion.param)

    rng = np.random.default_rng(0)
    for name, examples in sorted(groups.items()):
        examples = examples[:48]
        batch = evaluate._instruction_arrays(loaded, [e.instruction for e in examples])
        present = np.array([e.meta["present"] for e in examples])
        answers = [controls.classification_target(p, res) for p in present]
        image = np.stack(answers).astype(np.float32) / 127.5 - 1.0
        right = []
        for level in (-18.0, -12.0):
            alpha = np.sqrt(1 / (1 + np.exp(-level)))
            sigma = np.sqrt(1 / (1 + np.exp(level)))
            noise = rng.standard_normal(image.shape).astype(np.float32)
            z = jnp.asarray(alpha * image + sigma * noise)
            x0 = x0_hat(loaded.params, batch, z, jnp.full((len(examples),), level))
            pixels = ((np.clip(np.asarray(x0), -1, 1) + 1) * 127.5).astype(np.uint8)
            said = np.array([task_metrics.classification_answer(p) for p in pixels])
            right.append(float(np.mean(said == present)))
        print(
            f"{name:38s} n={len(examples):3d}  right at log-SNR -18 {right[0]:.2f}, "
            f"at -12 {right[1]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
