"""Model-level functions of imagen.py: the marker text loss."""

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.models.imagen import item_markers, marker_text_loss

V, D = 8, 8
M1, M2 = 6, 7  # the markers' token ids


def _case(at_m1, at_m2):
    """One instruction "[m1] w [m2]" whose encoding is `at_m1` / `at_m2` at
    the markers, and two items: "[m1] 3" and "[m2] 4 5"."""
    tokens = jnp.array([[M1, 1, M2, 0]])
    mask = jnp.array([[True, True, True, False]])
    encoding = jnp.zeros((1, 4, D)).at[0, 0].set(at_m1).at[0, 2].set(at_m2)
    ctx_tokens = jnp.array([[[M1, 3, 0], [M2, 4, 5]]])
    ctx_text_mask = jnp.array([[[True, True, False], [True, True, True]]])
    return tokens, mask, encoding, ctx_tokens, ctx_text_mask


def _want(embedding, rows):
    """The mean cross-entropy written out: (encoding, item token) pairs."""
    total = 0.0
    for enc, token in rows:
        logits = embedding @ np.asarray(enc) / np.sqrt(D)
        logits = logits - logits.max()
        total += np.log(np.exp(logits).sum()) - logits[token]
    return total / len(rows)


def test_marker_text_loss_is_the_items_text_cross_entropy_at_their_markers():
    embedding = np.eye(V, D) * 3.0
    e3, e4, e5 = (jnp.asarray(embedding[i]) for i in (3, 4, 5))
    args = _case(e3, (e4 + e5) * 2.0)
    keep = jnp.array([[True, True]])
    got = float(marker_text_loss(embedding, *args, keep))
    want = _want(embedding, [(e3, 3), ((e4 + e5) * 2, 4), ((e4 + e5) * 2, 5)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Each marker reading the other item's text scores worse.
    swapped = _case((e4 + e5) * 2.0, e3)
    assert float(marker_text_loss(embedding, *swapped, keep)) > got + 1.0
    # An item masked out adds nothing: only item 1's token counts.
    only_first = float(marker_text_loss(embedding, *args, jnp.array([[True, False]])))
    np.testing.assert_allclose(only_first, _want(embedding, [(e3, 3)]), rtol=1e-5)


def test_marker_text_loss_skips_absent_markers_and_leaves_the_embeddings():
    embedding = jnp.asarray(np.random.default_rng(0).normal(size=(V, D)))
    tokens, mask, encoding, ctx_tokens, ctx_text_mask = _case(jnp.ones(D), -jnp.ones(D))
    keep = jnp.array([[True, True]])
    # A dropped instruction (mask off) names no marker: nothing counts.
    dropped = marker_text_loss(
        embedding, tokens, mask & False, encoding, ctx_tokens, ctx_text_mask, keep
    )
    assert float(dropped) == 0.0
    # Gradients reach the encoding, not the token embeddings.
    grads = jax.grad(marker_text_loss, argnums=(0, 3))(
        embedding, tokens, mask, encoding, ctx_tokens, ctx_text_mask, keep
    )
    assert float(jnp.abs(grads[0]).max()) == 0.0
    assert float(jnp.abs(grads[1][0, 0]).max()) > 0.0
    # The word between the markers and the padding read nothing.
    assert float(jnp.abs(grads[1][0, 1]).max()) == 0.0
    assert float(jnp.abs(grads[1][0, 3]).max()) == 0.0


def _log_probs(embedding, enc):
    logits = embedding @ np.asarray(enc) / np.sqrt(D)
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def test_marker_contrast_is_the_items_at_their_markers_against_swapped():
    embedding = np.eye(V, D) * 3.0
    reads = (jnp.asarray(embedding[3]), jnp.asarray(embedding[4] + embedding[5]))
    keep = jnp.array([[True, True]])
    got = float(marker_text_loss(embedding, *_case(*reads), keep, form="contrast"))
    # Written out: s[k][j] is item j's tokens' summed log-probabilities under
    # marker k's reading; the logistic loss of s11 + s22 - s12 - s21.
    items = ([3], [4, 5])
    s = [[_log_probs(embedding, enc)[t].sum() for t in items] for enc in reads]
    margin = s[0][0] + s[1][1] - s[0][1] - s[1][0]
    np.testing.assert_allclose(got, np.log1p(np.exp(-margin)), rtol=1e-5)
    assert margin > 1.0
    # The roles the other way round: the margin's sign flips.
    swapped = marker_text_loss(embedding, *_case(*reads[::-1]), keep, form="contrast")
    np.testing.assert_allclose(float(swapped), np.log1p(np.exp(margin)), rtol=1e-5)
    # One item counted is nothing to tell apart.
    one = marker_text_loss(
        embedding, *_case(*reads), jnp.array([[True, False]]), form="contrast"
    )
    assert float(one) == 0.0


def test_marker_contrast_ignores_what_the_items_texts_share():
    embedding = jnp.asarray(np.random.default_rng(1).normal(size=(V, D)))
    tokens, mask, encoding, ctx_tokens, ctx_text_mask = _case(jnp.ones(D), -jnp.ones(D))
    keep = jnp.array([[True, True]])
    # Both items "<marker> 4 5": the same text under every marker, log 2
    # whatever the encoding, and no gradient to it.
    same = ctx_tokens.at[0, 0].set(jnp.array([M1, 4, 5]))
    both = jnp.ones_like(ctx_text_mask)

    def loss(encoding):
        return marker_text_loss(
            embedding, tokens, mask, encoding, same, both, keep, form="contrast"
        )

    np.testing.assert_allclose(float(loss(encoding)), np.log(2.0), rtol=1e-6)
    assert float(jnp.abs(jax.grad(loss)(encoding)).max()) < 1e-6
    # A shared token added to both items changes nothing.
    plain = marker_text_loss(
        embedding,
        tokens,
        mask,
        encoding,
        ctx_tokens,
        ctx_text_mask,
        keep,
        form="contrast",
    )
    three = jnp.array([[[M1, 3, 2, 0], [M2, 4, 5, 2]]])
    three_mask = jnp.array([[[True, True, True, False], [True, True, True, True]]])
    padded = marker_text_loss(
        embedding, tokens, mask, encoding, three, three_mask, keep, form="contrast"
    )
    np.testing.assert_allclose(float(padded), float(plain), rtol=1e-5)


def test_item_markers_find_the_marker_wherever_the_tokenizer_puts_it():
    from imagen_jax.instructions import MARKERS
    from imagen_jax.text import tokenizers

    # Sentencepiece writes the space before a marker as a piece of its own:
    # "▁ [ref#2] ▁an image" (ids 259, 513, ...); padded items have no marker.
    tokens = jnp.array([[[259, 513, 261, 315, 0], [0, 0, 0, 0, 0]]])
    mask = jnp.array([[[True, True, True, True, False], [False] * 5]])
    np.testing.assert_array_equal(item_markers(tokens, mask), [[513, -1]])
    # The byte tokenizer puts it first; every item of an instruction is found.
    tok = tokenizers.get_tokenizer("byte", extra_tokens=MARKERS)
    ids, mask = tok.encode_batch(["[ref#1] a style", "[ref#3] the content"], 16)
    np.testing.assert_array_equal(
        item_markers(jnp.asarray(ids)[None], jnp.asarray(mask)[None]),
        [[tok.extra_token_id("[ref#1]"), tok.extra_token_id("[ref#3]")]],
    )
