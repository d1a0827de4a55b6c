"""Serving export: a bundle draws the images `launch.sample` draws, in this
process and in a fresh one that imports jax but not the training code."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import stage2_shapes, t2i_shapes
from imagen_jax import (
    checkpointing,
    export,
    generate,
    instructions,
    sampling,
    serving_bundle,
    train,
    train_state,
)
from imagen_jax.models.imagen import build_model
from imagen_jax.text import tokenizers
from tests.child_env import child_env
from tests.params import perturbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


def tolerance(steps: int) -> float:
    """Float32 agreement of two compilations of the same sampler program.

    Another process (one device, no project XLA flags) may fuse and reorder
    float32 sums: each step's x0, in [-1, 1], then moves by a few ulps of 1.0
    (sums of at most ~300 terms, sqrt(300) ~ 17 ulps at random signs); the
    differences add over the steps. Bound: 32 ulps of 1.0 per step (measured
    on this machine: 1 ulp after 3 steps).
    """
    return steps * 32 * float(np.finfo(np.float32).eps)


def _captured_sample(loaded, request, monkeypatch) -> np.ndarray:
    """`launch.sample`'s images for `request`, as float32 before uint8."""
    seen, to_uint8 = [], sampling.to_uint8

    def keep(images):
        seen.append(np.asarray(images))
        return to_uint8(images)

    monkeypatch.setattr(sampling, "to_uint8", keep)
    uint8 = generate.generate_images(loaded, request)
    monkeypatch.undo()
    np.testing.assert_array_equal(sampling.to_uint8(seen[0]), uint8)
    return seen[0]


@pytest.fixture(scope="module")
def t2i_run(smoke_world, tmp_path_factory):
    """A text-to-image smoke run (2 training steps) and its float32 bundle."""
    cfg = t2i_shapes.get_config("smoke")
    cfg.data.data_dir = smoke_world
    cfg.train.num_steps = 2
    workdir = str(tmp_path_factory.mktemp("t2i"))
    train.train_and_evaluate(cfg, workdir)
    bundle = str(tmp_path_factory.mktemp("bundles") / "t2i")
    manifest = export.export_bundle(workdir, bundle, batch_sizes=(2,))
    return workdir, bundle, manifest


T2I_REQUEST = {"text": "a red circle", "steps": STEPS, "num_images": 2, "seed": 1}


@pytest.fixture(scope="module")
def t2i_reference(t2i_run):
    from imagen_jax import inference

    with pytest.MonkeyPatch.context() as mp:
        request = instructions.parse_request(T2I_REQUEST)
        return _captured_sample(inference.load(t2i_run[0]), request, mp)


def _instruction_workdir(path: str) -> None:
    """A stage-2 smoke workdir whose weights are the init plus noise, so the
    zero-initialised context and input-image layers take part."""
    cfg = stage2_shapes.get_config("smoke")
    model = build_model(cfg, tokenizers.make_tokenizer(cfg).vocab_size)
    params = jax.jit(lambda: nn.meta.unbox(train_state.init_params(model, cfg)))()
    params = perturbed(params)
    checkpointing.save_config(path, cfg)
    mngr = checkpointing.manager(os.path.join(path, "checkpoints"))
    state = train_state.TrainState(jnp.int32(1), params, params, {})
    checkpointing.save(mngr, 1, state, {"next_index": 1})
    mngr.wait_until_finished()


def _instruction_request(directory, seed=3) -> dict:
    """A request with one context item and an input image (PNG files)."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in ("ctx.png", "input.png"):
        paths.append(os.path.join(directory, name))
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(paths[-1])
    return {
        "text": "draw [ref#1] at the top left",
        "context": [{"marker": "[ref#1]", "text": "a zorblat", "image": paths[0]}],
        "image": paths[1],
        "sampler": "ddpm",
        "steps": STEPS,
        "num_images": 1,
        "seed": 2,
        "guidance": {"text": 4.0, "image": 2.0},
    }


@pytest.fixture(scope="module")
def instruction_run(tmp_path_factory):
    """An instruction bundle, a request and `launch.sample`'s images of it."""
    from imagen_jax import inference

    workdir = str(tmp_path_factory.mktemp("instruct"))
    _instruction_workdir(workdir)
    bundle = str(tmp_path_factory.mktemp("bundles") / "instruct")
    export.export_bundle(workdir, bundle, batch_sizes=(1,), sampler="ddpm")
    request = _instruction_request(str(tmp_path_factory.mktemp("request")))
    loaded = inference.load(workdir)
    with pytest.MonkeyPatch.context() as mp:
        parsed = instructions.parse_request(request)
        reference = _captured_sample(loaded, parsed, mp)
    return loaded, bundle, request, reference


