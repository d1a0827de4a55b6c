"""Your own image-text data as tfds array_record, and its random-access source.

    # A folder: a caption file per image (`a/b.png` + `a/b.txt`), or a manifest.
    python -m launch.build_data --dataset folder --source_dir PHOTOS --data_dir DIR
    python -m launch.build_data --dataset folder --source_dir PHOTOS \
        --manifest PHOTOS/captions.jsonl --data_dir DIR
    # Any tfds dataset with an image and a text feature, prepared beforehand.
    python -m launch.build_data --dataset tfds --tfds_name coco_captions \
        --caption_key captions/text --data_dir DIR

Both write `<data_dir>/own_data/<name>_r<resolution>/<version>`, one split
`train` of records {"image": uint8 [R, R, 3], "caption"}: the shorter side
resized to R, the centre cropped, RGB. Images that cannot be read are skipped
and counted; the count and the files are in `skipped.json` beside the
dataset. A missing caption is an error (a folder's and a manifest's are
checked before any image is read). Training reads the dataset with
`config.data.name = "own_data"` and `config.data.dataset = <name>`
(`experiments/t2i_own_data.py`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

NAME = "own_data"
SKIPPED_FILE = "skipped.json"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# What PIL raises for a file that is not a readable image (SyntaxError: a
# broken PNG chunk; DecompressionBombError: absurdly many pixels).
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# skipped.json lists at most this many files (the count is always exact).
MAX_LISTED = 100


@dataclasses.dataclass(frozen=True)
class Item:
    """One (image, caption) pair to write.

    Attributes:
      origin: where it comes from, for the skip report (a file, or
        "<split>[<index>]" of a tfds dataset).
      image: a file path or encoded image bytes.
      caption: the text.
    """

    origin: str
    image: str | bytes
    caption: str


@dataclasses.dataclass
class OwnDataConfig(tfds.core.BuilderConfig):
    resolution: int = 32


class OwnData(tfds.core.GeneratorBasedBuilder):
    """(image, caption) pairs from a folder or a tfds dataset; config: <name>_r<R>."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, items: Iterable[Item] = (), **kwargs):
        """`items` are written in order; `skipped` collects the unreadable ones."""
        self._items = items
        self.skipped: list[dict[str, str]] = []
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description="Image-caption pairs, resized and centre-cropped.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(r, r, 3)),
                    "caption": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data is local
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        count = 0
        for index, item in enumerate(self._items):
            try:
                image = load_image(item.image, self.builder_config.resolution)
            except UNREADABLE as e:
                self.skipped.append({"item": item.origin, "reason": _reason(e)})
                continue
            count += 1
            yield index, {"image": image, "caption": item.caption}
        if not self.skipped and not count:
            raise ValueError("empty dataset: the source has no examples")
        if not count:
            first = self.skipped[0]
            raise ValueError(
                f"empty dataset: none of the {len(self.skipped)} images could be "
                f"read (first: {first['item']}: {first['reason']})"
            )


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def load_image(image: str | bytes, resolution: int) -> np.ndarray:
    """A file or encoded bytes -> uint8 [R, R, 3]: shorter side resized to R,
    centre-cropped, RGB (EXIF rotation applied).

    Raises:
      One of `UNREADABLE` when the data is not a readable image.
    """
    with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as pil:
        pil.load()
        pil = ImageOps.exif_transpose(pil).convert("RGB")
    w, h = pil.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    pil = pil.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    pil = pil.crop((left, top, left + resolution, top + resolution))
    return np.asarray(pil, np.uint8)


def _clean(caption) -> str:
    """One caption: bytes decoded, whitespace runs made one space."""
    if isinstance(caption, bytes):
        caption = caption.decode("utf-8")
    return " ".join(str(caption).split())


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_items(source_dir: str) -> list[Item]:
    """Every image under `source_dir` (recursively, sorted) with the caption in
    the .txt file of the same stem beside it; other files are ignored.

    Raises:
      FileNotFoundError: `source_dir` is not a directory.
      ValueError: no images, or an image without a (non-empty) caption file.
    """
    _check_dir(source_dir)
    items = []
    for root, dirs, files in os.walk(source_dir):
        dirs.sort()
        for name in sorted(filter(_is_image, files)):
            path = os.path.join(root, name)
            text_path = os.path.splitext(path)[0] + ".txt"
            if not os.path.isfile(text_path):
                raise ValueError(f"image {path} has no caption file {text_path}")
            with open(text_path, encoding="utf-8") as f:
                caption = _clean(f.read())
            if not caption:
                raise ValueError(f"caption file {text_path} is empty")
            items.append(Item(os.path.relpath(path, source_dir), path, caption))
    if not items:
        raise ValueError(
            f"empty dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) in {source_dir}"
        )
    return items


