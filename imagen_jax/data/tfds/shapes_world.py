"""tfds builder writing ShapesWorld as array_record, and its random-access source.

    python -m launch.build_data --dataset shapes_world --data_dir DIR

Configs `r32` and `r64` (resolution; the full world) and `r32_simple`,
`r64_simple` (single solid objects on plain backgrounds: the demo's world).
Splits: `train` (random scenes avoiding the held-out (shape, colour, position)
triples, varied captions) and `test` (held-out single objects, canonical
captions).
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from imagen_jax.data import shapes_world as sw

NAME = "shapes_world"
SEED = 0


VARIANTS = ("full", "simple")


@dataclasses.dataclass
class ShapesWorldConfig(tfds.core.BuilderConfig):
    resolution: int = 32
    max_objects: int = 3
    patterns: tuple[str, ...] = sw.PATTERNS
    bg_patterns: tuple[str, ...] = sw.BG_PATTERNS


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


class ShapesWorld(tfds.core.GeneratorBasedBuilder):
    """The procedural ShapesWorld (DESIGN §4)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = list(_configs())

    def __init__(self, *, num_train: int = 50_000, num_test: int = 1_000, **kwargs):
        self.num_train, self.num_test = num_train, num_test
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedural scenes of shapes with captions and scene JSON.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(r, r, 3)),
                    "caption": tfds.features.Text(),
                    "scene": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the world is procedural
        return {
            "train": self._generate_examples("train", self.num_train),
            "test": self._generate_examples("test", self.num_test),
        }

    def _generate_examples(self, split: str, num: int):
        c = self.builder_config
        for index in range(num):
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
) -> tfds.core.DatasetBuilder:
    """Writes ShapesWorld under `data_dir` (skipped when already built)."""
    builder = ShapesWorld(
        config=_config_name(resolution, variant),
        data_dir=data_dir,
        file_format="array_record",
        num_train=num_train,
        num_test=num_test,
    )
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return builder


def dataset_dir(data_dir: str, resolution: int, variant: str = "full") -> str:
    return os.path.join(
        data_dir, NAME, _config_name(resolution, variant), str(ShapesWorld.VERSION)
    )


def load_source(data_dir: str, split: str, resolution: int = 32, variant: str = "full"):
    """Random-access source of decoded examples, for grain.

    Each record is {"image": uint8 [R, R, 3], "caption": bytes, "scene": bytes
    (`Scene.to_json`)}.

    Raises:
      FileNotFoundError: the dataset was not built in `data_dir`.
      ValueError: `split` is not one of the built splits.
    """
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
    return builder.as_data_source(split=split)