def _bundle_request(request: dict) -> dict:
    """The request as `Bundle.generate` keywords (images as arrays)."""
    out = dict(request)
    out["context"] = [
        dict(c, image=np.asarray(Image.open(c["image"])))
        for c in out.get("context", ())
    ]
    if out.get("image"):
        out["image"] = np.asarray(Image.open(out["image"]))
    return out


def _bundle_sample(bundle, request: dict) -> np.ndarray:
    r = _bundle_request(request)
    batch = bundle.batch(r["text"], r["context"], r.get("image"), r["num_images"])
    return bundle.sample(
        batch, r["seed"], r["steps"], r.get("guidance"), r.get("sampler")
    )


def test_text_to_image_bundle_draws_launch_sample_images(t2i_run, t2i_reference):
    _, path, manifest = t2i_run
    assert sorted(os.listdir(path)) == [
        "loader.py",
        "manifest.json",
        "params.npz",
        "sampler_b2.jaxexport",
        "tokenizer",
    ]
    assert manifest["format_version"] == serving_bundle.FORMAT_VERSION
    assert manifest["sampler"] == "ddim" and manifest["max_steps"] == 1000
    assert manifest["inputs"]["text_tokens"] == {"shape": ["B", 32], "dtype": "int32"}
    bundle = serving_bundle.load(path)
    images = _bundle_sample(bundle, T2I_REQUEST)
    np.testing.assert_allclose(images, t2i_reference, atol=tolerance(STEPS), rtol=0)
    # Steps and guidance are inputs of the one compiled function.
    other = bundle.sample(bundle.batch("a red circle", num_images=2), 1, 5, {"text": 1})
    assert list(bundle._compiled) == [2]
    assert np.abs(other - images).max() > 0.01


def test_instruction_bundle_draws_launch_sample_images(instruction_run):
    loaded, path, request, reference = instruction_run
    bundle = serving_bundle.load(path)
    assert bundle.instruction and bundle.manifest["max_context"] == 4
    parsed = instructions.parse_request(request)
    expected = generate._request_batch(
        loaded, parsed, generate.load_png, instructions.LIMITS
    )
    r = _bundle_request(request)
    batch = bundle.batch(r["text"], r["context"], r["image"], 1)
    assert batch.keys() == expected.keys()
    for name, value in expected.items():
        assert batch[name].dtype == value.dtype, name
        np.testing.assert_array_equal(batch[name], value, err_msg=name)
    images = _bundle_sample(bundle, request)
    np.testing.assert_allclose(images, reference, atol=tolerance(STEPS), rtol=0)
    # The context image is an input: another one draws another image.
    other = dict(r["context"][0], image=255 - r["context"][0]["image"])
    batch = bundle.batch(r["text"], [other], r["image"], 1)
    changed = bundle.sample(batch, r["seed"], r["steps"], r["guidance"])
    assert np.abs(changed - images).max() > 100 * tolerance(STEPS)


FRESH = """
import json, sys
import numpy as np
from PIL import Image
args = json.loads(sys.argv[1])
sys.path.insert(0, args["t2i"])
import loader  # the bundle's copy
out = {}
for name in ("t2i", "instruct"):
    bundle = loader.load(args[name])
    r = args["requests"][name]
    context = [dict(c, image=np.asarray(Image.open(c["image"])))
               for c in r.get("context", [])]
    image = np.asarray(Image.open(r["image"])) if r.get("image") else None
    batch = bundle.batch(r["text"], context, image, r["num_images"])
    out[name] = bundle.sample(
        batch, r["seed"], r["steps"], r.get("guidance"), r.get("sampler"))
np.savez(args["out"], **out)
loaded_by_loader = sorted(sys.modules)
import imagen_jax.serving_bundle
print(json.dumps([loaded_by_loader, sorted(sys.modules)]))
"""

TRAINING_MODULES = ("flax", "optax", "orbax", "ml_collections", "tensorflow", "grain")


