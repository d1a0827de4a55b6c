"""tfds builder writing ShapesWorld as array_record, and its random-access source.

    python -m launch.build_data --dataset shapes_world --data_dir DIR

Configs `r32` and `r64` (resolution; the full world) and `r32_simple`,
`r64_simple` (single solid objects on plain backgrounds: the demo's world).
Splits: `train` (random scenes avoiding the held-out (shape, colour, position)
triples, varied captions) and `test` (held-out single objects, canonical
captions). Records: image, caption, scene.

Configs `r32_retrieval`, `r64_retrieval` (variant "retrieval": the long-tailed
retrieval world of stage 1, `shapes_world.make_retrieval_example`). Splits:
`train` (training targets: named subjects and unnamed objects), `database`
(the retrieval corpus: every name, retrieval-only ones included) and `test`
(prompts naming retrieval-only subjects). Records add `source_id` (int64;
renders of one scene share it; -1 in `test`) and `name` (the named subject,
"" for none). Only these configs have the two features, so the records of
the other configs are exactly what they were.

tfds stores records in a shuffled order: record i of `load_source` is not
example i of the generator. Neighbour tables (`retrieval.mining`) index
records in `load_source` order.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from imagen_jax.data import shapes_world as sw

NAME = "shapes_world"
SEED = 0


VARIANTS = ("full", "simple", "retrieval")


@dataclasses.dataclass
class ShapesWorldConfig(tfds.core.BuilderConfig):
    resolution: int = 32
    max_objects: int = 3
    patterns: tuple[str, ...] = sw.PATTERNS
    bg_patterns: tuple[str, ...] = sw.BG_PATTERNS
    # The retrieval world: splits `shapes_world.RETRIEVAL_SPLITS`, records
    # with `source_id` and `name`.
    retrieval: bool = False


def _configs():
    for r in (32, 64):
        yield ShapesWorldConfig(name=f"r{r}", resolution=r)
        yield ShapesWorldConfig(
            name=f"r{r}_simple",
            resolution=r,
            max_objects=1,
            patterns=("solid",),
            bg_patterns=("plain",),
        )
        yield ShapesWorldConfig(
            name=f"r{r}_retrieval", resolution=r, max_objects=1, retrieval=True
        )


class ShapesWorld(tfds.core.GeneratorBasedBuilder):
    """The procedural ShapesWorld (DESIGN §4)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = list(_configs())

    def __init__(
        self,
        *,
        num_train: int = 50_000,
        num_test: int = 1_000,
        num_database: int | None = None,
        **kwargs,
    ):
        """`num_database` (retrieval configs): None holds every other render
        of the training sources (`shapes_world.database_size`)."""
        self.num_train, self.num_test = num_train, num_test
        self.num_database = (
            sw.database_size(num_train) if num_database is None else num_database
        )
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        features = {
            "image": tfds.features.Image(shape=(r, r, 3)),
            "caption": tfds.features.Text(),
            "scene": tfds.features.Text(),
        }
        if self.builder_config.retrieval:
            features["source_id"] = tfds.features.Scalar(np.int64)
            features["name"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedural scenes of shapes with captions and scene JSON.",
            features=tfds.features.FeaturesDict(features),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the world is procedural
        sizes = {"train": self.num_train, "test": self.num_test}
        if self.builder_config.retrieval:
            sizes["database"] = self.num_database
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num: int):
        c = self.builder_config
        for index in range(num):
            if c.retrieval:
                yield index, sw.make_retrieval_example(split, index, SEED, c.resolution)
                continue
            yield (
                index,
                sw.make_example(
                    split,
                    index,
                    SEED,
                    c.resolution,
                    max_objects=c.max_objects,
                    patterns=c.patterns,
                    bg_patterns=c.bg_patterns,
                ),
            )


def _config_name(resolution: int, variant: str) -> str:
    if resolution not in (32, 64):
        raise ValueError(
            f"ShapesWorld is built at resolution 32 or 64, got {resolution}"
        )
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown ShapesWorld variant {variant!r}; use one of {VARIANTS}"
        )
    return f"r{resolution}" + ("" if variant == "full" else f"_{variant}")