def manifest_items(
    source_dir: str,
    manifest: str,
    image_key: str = "image",
    caption_key: str = "caption",
) -> list[Item]:
    """The (image, caption) rows of a JSONL (an object per line) or CSV (with a
    header row) manifest; image paths are relative to `source_dir` or absolute.
    An image may appear on several rows (several captions).

    Raises:
      FileNotFoundError: `source_dir` or `manifest` does not exist.
      ValueError: an unknown manifest format, a row without an image or a
        caption, or no rows.
    """
    _check_dir(source_dir)
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"manifest {manifest} not found")
    items = []
    for line, row in _manifest_rows(manifest):
        image, caption = row.get(image_key), _clean(row.get(caption_key) or "")
        if not image or not caption:
            missing = caption_key if image else image_key
            raise ValueError(f"{manifest} line {line} has no {missing!r}: {row}")
        items.append(Item(str(image), os.path.join(source_dir, str(image)), caption))
    if not items:
        raise ValueError(f"empty dataset: manifest {manifest} has no rows")
    return items


def _manifest_rows(manifest: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a .jsonl or .csv manifest; blank lines skipped."""
    kind = os.path.splitext(manifest)[1].lower()
    with open(manifest, encoding="utf-8", newline="") as f:
        if kind == ".csv":
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, row
        elif kind == ".jsonl":
            for line, text in enumerate(f, 1):
                if text.strip():
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise ValueError(
                            f"{manifest} line {line} is not JSON: {e}"
                        ) from e
                    if not isinstance(row, dict):
                        raise ValueError(f"{manifest} line {line} is not a JSON object")
                    yield line, row
        else:
            raise ValueError(f"manifest {manifest} is not .jsonl or .csv")


def _check_dir(source_dir: str) -> None:
    if not source_dir:
        raise ValueError("no source folder given (--source_dir)")
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"image folder {source_dir} not found")


def tfds_items(
    tfds_name: str,
    source_dir: str | None = None,
    split: str = "train",
    image_key: str = "image",
    caption_key: str = "caption",
) -> Iterator[Item]:
    """The examples of a prepared tfds dataset as items, read lazily.

    `image_key` names an Image feature, `caption_key` a text feature; nested
    features are named by path ("captions/text"); of a sequence of texts the
    first is the caption. Nothing is downloaded: the dataset must have been
    prepared in `source_dir` (None: tfds's default data_dir).

    Raises:
      ValueError: no name, an unknown or unprepared dataset, a bad split, a
        feature that is missing or of the wrong kind; while reading, an
        example without a caption.
    """
    if not tfds_name:
        raise ValueError("no tfds dataset named (--tfds_name NAME[/CONFIG][:VERSION])")
    try:
        builder = tfds.builder(tfds_name, data_dir=source_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"unknown tfds dataset {tfds_name!r}") from e
    if not builder.is_prepared():
        raise ValueError(
            f"tfds dataset {tfds_name!r} is not prepared in {builder.data_dir}: "
            f"prepare it first (nothing is downloaded here)"
        )
    image, in_sequence = _feature(builder.info.features, image_key)
    if not isinstance(image, tfds.features.Image) or in_sequence:
        raise ValueError(f"tfds feature {image_key!r} is not an image ({image})")
    text, _ = _feature(builder.info.features, caption_key)
    if isinstance(text, tfds.features.Sequence):
        text = text.feature
    if not isinstance(text, tfds.features.Text):
        raise ValueError(f"tfds feature {caption_key!r} is not a text ({text})")
    decoders = {image_key.split("/")[0]: _skip_decoding(image_key.split("/")[1:])}
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        source = builder.as_data_source(split=split, decoders=decoders)
        examples = (source[i] for i in range(len(source)))
    else:
        dataset = builder.as_dataset(
            split=split, decoders=decoders, shuffle_files=False
        )
        examples = tfds.as_numpy(dataset)
    return _read(examples, f"{tfds_name}:{split}", image_key, caption_key)


def _feature(features: tfds.features.FeaturesDict, path: str):
    """The feature at `path` ("a/b"), and whether a Sequence holds it."""
    node, in_sequence = features, False
    for part in path.split("/"):
        if isinstance(node, tfds.features.Sequence):
            node, in_sequence = node.feature, True
        if not isinstance(node, tfds.features.FeaturesDict) or part not in node:
            known = (
                sorted(node.keys())
                if isinstance(node, tfds.features.FeaturesDict)
                else []
            )
            raise ValueError(
                f"the tfds dataset has no feature {path!r}; it has {known}"
            )
        node = node[part]
    return node, in_sequence


def _skip_decoding(rest: list[str]):
    """A decoder keeping the image feature at path `rest` encoded."""
    return {rest[0]: _skip_decoding(rest[1:])} if rest else tfds.decode.SkipDecoding()


def _get(example: dict, path: str):
    for part in path.split("/"):
        example = example[part]
    return example


def _read(examples, origin: str, image_key: str, caption_key: str) -> Iterator[Item]:
    for index, example in enumerate(examples):
        caption = _get(example, caption_key)
        if not isinstance(caption, (str, bytes)):  # a sequence of texts
            texts = np.asarray(caption, object).reshape(-1)
            caption = texts[0] if texts.size else ""
        caption = _clean(caption)
        if not caption:
            raise ValueError(f"{origin}[{index}] has no text in {caption_key!r}")
        yield Item(f"{origin}[{index}]", bytes(_get(example, image_key)), caption)


def _check_name(name: str) -> None:
    if not name:
        raise ValueError("no dataset name given (--name)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(
            f"dataset name {name!r} must be letters, digits, '_', '.' or '-'"
        )


def default_name(source: str) -> str:
    """A dataset name made of a folder's or a tfds dataset's: `My Photos` ->
    `my_photos`, `coco_captions/2017` -> `coco_captions_2017`."""
    return re.sub(r"[^a-z0-9]+", "_", source.lower()).strip("_")


def dataset_dir(data_dir: str, name: str, resolution: int) -> str:
    return os.path.join(data_dir, NAME, f"{name}_r{resolution}", str(OwnData.VERSION))


@dataclasses.dataclass(frozen=True)
class Report:
    """What a build wrote: the record count and the images it skipped."""

    directory: str
    source: str
    num_examples: int
    num_skipped: int
    skipped: list[dict[str, str]]


def build(
    data_dir: str,
    name: str,
    items: Iterable[Item],
    source: str,
    resolution: int = 32,
) -> Report:
    """Writes `items` as dataset `name` under `data_dir` (skipped when already
    built: delete its directory to rebuild) and `skipped.json` beside it.

    Raises:
      ValueError: a bad name or resolution, or no readable image.
    """
    _check_name(name)
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    builder = OwnData(
        items=items,
        config=OwnDataConfig(name=f"{name}_r{resolution}", resolution=resolution),
        data_dir=data_dir,
        file_format="array_record",
    )
    fresh = not builder.is_prepared()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    path = os.path.join(builder.data_dir, SKIPPED_FILE)
    if fresh:
        report = {
            "source": source,
            "num_examples": builder.info.splits["train"].num_examples,
            "num_skipped": len(builder.skipped),
            "skipped": builder.skipped[:MAX_LISTED],
        }
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    with open(path) as f:
        return Report(builder.data_dir, **json.load(f))


def load_source(data_dir: str, name: str, split: str = "train", resolution: int = 32):
    """Random-access source of {"image": uint8 [R, R, 3], "caption": bytes}.

    Raises:
      ValueError: no dataset name, or `split` is not one of the built splits.
      FileNotFoundError: the dataset was not built in `data_dir`.
    """
    if not name:
        raise ValueError(
            "config.data.dataset is empty: name the dataset built by "
            "`python -m launch.build_data --dataset folder|tfds` (its --name)"
        )
    path = dataset_dir(data_dir, name, resolution)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"dataset {name!r} (resolution {resolution}) not found in {data_dir}: "
            f"build it with `python -m launch.build_data --dataset folder|tfds "
            f"... --name {name} --resolution {resolution} --data_dir {data_dir}`"
        )
    builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
        raise ValueError(
            f"dataset {name!r} has no split {split!r}; "
            f"built: {sorted(builder.info.splits)}"
        )
    return builder.as_data_source(split=split)
