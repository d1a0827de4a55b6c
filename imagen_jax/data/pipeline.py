"""grain input pipeline: a random-access source -> fixed-shape numpy batches.

Each host reads its own slice of the source; the trainer assembles the global
batch with `jax.make_array_from_process_local_data`. Batches hold no Python
objects: `image [B,H,W,3] uint8`, `text_tokens [B,L] int32`,
`text_mask [B,L] bool`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grain
import ml_collections
import numpy as np

from imagen_jax.data import shapes_world
from imagen_jax.text.tokenizers import Tokenizer


def _shapes_world_source(cfg: ml_collections.ConfigDict, split: str):
    # Imported here: tfds pulls in TensorFlow, which only data loading needs.
    from imagen_jax.data.tfds import shapes_world as shapes_world_tfds

    return shapes_world_tfds.load_source(cfg.data_dir, split, resolution=cfg.resolution)


_SOURCES: dict[str, Callable] = {"shapes_world": _shapes_world_source}


def get_source(data_config: ml_collections.ConfigDict, split: str):
    """The random-access source named by `data_config.name`."""
    if data_config.name not in _SOURCES:
        raise ValueError(
            f"unknown dataset {data_config.name!r}; known: {sorted(_SOURCES)}"
        )
    return _SOURCES[data_config.name](data_config, split)


def _as_str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class Tokenize(grain.transforms.Map):
    """Keeps the image as uint8 and turns the caption into padded tokens."""

    def __init__(self, tokenizer: Tokenizer, max_len: int, resolution: int):
        self._tokenizer = tokenizer
        self._max_len = max_len
        self._resolution = resolution

    def map(self, element: dict) -> dict:
        image = np.asarray(element["image"], np.uint8)
        if image.shape != (self._resolution, self._resolution, 3):
            raise ValueError(
                f"dataset image has shape {image.shape}; the config expects "
                f"({self._resolution}, {self._resolution}, 3)"
            )
        ids, mask = self._tokenizer.encode_batch(
            [_as_str(element["caption"])], self._max_len
        )
        return {"image": image, "text_tokens": ids[0], "text_mask": mask[0]}


def _max_objects_filter(max_objects: int) -> Callable[[dict], bool]:
    def keep(element: dict) -> bool:
        scene = shapes_world.Scene.from_dict(json.loads(_as_str(element["scene"])))
        return len(scene.objects) <= max_objects

    return keep


def train_dataset(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Shuffled, repeated, per-host batches of `batch_size // process_count`."""
    d = config.data
    if d.batch_size % process_count:
        raise ValueError(
            f"data.batch_size {d.batch_size} is not divisible by the "
            f"{process_count} processes"
        )
    ds = grain.MapDataset.source(get_source(d, "train"))
    ds = ds[process_index::process_count].seed(config.seed).shuffle().repeat()
    if d.get("max_objects", 0) and d.name == "shapes_world":
        ds = ds.filter(_max_objects_filter(d.max_objects))
    ds = ds.map(Tokenize(tokenizer, d.max_text_len, d.resolution))
    options = grain.ReadOptions(
        num_threads=d.num_threads, prefetch_buffer_size=d.prefetch
    )
    # Filtered-out elements are skipped by the iterator before batching.
    ds = ds.to_iter_dataset(options)
    return ds.batch(d.batch_size // process_count, drop_remainder=True)
