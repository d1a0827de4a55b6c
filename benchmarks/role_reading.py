"""Can a checkpoint's text encoder learn to read role_transfer's roles from
the wording, when told them? A supervised fit, one per position-bias scale.

    python -m benchmarks.role_reading --workdir runs/cpu_t2i --scales 1,10 \
        --out docs/results/2026-12-05_s51_role_reading.json

role_transfer's instruction alone says which of [ref#1] / [ref#2] is the
content ("Give [ref#2] the style of [ref#1]."). This fits the workdir's text
encoder and a linear head on (its encoding at [ref#1]) - (its encoding at
[ref#2]) to that answer (logistic loss, Adam) on fresh training-template
examples every step, with the encoder's relative position bias first
multiplied by each `--scales` value, and reports the accuracy on held-out
examples of the training templates ("seen") and of the unseen phrasings
("unseen"); chance is 0.5. An encoder that cannot get there when told the
answer cannot get there from a diffusion loss either. The head starts at a
random direction, so the encoder receives gradients from the first step.
With `--frozen` only the head is fitted: how linearly the encoder as
trained already holds the roles (a larger `--learning_rate` suits it).
Prints one JSON line per evaluation and the record.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

import benchmarks
from imagen_jax import xla_flags

xla_flags.apply_defaults()

flags.DEFINE_string("workdir", None, "The checkpoint's workdir.", required=True)
flags.DEFINE_list("scales", ["1", "10"], "Multipliers of the position bias.")
flags.DEFINE_integer("steps", 200, "Training steps per scale.")
flags.DEFINE_integer("batch_size", 64, "Examples per step.")
flags.DEFINE_integer("eval_every", 50, "Steps between evaluations.")
flags.DEFINE_integer("eval_examples", 256, "Held-out examples per set.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam's learning rate.")
flags.DEFINE_bool("frozen", False, "Fit the linear head only, the encoder as trained.")
flags.DEFINE_string("out", None, "Also write the JSON record to this file.")
FLAGS = flags.FLAGS


def _examples(loaded, count, seed, unseen):
    """role_transfer's instruction tokens, mask and whether [ref#1] is the
    content, for `count` examples of `seed`."""
    import numpy as np

    from imagen_jax.data import tasks
    from imagen_jax.evaluation import evaluate

    d = loaded.config.data
    examples = [
        tasks.make_example(
            "role_transfer", i, seed, d.resolution, unseen, world=d.variant
        )
        for i in range(count)
    ]
    arrays = evaluate._instruction_arrays(loaded, [e.instruction for e in examples])
    first = np.array([e.meta["content_ref"] == "[ref#1]" for e in examples])
    return arrays["text_tokens"], arrays["text_mask"], first.astype(np.float32)


def fit(loaded, scale: float, held: dict, log) -> list[dict]:
    """The supervised fit at one position-bias scale, scored on `held` (set
    name -> examples): one row per evaluation."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from imagen_jax.models.imagen import Imagen, encoding_at

    markers = np.array(
        [loaded.tokenizer.extra_token_id(m) for m in ("[ref#1]", "[ref#2]")]
    )
    text = dict(loaded.params["text_encoder"])
    relpos = text["relpos_bias"]
    text["relpos_bias"] = {"rel_embedding": relpos["rel_embedding"] * scale}

    def logits(p, tokens, mask):
        encoder = jax.lax.stop_gradient(p["text"]) if FLAGS.frozen else p["text"]
        params = {**loaded.params, "text_encoder": encoder}
        encoding = loaded.model.apply(
            {"params": params}, tokens, mask, method=Imagen.encode_text
        )
        wanted = jnp.broadcast_to(markers, (tokens.shape[0], 2))
        read, _ = encoding_at(tokens, mask, encoding, wanted)
        return (read[:, 0] - read[:, 1]) @ p["w"] + p["b"]

    def loss(p, tokens, mask, first):
        return optax.sigmoid_binary_cross_entropy(logits(p, tokens, mask), first).mean()

    width = loaded.model.text_config.d_model
    head = jax.random.normal(jax.random.PRNGKey(0), (width,)) / np.sqrt(width)
    p = {"text": text, "w": head, "b": jnp.zeros(())}
    opt = optax.adam(FLAGS.learning_rate)
    state = opt.init(p)

    @jax.jit
    def step(p, state, tokens, mask, first):
        value, grads = jax.value_and_grad(loss)(p, tokens, mask, first)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    @jax.jit
    def accuracy(p, tokens, mask, first):
        return jnp.mean((logits(p, tokens, mask) > 0) == (first > 0.5))

    rows, start = [], time.time()
    for i in range(FLAGS.steps + 1):
        if i % FLAGS.eval_every == 0:
            row = {"scale": scale, "step": i}
            row.update({k: float(accuracy(p, *v)) for k, v in held.items()})
            row["seconds"] = round(time.time() - start, 1)
            log(row)
            rows.append(row)
        if i < FLAGS.steps:
            batch = _examples(loaded, FLAGS.batch_size, i, False)
            p, state, _ = step(p, state, *batch)
    return rows


def main(argv):
    del argv
    from imagen_jax import inference, machine

    loaded = inference.load(FLAGS.workdir)

    def log(row):
        print(json.dumps(row), flush=True)

    # The held-out examples, built once for every scale.
    held = {
        name: _examples(loaded, FLAGS.eval_examples, 10**6, unseen)
        for name, unseen in (("seen", False), ("unseen", True))
    }
    rows = [r for s in FLAGS.scales for r in fit(loaded, float(s), held, log)]
    record = {
        "workdir": FLAGS.workdir,
        "step": int(loaded.step),
        "cpu": machine.cpu_model(),
        "steps": FLAGS.steps,
        "batch_size": FLAGS.batch_size,
        "learning_rate": FLAGS.learning_rate,
        "frozen": FLAGS.frozen,
        "eval_examples": FLAGS.eval_examples,
        "rows": rows,
    }
    benchmarks.emit(record, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
