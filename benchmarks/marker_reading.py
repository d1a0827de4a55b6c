"""Does the instruction's encoding at each marker name its own item's text
rather than the other item's? The reading `text.marker_text_loss` trains,
scored on role_transfer_told (the items' texts say their roles).

    python -m benchmarks.marker_reading --workdir runs/pos_marker \
        --out docs/results/2026-12-06_s53_marker_reading_pos_marker.json

For each example, the cross-entropy of the items' texts under logits
(encoding at a marker) . (token embeddings) / sqrt(D), as in
`imagen.marker_text_loss`, with each item read at its own marker ("right")
and at the other item's ("wrong"). Accuracy is the share of examples where
right < wrong (chance 0.5), on held-out examples of the training phrasings
("seen") and of the unseen ones. A loss that falls while right equals wrong
has learnt what items' texts say in general, not which item has which role.
"""

from __future__ import annotations

from absl import app, flags

import benchmarks
from imagen_jax import xla_flags

xla_flags.apply_defaults()

flags.DEFINE_string("workdir", None, "The checkpoint's workdir.", required=True)
flags.DEFINE_integer("examples", 256, "Held-out examples per set.")
flags.DEFINE_string("out", None, "Also write the JSON record to this file.")
FLAGS = flags.FLAGS


def score(loaded, unseen: bool, count: int) -> dict:
    """Accuracy and mean per-item cross-entropies, right and wrong reader."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from imagen_jax.data import tasks
    from imagen_jax.evaluation import evaluate
    from imagen_jax.models import t5
    from imagen_jax.models.imagen import Imagen, marker_reading

    d, params = loaded.config.data, loaded.params
    examples = [
        tasks.make_example(
            "role_transfer_told", i, 10**6, d.resolution, unseen, world=d.variant
        )
        for i in range(count)
    ]
    a = evaluate._instruction_arrays(loaded, [e.instruction for e in examples])
    encoding = loaded.model.apply(
        {"params": params}, a["text_tokens"], a["text_mask"], method=Imagen.encode_text
    )
    tokens = jnp.asarray(a["ctx_tokens"][:, :2]).astype(jnp.int32)  # [B,2,Lc]
    # The loss's own reading: log-probabilities at each marker [B,2,V] and
    # the item tokens scored [B,2,Lc].
    logp, scored = marker_reading(
        t5.token_embedding(params["text_encoder"]),
        a["text_tokens"],
        a["text_mask"],
        encoding,
        tokens,
        a["ctx_text_mask"][:, :2],
        np.ones(tokens.shape[:2], bool),
    )

    def cross_entropy(reader: int, item: int) -> jax.Array:
        picked = jnp.take_along_axis(logp[:, reader], tokens[:, item], axis=-1)
        weight = scored[:, item]
        return -(picked * weight).sum(-1) / jnp.maximum(weight.sum(-1), 1)

    right = (cross_entropy(0, 0) + cross_entropy(1, 1)) / 2
    wrong = (cross_entropy(0, 1) + cross_entropy(1, 0)) / 2
    return {
        "accuracy": float(jnp.mean(right < wrong)),
        "right": float(right.mean()),
        "wrong": float(wrong.mean()),
    }


def main(argv):
    del argv
    from imagen_jax import inference, machine

    loaded = inference.load(FLAGS.workdir)
    record = {
        "workdir": FLAGS.workdir,
        "step": int(loaded.step),
        "cpu": machine.cpu_model(),
        "examples": FLAGS.examples,
        **{
            name: score(loaded, unseen, FLAGS.examples)
            for name, unseen in (("seen", False), ("unseen", True))
        },
    }
    benchmarks.emit(record, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
