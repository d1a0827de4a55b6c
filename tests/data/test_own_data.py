"""Your own data: a folder or a tfds dataset -> array_record -> training."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments import t2i_own_data
from imagen_jax import train
from imagen_jax.data import pipeline
from imagen_jax.data.tfds import own_data
from imagen_jax.text.tokenizers import ByteTokenizer
from tests.child_env import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (width, height, PIL mode) of the readable images: landscape, portrait,
# square, with alpha, greyscale.
SHAPES = ((40, 24, "RGB"), (24, 40, "RGB"), (32, 32, "RGB"), (48, 36, "RGBA"))


def _image(width, height, mode, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4))
    return Image.fromarray(pixels.astype(np.uint8), "RGBA").convert(mode)


def _write_folder(folder):
    """Images with caption files, one corrupt image, one non-image file.

    Returns the captions of the readable images.
    """
    (folder / "more").mkdir(parents=True)
    captions = {}
    for i, (w, h, mode) in enumerate(SHAPES):
        _image(w, h, mode, i).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a   photo\nnumber {i}\n")
        captions[f"img{i}.png"] = f"a photo number {i}"
    _image(20, 30, "L", 9).save(folder / "more" / "grey.jpg")
    (folder / "more" / "grey.txt").write_text("a grey one")
    captions["more/grey.jpg"] = "a grey one"
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "corrupt.txt").write_text("never seen")
    (folder / "notes.md").write_text("not an image")
    return captions


def _run(*args):
    env = child_env()
    return subprocess.run(
        [sys.executable, "-m", "launch.build_data", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The folder built by the documented command: (data_dir, captions, stdout)."""
    root = tmp_path_factory.mktemp("own")
    captions = _write_folder(root / "photos")
    data_dir = str(root / "data")
    proc = _run(
        "--dataset", "folder", "--source_dir", str(root / "photos"),
        "--data_dir", data_dir, "--resolution", "32",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data_dir, captions, proc.stdout


def test_folder_build_skips_the_corrupt_image_and_trains(built, tmp_path):
    data_dir, captions, stdout = built
    assert "5 examples, 1 unreadable images skipped" in stdout, stdout
    assert "--config.data.dataset=photos" in stdout
    with open(
        os.path.join(
            own_data.dataset_dir(data_dir, "photos", 32), own_data.SKIPPED_FILE
        )
    ) as f:
        report = json.load(f)
    assert report["num_examples"] == 5 and report["num_skipped"] == 1
    assert [s["item"] for s in report["skipped"]] == ["corrupt.png"]

    source = own_data.load_source(data_dir, "photos")
    records = [source[i] for i in range(len(source))]
    assert sorted(r["caption"].decode() for r in records) == sorted(captions.values())
    for r in records:
        assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8

    cfg = t2i_own_data.get_config("smoke")
    cfg.data.data_dir, cfg.data.dataset = data_dir, "photos"
    cfg.train.num_steps = 3
    state = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert int(state.step) == 3
    assert os.listdir(tmp_path / "run" / "checkpoints")


def test_records_are_resized_and_centre_cropped(built):
    data_dir, _, _ = built
    by_caption = {
        r["caption"].decode(): r["image"]
        for r in own_data.load_source(data_dir, "photos")
    }
    for i, (w, h, mode) in enumerate(SHAPES):
        buffer = io.BytesIO()
        _image(w, h, mode, i).save(buffer, "PNG")
        expected = own_data.load_image(buffer.getvalue(), 32)
        np.testing.assert_array_equal(by_caption[f"a photo number {i}"], expected)


def test_load_image_keeps_the_centre():
    # 64 x 32: red | green (the centre half) | blue, in columns.
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :16, 0] = pixels[:, 16:48, 1] = pixels[:, 48:, 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    out = own_data.load_image(buffer.getvalue(), 16).astype(int)
    assert out.shape == (16, 16, 3)
    # Pure green beyond the reach of the resizing filter (3 pixels) from
    # the crop's edges, nearly so up to them.
    np.testing.assert_array_equal(out[:, 3:-3], [[[0, 255, 0]] * 10] * 16)
    assert out[..., 1].min() > 200 and out[..., [0, 2]].max() < 40


def test_manifests(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        _image(24, 24, "RGB", i).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"garbage")
    rows = [
        {"image": "0.png", "caption": "first"},
        {"image": "0.png", "caption": "first, again"},  # a second caption
        {"image": str(folder / "1.png"), "caption": "absolute path"},
        {"image": "broken.jpg", "caption": "unreadable"},
        {"image": "missing.png", "caption": "no such file"},
    ]
    jsonl = folder / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = own_data.manifest_items(str(folder), str(jsonl))
    report = own_data.build(str(tmp_path / "d"), "pics", items, str(jsonl), 16)
    assert (report.num_examples, report.num_skipped) == (3, 2)
    assert sorted(s["item"] for s in report.skipped) == ["broken.jpg", "missing.png"]
    captions = {r["caption"].decode() for r in own_data.load_source(
        str(tmp_path / "d"), "pics", resolution=16)}  # fmt: skip
    assert captions == {"first", "first, again", "absolute path"}

    csv_path = folder / "captions.csv"
    csv_path.write_text('file_name,text\n2.png,"a caption, with a comma"\n')
    items = own_data.manifest_items(
        str(folder), str(csv_path), image_key="file_name", caption_key="text"
    )
    assert [(i.origin, i.caption) for i in items] == [
        ("2.png", "a caption, with a comma")
    ]


class TinyCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A tfds dataset with an image and a nested sequence of texts, prepared
    locally; read back from its files alone, as one prepared elsewhere."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "photo": tfds.features.Image(shape=(None, None, 3)),
                    "meta": {"titles": tfds.features.Sequence(tfds.features.Text())},
                    "label": tfds.features.ClassLabel(num_classes=2),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
        for i in range(n):
            photo = np.asarray(_image(20 + 4 * i, 28, "RGB", i))
            titles = [f"tiny picture {i}", "a second title"]
            yield i, {"photo": photo, "meta": {"titles": titles}, "label": i % 2}


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_any_tfds_dataset(tmp_path, file_format):
    source_dir = str(tmp_path / "tfds")
    TinyCaptions(data_dir=source_dir, file_format=file_format).download_and_prepare(
        file_format=file_format
    )
    keys = {"image_key": "photo", "caption_key": "meta/titles"}
    items = own_data.tfds_items("tiny_captions", source_dir, "train", **keys)
    report = own_data.build(str(tmp_path / "d"), "tiny", items, "tiny_captions", 32)
    assert (report.num_examples, report.num_skipped) == (6, 0)

    cfg = t2i_own_data.get_config("smoke")
    cfg.data.data_dir, cfg.data.dataset = str(tmp_path / "d"), "tiny"
    batch = next(iter(pipeline.train_dataset(cfg, ByteTokenizer())))
    assert batch["image"].shape == (8, 32, 32, 3)
    records = own_data.load_source(str(tmp_path / "d"), "tiny")
    by_caption = {r["caption"].decode(): r["image"] for r in records}
    assert sorted(by_caption) == [f"tiny picture {i}" for i in range(6)]
    buffer = io.BytesIO()
    _image(28, 28, "RGB", 2).save(buffer, "PNG")
    np.testing.assert_array_equal(
        by_caption["tiny picture 2"], own_data.load_image(buffer.getvalue(), 32)
    )

    with pytest.raises(ValueError, match=r"no feature 'meta/title'.*\['titles'\]"):
        own_data.tfds_items(
            "tiny_captions", source_dir, image_key="photo", caption_key="meta/title"
        )
    with pytest.raises(ValueError, match="'label' is not a text"):
        own_data.tfds_items(
            "tiny_captions", source_dir, image_key="photo", caption_key="label"
        )
    with pytest.raises(ValueError, match="unknown tfds dataset 'tiny_captionz'"):
        own_data.tfds_items("tiny_captionz", source_dir)


def _one_line(error):
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_clear_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="image folder .*nowhere not found"
    ) as e:
        own_data.folder_items(str(tmp_path / "nowhere"))
    _one_line(e)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no images here")
    with pytest.raises(ValueError, match="empty dataset: no images") as e:
        own_data.folder_items(str(tmp_path / "empty"))
    _one_line(e)

    folder = tmp_path / "f"
    folder.mkdir()
    _image(8, 8, "RGB", 0).save(folder / "a.png")
    with pytest.raises(ValueError, match=r"a.png has no caption file .*a.txt"):
        own_data.folder_items(str(folder))
    manifest = folder / "m.jsonl"
    manifest.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "a.png"}\n')
    with pytest.raises(ValueError, match="m.jsonl line 2 has no 'caption'") as e:
        own_data.manifest_items(str(folder), str(manifest))
    _one_line(e)

    (folder / "a.png").write_bytes(b"not an image")
    (folder / "a.txt").write_text("unreadable")
    items = own_data.folder_items(str(folder))
    with pytest.raises(ValueError, match="empty dataset: none of the 1 images"):
        own_data.build(str(tmp_path / "d"), "f", items, str(folder))
    assert not os.path.isdir(own_data.dataset_dir(str(tmp_path / "d"), "f", 32))

    for name in ("", None):
        with pytest.raises(ValueError, match="config.data.dataset is empty"):
            pipeline.get_source(_data_config(str(tmp_path / "d"), name), "train")
    with pytest.raises(ValueError, match="no tfds dataset named"):
        own_data.tfds_items("")
    with pytest.raises(FileNotFoundError, match="launch.build_data") as e:
        own_data.load_source(str(tmp_path / "d"), "photos")
    _one_line(e)


def _data_config(data_dir, dataset):
    cfg = t2i_own_data.get_config("smoke").data
    cfg.data_dir = data_dir
    if dataset is None:
        del cfg["dataset"]
    else:
        cfg.dataset = dataset
    return cfg


def test_command_line_errors_are_one_line(tmp_path):
    proc = _run(
        "--dataset", "folder", "--source_dir", str(tmp_path / "nowhere"),
        "--data_dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: image folder {tmp_path / 'nowhere'} not found"
    )
