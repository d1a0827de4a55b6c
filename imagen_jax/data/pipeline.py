"""grain input pipeline: a random-access source -> fixed-shape numpy batches.

Each host reads its own slice of the source; the trainer assembles the global
batch with `jax.make_array_from_process_local_data`. Batches hold no Python
objects: `image [B,H,W,3] uint8`, `text_tokens [B,L] int32`,
`text_mask [B,L] bool`; instruction datasets add `ctx_images [B,K,H,W,3]`,
`ctx_tokens [B,K,Lc]`, `ctx_text_mask [B,K,Lc]`, `ctx_mask [B,K]`,
`cond_image [B,H,W,3]` and `cond_image_mask [B]`.
"""

from __future__ import annotations

from collections.abc import Callable

import grain
import ml_collections
import numpy as np

from imagen_jax.text.tokenizers import Tokenizer


def _shapes_world_source(cfg: ml_collections.ConfigDict, split: str):
    # Imported here: tfds pulls in TensorFlow, which only data loading needs.
    from imagen_jax.data.tfds import shapes_world as shapes_world_tfds

    return shapes_world_tfds.load_source(
        cfg.data_dir, split, resolution=cfg.resolution, variant=cfg.variant
    )


class TaskSource:
    """Random access to the ShapesWorld task mixture (procedural, no files).

    Example `i` draws its task from the mixture with a seed of its own, so the
    stream is deterministic and any host can read any index.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, split: str):
        from imagen_jax.data import tasks

        self._tasks = tasks
        weights = dict(cfg.mixture) if cfg.get("mixture") else dict(tasks.MIXTURE)
        unknown = sorted(set(weights) - set(tasks.TASKS))
        if unknown:
            raise ValueError(
                f"config.data.mixture names unknown tasks {unknown}; "
                f"known: {sorted(tasks.TASKS)}"
            )
        self._names = sorted(weights)
        p = np.array([weights[n] for n in self._names], np.float64)
        self._p = p / p.sum()
        self._seed = cfg.seed + (0 if split == "train" else 1)
        self._resolution = cfg.resolution
        tasks.get_world(cfg.variant, cfg.resolution)  # fail early on a bad name
        self._world = cfg.variant
        self._plain = bool(cfg.get("plain_text", False))
        self._size = cfg.num_examples

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self._seed, int(index)))
        name = self._names[rng.choice(len(self._names), p=self._p)]
        return self._tasks.make_example(
            name,
            int(index),
            self._seed,
            self._resolution,
            world=self._world,
            plain=self._plain,
        )


_SOURCES: dict[str, Callable] = {
    "shapes_world": _shapes_world_source,
    "shapes_world_tasks": TaskSource,
}


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


class InstructionArrays(grain.transforms.Map):
    """A TaskExample -> fixed-shape arrays (DESIGN §3); the target is `image`."""

    def __init__(self, tokenizer: Tokenizer, d: ml_collections.ConfigDict):
        self._tokenizer, self._d = tokenizer, d

    def map(self, example) -> dict:
        from imagen_jax import instructions

        d = self._d
        arrays = instructions.to_arrays(
            example.instruction,
            self._tokenizer,
            max_context=d.max_context,
            text_len=d.max_text_len,
            ctx_text_len=d.ctx_text_len,
            resolution=d.resolution,
        )
        return {"image": np.asarray(example.target, np.uint8), **arrays}


def element_transform(d: ml_collections.ConfigDict, tokenizer: Tokenizer):
    """The per-element transform for the dataset named by `d.name`."""
    if d.name == "shapes_world_tasks":
        return InstructionArrays(tokenizer, d)
    return Tokenize(tokenizer, d.max_text_len, d.resolution)


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
    ds = ds.map(element_transform(d, tokenizer))
    options = grain.ReadOptions(
        num_threads=d.num_threads, prefetch_buffer_size=d.prefetch
    )
    # Filtered-out elements are skipped by the iterator before batching.
    ds = ds.to_iter_dataset(options)
    return ds.batch(d.batch_size // process_count, drop_remainder=True)
