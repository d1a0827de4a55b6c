"""Distribution-level scores: FID and KID on the features of a network.

The oracle scores each sample against its own prompt; these compare the set of
samples with the set of reference images as distributions. The feature
network is pluggable (`Features`); the default is the image tower of the
in-project dual encoder (`retrieval.embedder`), from the run's retrieval
directory or a given embedder workdir.

    features = fid.embedder_features("runs/stage1/retrieval/embedder")
    rows = fid.distribution_rows("text_to_image/held_out_single",
                                 generated, reference, features)

FID (Heusel et al. 2017) is the Frechet distance of Gaussians fitted to the
two feature sets; it is biased upwards at small sample sizes, more so with
fewer samples than feature dimensions. KID (Binkowski et al. 2018) is the
unbiased squared MMD with the kernel k(x, y) = (x.y / d + 1)^3; it is centred
on zero for two samples of one distribution, so small sets can be compared.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections
import numpy as np

# Below this many images per set the rows carry no value, only a note.
MIN_IMAGES = 4


@dataclasses.dataclass(frozen=True)
class Features:
    """A feature network: `fn(uint8 [N, size, size, 3]) -> float [N, D]`.

    `name` is recorded in the rows; images are resized to `size` first (None:
    taken as they are).
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    size: int | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.uint8)
        if self.size is not None and images.shape[1:3] != (self.size, self.size):
            images = _resize(images, self.size)
        return np.asarray(self.fn(images), np.float64)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR))
            for x in images
        ]
    )


def embedder_features(path: str) -> Features:
    """The image tower of the dual encoder saved under `path` (`load_embedder`).

    Raises:
      ValueError: `path` holds no embedder, or a damaged one.
    """
    from imagen_jax.retrieval import embedder as embedder_lib

    model = embedder_lib.load_embedder(path)
    return Features(f"embedder:{path}", model.embed_images, model.image_size)


def default_embedder_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The run's embedder: `<retrieval dir>/embedder` (`retrieval.build`)."""
    retrieval = config.get("retrieval") or {}
    directory = retrieval.get("dir") or os.path.join(workdir, "retrieval")
    return os.path.join(directory, "embedder")


def frechet_distance_from_stats(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    The trace of the matrix square root is taken as the sum of the square
    roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric
    and has the eigenvalues of S_a S_b: stable for singular covariances.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    return float(max(value, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    eig, vec = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vec * np.sqrt(np.clip(eig, 0.0, None))) @ vec.T


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID of two feature sets [N, D] and [M, D] (N, M >= 2)."""
    stats = [
        (np.mean(f, axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], -1))
        for f in (np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64))
    ]
    return frechet_distance_from_stats(*stats[0], *stats[1])


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two sets under the cubic polynomial kernel."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_inception_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, num_subsets: int = 50, seed: int = 0
) -> tuple[float, float]:
    """KID of two feature sets: (the unbiased MMD^2 over all rows, its spread).

    The spread is the standard deviation of the estimate over `num_subsets`
    random half-size subsets (without replacement) divided by sqrt(2): the
    variance of this U-statistic falls as one over the set size.

    Raises:
      ValueError: a set has fewer than 4 rows (halves of 2 are the least).
    """
    x, y = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if min(len(x), len(y)) < MIN_IMAGES:
        raise ValueError(
            f"KID needs at least {MIN_IMAGES} rows per set, got {len(x)} and {len(y)}"
        )
    rng = np.random.default_rng(seed)
    halves = [
        _mmd2_unbiased(
            x[rng.choice(len(x), len(x) // 2, replace=False)],
            y[rng.choice(len(y), len(y) // 2, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return _mmd2_unbiased(x, y), float(np.std(halves) / np.sqrt(2.0))


def distribution_rows(
    task: str,
    generated: np.ndarray,
    reference: np.ndarray,
    features: Features | str,
) -> list[dict]:
    """Rows `fid` and `kid` (with `kid_std`) of `generated` against `reference`.

    Args:
      task: the rows' task label.
      generated: uint8 samples [N, H, W, 3].
      reference: uint8 reference images [M, H, W, 3] (the prompts' targets).
      features: the feature network, or why there is none: then the rows
        have value None and that reason as their `note`.
    """
    n = len(generated)
    base = {"task": task, "n": n}
    if isinstance(features, str):
        note = features
    elif min(n, len(reference)) < MIN_IMAGES:
        note = f"fewer than {MIN_IMAGES} images"
    else:
        fa, fb = features(generated), features(reference)
        kid, spread = kernel_inception_distance(fa, fb)
        info = {"features": features.name}
        return [
            {**base, "metric": "fid", "value": frechet_distance(fa, fb), **info},
            {**base, "metric": "kid", "value": kid, "kid_std": spread, **info},
        ]
    return [{**base, "metric": m, "value": None, "note": note} for m in ("fid", "kid")]