def test_fresh_process_serves_bundles_with_jax_alone(
    t2i_run, t2i_reference, instruction_run, tmp_path
):
    _, instruct, request, instruct_reference = instruction_run
    t2i = t2i_run[1]
    loader = pathlib.Path(t2i, "loader.py")
    assert loader.read_text() == pathlib.Path(serving_bundle.__file__).read_text()
    args = {
        "t2i": t2i,
        "instruct": instruct,
        "requests": {"t2i": T2I_REQUEST, "instruct": request},
        "out": str(tmp_path / "out.npz"),
    }
    env = child_env()
    del env["PYTHONPATH"]
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, json.dumps(args)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_loader, with_module = json.loads(proc.stdout.strip().splitlines()[-1])
    for modules in (by_loader, with_module):
        roots = {m.split(".")[0] for m in modules}
        assert not roots & set(TRAINING_MODULES), sorted(roots & set(TRAINING_MODULES))
    assert not [m for m in by_loader if m.startswith("imagen_jax")]
    assert [m for m in with_module if m.startswith("imagen_jax")] == [
        "imagen_jax",
        "imagen_jax.serving_bundle",
    ]
    out = np.load(args["out"])
    tol = tolerance(STEPS)
    np.testing.assert_allclose(out["t2i"], t2i_reference, atol=tol, rtol=0)
    np.testing.assert_allclose(out["instruct"], instruct_reference, atol=tol, rtol=0)


