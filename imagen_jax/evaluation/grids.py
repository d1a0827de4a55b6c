"""Sample grids written as PNG files."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles [N, H, W, 3] uint8 images into one grid image with white gutters."""
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_grid(images: np.ndarray, path: str, cols: int | None = None) -> str:
    """Writes a grid of [N, H, W, 3] uint8 images to `path`; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image_grid(images, cols)).save(path)
    return path
