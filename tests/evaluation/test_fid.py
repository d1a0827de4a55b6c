"""FID and KID: closed-form Gaussian cases, the KID's null and shift, the rows."""

import numpy as np
import pytest
import scipy.linalg

from imagen_jax.evaluation import fid


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    # 1-D by hand: N(0, 1) vs N(1, 4): 1 + (1 + 4 - 2 * sqrt(1 * 4)) = 2.
    assert fid.frechet_distance_from_stats(
        np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)
    ) == pytest.approx(2.0)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = fid.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(want)  # 5 + (4 + 1 + 0) = 10
    assert want == pytest.approx(10.0)


def test_frechet_distance_of_non_commuting_covariances_matches_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 5))
    cov_a, cov_b = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu_a, mu_b = rng.normal(size=(2, 5))
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    want = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    got = fid.frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)
    assert got == pytest.approx(want, rel=1e-6)
    # A singular covariance (fewer samples than dimensions) stays finite.
    low = a[:, :2] @ a[:, :2].T
    assert np.isfinite(fid.frechet_distance_from_stats(mu_a, low, mu_b, cov_b))


def test_frechet_distance_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 2)) * [1.0, 2.0]
    y = rng.normal(size=(20000, 2)) * [3.0, 1.0] + [1.0, 0.0]
    # 1 + (1 - 3)^2 + (2 - 1)^2 = 6.
    assert fid.frechet_distance(x, y) == pytest.approx(6.0, rel=0.05)
    assert fid.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_zero_within_its_spread_for_one_distribution_and_positive_shifted():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 200, 16))
    same, spread = fid.kernel_inception_distance(x, y)
    assert spread > 0 and abs(same) < 3 * spread
    shifted, spread = fid.kernel_inception_distance(x, y + 0.5)
    assert shifted > 3 * spread and shifted > 0
    # One set against itself is no pair of independent samples: the cross term
    # counts each row with itself, so the estimate sits O(1/n) below zero.
    ident, _ = fid.kernel_inception_distance(x, x)
    assert -0.1 * shifted < ident <= 0
    with pytest.raises(ValueError, match="at least"):
        fid.kernel_inception_distance(x[:3], y)


def _images(seed, n=12, size=16, level=100):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, 30, size=(n, size, size, 3)), 0, 255).astype(
        np.uint8
    )


def test_rows_on_a_feature_network_and_without_one():
    pooled = fid.Features("pooled", lambda x: x.reshape(len(x), 4, -1).mean(-1), 8)
    gen, ref = _images(0), _images(1, level=160)
    rows = {r["metric"]: r for r in fid.distribution_rows("t", gen, ref, pooled)}
    assert rows["fid"]["value"] > 0 and rows["fid"]["features"] == "pooled"
    assert rows["kid"]["value"] > 3 * rows["kid"]["kid_std"]
    assert rows["fid"]["n"] == 12 and rows["fid"]["task"] == "t"
    missing = fid.distribution_rows("t", gen, ref, "no feature network (why)")
    assert [(r["metric"], r["value"], r["note"]) for r in missing] == [
        ("fid", None, "no feature network (why)"),
        ("kid", None, "no feature network (why)"),
    ]
    few = fid.distribution_rows("t", gen[:2], ref[:2], pooled)
    assert all(r["value"] is None and "fewer" in r["note"] for r in few)


def test_embedder_image_tower_is_the_default_network(tmp_path):
    import flax.linen as nn
    import jax

    from imagen_jax.retrieval import embedder as embedder_lib

    cfg = embedder_lib.default_config()
    cfg.model.image_widths = (8,)
    cfg.model.text_width, cfg.text.max_len = 16, 8
    model = embedder_lib.make_model(cfg, embedder_lib.make_tokenizer(cfg).vocab_size)
    params = nn.unbox(jax.jit(lambda: embedder_lib.init_params(model, 16, 0))())
    path = str(tmp_path / "embedder")
    embedder_lib.save_embedder(path, params, cfg, image_size=16)
    features = fid.embedder_features(path)
    # 32 px samples are resized to the 16 px the embedder takes.
    rows = fid.distribution_rows(
        "t", _images(0, size=32), _images(1, size=32), features
    )
    assert rows[0]["features"] == f"embedder:{path}"
    assert all(np.isfinite(r["value"]) for r in rows)
    with pytest.raises(ValueError, match="embedder"):
        fid.embedder_features(str(tmp_path / "nothing"))


def test_missing_embedder_is_named_as_given(tmp_path, monkeypatch):
    """The message (which eval rows carry) names the path relative as given,
    not the machine's absolute directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        fid.embedder_features("runs/x/embedder")
    assert "runs/x/embedder/" in str(e.value)
    assert str(tmp_path) not in str(e.value)