def _run_export(*args):
    env = child_env()
    return subprocess.run(
        [sys.executable, "-m", "launch.export", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


# bfloat16 weights are the float32 ones within 2^-9 relative; the images they
# draw are asked to stay within 2^-5 on [-1, 1] (4 uint8 levels) of the
# float32 bundle's (measured on the smoke model: 1.3e-4).
BF16_IMAGE_BOUND = 2.0**-5


def test_bfloat16_bundle_from_the_command_line(t2i_run, tmp_path):
    workdir, f32_path, _ = t2i_run
    path = str(tmp_path / "bf16")
    proc = _run_export(
        f"--workdir={workdir}",
        f"--out={path}",
        "--batch_sizes=2",
        "--param_dtype=bfloat16",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bfloat16 parameters" in proc.stdout
    f32, bf16 = serving_bundle.load(f32_path), serving_bundle.load(path)
    size = os.path.getsize
    ratio = size(os.path.join(path, "params.npz")) / size(
        os.path.join(f32_path, "params.npz")
    )
    assert 0.45 < ratio < 0.55, ratio
    assert all(p.dtype == jnp.bfloat16 for p in bf16.params)
    batch = f32.batch("a red circle", num_images=2)
    images = bf16.sample(batch, seed=1, steps=STEPS)
    # Exactly the float32 sampler's arithmetic on the rounded weights...
    full_params, f32.params = f32.params, [p.astype(jnp.float32) for p in bf16.params]
    expected = f32.sample(batch, seed=1, steps=STEPS)
    f32.params = full_params
    np.testing.assert_allclose(images, expected, atol=tolerance(STEPS), rtol=0)
    # ... and near the float32 weights' images.
    full = f32.sample(batch, seed=1, steps=STEPS)
    assert np.abs(images - full).max() < BF16_IMAGE_BOUND
    assert np.abs(images - full).max() > 0  # the weights were rounded

    again = _run_export(f"--workdir={workdir}", f"--out={path}")
    assert again.returncode == 2 and "not empty" in again.stderr
    assert "Traceback" not in again.stderr


def _copy(path, tmp_path) -> str:
    out = str(tmp_path / "copy")
    shutil.copytree(path, out)
    return out


def test_missing_damaged_or_other_version_bundles_are_refused(t2i_run, tmp_path):
    path = t2i_run[1]
    with pytest.raises(serving_bundle.BundleError, match="does not exist"):
        serving_bundle.load(str(tmp_path / "nowhere"))
    with pytest.raises(serving_bundle.BundleError, match="no manifest.json"):
        serving_bundle.load(str(tmp_path))

    copy = _copy(path, tmp_path)
    manifest_path = pathlib.Path(copy, "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, format_version=99)))
    with pytest.raises(serving_bundle.BundleError, match="format version 99"):
        serving_bundle.load(copy)
    manifest_path.write_text("{ not json")
    with pytest.raises(serving_bundle.BundleError, match="manifest.*damaged"):
        serving_bundle.load(copy)
    manifest_path.write_text(json.dumps(manifest))

    function = os.path.join(copy, "sampler_b2.jaxexport")
    with open(function, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 64)
    with pytest.raises(serving_bundle.BundleError, match="sampler_b2.*damaged"):
        serving_bundle.load(copy)
    with pytest.raises(serving_bundle.BundleError, match="not a jax.export"):
        serving_bundle.load(copy, verify=False)
    os.remove(function)
    with pytest.raises(serving_bundle.BundleError, match="lacks.*sampler_b2"):
        serving_bundle.load(copy)


def test_requests_beyond_the_bundle_are_refused(t2i_run, instruction_run):
    t2i = serving_bundle.load(t2i_run[1])
    with pytest.raises(ValueError, match=r"num_images in \[2\], not 3"):
        t2i.generate("a red circle", num_images=3)
    with pytest.raises(ValueError, match="'steps' is 1001"):
        t2i.generate("a red circle", num_images=2, steps=1001)
    with pytest.raises(ValueError, match="text-to-image"):
        t2i.batch("a [ref#1]", num_images=2)
    with pytest.raises(ValueError, match=r"guidance for \['image'\]"):
        t2i.generate("a red circle", num_images=2, guidance={"image": 2.0})
    with pytest.raises(ValueError, match="'text' is 33 tokens"):
        t2i.batch("x" * 32, num_images=2)

    instruct = serving_bundle.load(instruction_run[1])
    image = np.zeros((32, 32, 3), np.uint8)
    item = {"marker": "[ref#1]", "text": "a glim", "image": image}
    with pytest.raises(
        ValueError, match=r"\[ref#2\] in the text .* has no context item"
    ):
        instruct.batch("[ref#1] and [ref#2]", [item])
    with pytest.raises(ValueError, match="shape"):
        instruct.batch("[ref#1]", [dict(item, image=image[:16])])
    with pytest.raises(ValueError, match="limit is 4"):
        instruct.batch("[ref#1]", [item] * 5)
    with pytest.raises(ValueError, match="fields"):
        instruct.batch("[ref#1]", [{"marker": "[ref#1]"}])


def test_export_options_are_checked(t2i_run, tmp_path):
    workdir = t2i_run[0]
    for kwargs, match in [
        ({"sampler": "euler"}, "unknown sampler 'euler'"),
        ({"param_dtype": "float16"}, "unknown parameter dtype"),
        ({"batch_sizes": (0,)}, "positive integers"),
        ({"max_steps": 0}, "max_steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            export.export_bundle(workdir, str(tmp_path / "b"), **kwargs)
    with pytest.raises(ValueError, match="not empty"):
        export.export_bundle(workdir, t2i_run[1])
    with pytest.raises(checkpointing.CheckpointError):
        export.export_bundle(str(tmp_path / "nowhere"), str(tmp_path / "b"))


TEXTS = ["a red circle", "draw [ref#1] in the style of [ref#2]", "ünïcødé [ref#3]x", ""]


def _bundle_tokenizer(tok, bundle):
    """`tok` written as `launch.export` writes it, read back by the loader."""
    directory = bundle / serving_bundle.TOKENIZER_DIR
    directory.mkdir(parents=True)
    spec = export._tokenizer_spec(tok, str(directory))
    return serving_bundle._tokenizer(str(bundle), {"tokenizer": spec})


def test_bundle_tokenizers_encode_as_the_project_does(tmp_path):
    byte = tokenizers.ByteTokenizer(instructions.MARKERS)
    loader_byte = _bundle_tokenizer(byte, tmp_path / "byte")
    sentencepiece = pytest.importorskip("sentencepiece")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a red circle", "a blue square"] * 50 + TEXTS[:3]),
        model_prefix=str(tmp_path / "spm"),
        vocab_size=64,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    spm = tokenizers.SentencePieceTokenizer(
        str(tmp_path / "spm.model"), instructions.MARKERS
    )
    loader_spm = _bundle_tokenizer(spm, tmp_path / "spm")
    for tok, ours in ((byte, loader_byte), (spm, loader_spm)):
        ids, mask = tok.encode_batch(TEXTS, 12)
        for row, text in enumerate(TEXTS):
            got_ids, got_mask = ours.encode_row(text, 12)
            np.testing.assert_array_equal(got_ids, ids[row], err_msg=text)
            np.testing.assert_array_equal(got_mask, mask[row], err_msg=text)
