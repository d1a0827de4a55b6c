"""Where does a classification model decide its answer? (session 24 probe)

`python docs/results/2026-12-01_s24_decision_probe.py WORKDIR` prints, at
several log-SNRs, the share of right answers in x0-hat when z_t is built from
the true answer image and from the opposite one (48 classification examples
of the run's world and query scenes, evaluation seed 1, all conditions
given). A model that
reads the answer from z_t scores 1 and 0; one that answers from the
conditions scores the same on both.
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

LEVELS = (-18.0, -12.0, -9.0, -7.0, -5.0, -3.0, 0.0)


def x0_function(loaded):
    """A jitted (params, batch, z, logsnr) -> x0-hat, every condition given."""
    model, cfg = loaded.model, loaded.config

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

    return x0_hat


def noise_levels(level: float) -> tuple[float, float]:
    """(alpha, sigma) of a variance-preserving z_t at log-SNR `level`."""
    return np.sqrt(1 / (1 + np.exp(-level))), np.sqrt(1 / (1 + np.exp(level)))


def answers_said(loaded, x0_hat, batch, z, level, colours) -> np.ndarray:
    """[n] bool: "present" read from x0-hat of z_t `z` at log-SNR `level`."""
    logsnr = jnp.full((z.shape[0],), level)
    x0 = np.asarray(x0_hat(loaded.params, batch, jnp.asarray(z), logsnr))
    pixels = ((np.clip(x0, -1, 1) + 1) * 127.5).astype(np.uint8)
    return np.array([task_metrics.classification_answer(p, *colours) for p in pixels])


def main(workdir: str, n: int = 48) -> None:
    loaded = inference.load(workdir)
    cfg = loaded.config
    res = cfg.data.resolution
    examples = [
        tasks.make_example(
            "classification",
            i,
            1,
            res,
            world=cfg.data.variant,
            query_objects=cfg.data.get("query_objects", 0),
            answers=tasks.answer_names(cfg.data.get("answers", "")),
        )
        for i in range(n)
    ]
    batch = evaluate._instruction_arrays(loaded, [e.instruction for e in examples])
    present = np.array([e.meta["present"] for e in examples])
    colours = examples[0].meta["answer_colours"]

    def image(answers):
        stack = [controls.classification_target(a, res, *colours) for a in answers]
        return np.stack(stack).astype(np.float32) / 127.5 - 1.0

    x0_hat = x0_function(loaded)
    rng = np.random.default_rng(0)
    for level in LEVELS:
        alpha, sigma = noise_levels(level)
        eps = rng.standard_normal((n, res, res, 3)).astype(np.float32)
        right = []
        for answers in (present, ~present):
            z = alpha * image(answers) + sigma * eps
            said = answers_said(loaded, x0_hat, batch, z, level, colours)
            right.append(float(np.mean(said == present)))
        print(
            f"logsnr {level:6.1f}: right with z from the true answer {right[0]:.2f}, "
            f"from the wrong answer {right[1]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