def build(
    data_dir: str,
    resolution: int = 32,
    num_train: int = 50_000,
    num_test: int = 1_000,
    variant: str = "full",
    num_database: int | None = None,
) -> tfds.core.DatasetBuilder:
    """Writes ShapesWorld under `data_dir` (skipped when already built).

    `num_database` sizes the retrieval variant's `database` split (None: every
    other render of the training sources); other variants have no database.
    """
    builder = ShapesWorld(
        config=_config_name(resolution, variant),
        data_dir=data_dir,
        file_format="array_record",
        num_train=num_train,
        num_test=num_test,
        num_database=num_database,
    )
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return builder


# data.variant (the world; evaluators read it too) -> the variant built in
# that world's retrieval form (stage 1).
RETRIEVAL_VARIANTS = {"simple": "retrieval"}


def retrieval_variant(world: str) -> str:
    """The dataset variant holding world `world`'s retrieval form."""
    if world not in RETRIEVAL_VARIANTS:
        raise ValueError(
            f"config.data.variant={world!r} has no retrieval dataset; use one "
            f"of {sorted(RETRIEVAL_VARIANTS)}"
        )
    return RETRIEVAL_VARIANTS[world]


def dataset_dir(data_dir: str, resolution: int, variant: str = "full") -> str:
    return os.path.join(
        data_dir, NAME, _config_name(resolution, variant), str(ShapesWorld.VERSION)
    )


def _built(data_dir: str, split: str, resolution: int, variant: str):
    path = dataset_dir(data_dir, resolution, variant)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"ShapesWorld ({variant}, resolution {resolution}) not found in {data_dir}:"
            f" build it with `python -m launch.build_data --dataset shapes_world "
            f"--data_dir {data_dir} --resolution {resolution} --variant {variant}`"
        )
    builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
        raise ValueError(
            f"unknown ShapesWorld split {split!r}; built: {sorted(builder.info.splits)}"
        )
    return builder


def load_source(data_dir: str, split: str, resolution: int = 32, variant: str = "full"):
    """Random-access source of decoded examples, for grain.

    Each record is {"image": uint8 [R, R, 3], "caption": bytes, "scene": bytes
    (`Scene.to_json`)}; the retrieval variant adds "source_id" (int64) and
    "name" (bytes).

    Raises:
      FileNotFoundError: the dataset was not built in `data_dir`.
      ValueError: `split` is not one of the built splits.
    """
    return _built(data_dir, split, resolution, variant).as_data_source(split=split)


def load_columns(
    data_dir: str,
    split: str,
    resolution: int = 32,
    variant: str = "retrieval",
    keys: tuple[str, ...] = ("source_id", "name"),
    chunk: int = 4096,
) -> dict[str, np.ndarray]:
    """Non-image fields of every record of a split, in `load_source` order.

    What mining needs beside the embeddings (source ids, subject names),
    read without decoding an image.

    Returns:
      key -> [N] array: int64 for "source_id", str for the text fields.

    Raises:
      FileNotFoundError, ValueError: as `load_source`; ValueError also for a
        key the records do not have.
    """
    builder = _built(data_dir, split, resolution, variant)
    missing = sorted(set(keys) - set(builder.info.features))
    if missing:
        raise ValueError(
            f"ShapesWorld {variant} records have no {missing}; they have "
            f"{sorted(builder.info.features)}"
        )
    source = builder.as_data_source(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    columns: dict[str, list] = {k: [] for k in keys}
    for start in range(0, len(source), chunk):
        stop = min(start + chunk, len(source))
        for record in source.__getitems__(range(start, stop)):
            for k in keys:
                columns[k].append(record[k])
    return {k: _column(k, v) for k, v in columns.items()}


def _column(key: str, values: list) -> np.ndarray:
    if key == "source_id":
        return np.asarray(values, np.int64)
    return np.asarray(
        [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    )
