"""Speed benchmark plumbing: records, FLOP counts, the peer config's UNet."""

import json
import math
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import compare
from experiments import bench as bench_configs
from imagen_jax import bench

TRAIN_KEYS = (
    "images_per_s",
    "step_ms",
    "gflop_per_image",
    "gflop_per_s",
    "peak_gflop_per_s",
    "mfu",
    "num_params",
    "batch_size",
)


@pytest.fixture(scope="module")
def unet_record():
    config = bench_configs.get_config("peer,smoke")
    return bench.run_train(config, steps=2, warmup=1, matmul_size=256)


def test_train_record_has_the_keys_and_sane_values(unet_record):
    rec = unet_record
    assert set(TRAIN_KEYS) <= set(rec)
    assert rec["mode"] == "train" and rec["batch_size"] == 8
    for key in TRAIN_KEYS:
        assert math.isfinite(rec[key]) and rec[key] > 0, (key, rec[key])
    # Rates agree with each other.
    assert rec["images_per_s"] == pytest.approx(8 / (rec["step_ms"] / 1e3), rel=1e-6)
    achieved = rec["gflop_per_image"] * rec["images_per_s"]
    assert rec["gflop_per_s"] == pytest.approx(achieved, rel=1e-6)
    assert rec["mfu"] == pytest.approx(achieved / rec["peak_gflop_per_s"], rel=1e-6)
    assert rec["mfu"] < 1.5
    json.loads(json.dumps(rec))  # one JSON line


def test_train_gflop_is_about_three_forwards(unet_record):
    """Cost analysis covers the backward: a train step is ~3 forward passes."""
    unet, args, params = _peer_unet("peer,smoke", batch_size=8)
    with nn.logical_axis_rules(()):
        forward = jax.jit(lambda p: unet.apply(p, *args)).lower(params).compile()
    fwd_per_image = bench.compiled_gflop(forward) / 8
    ratio = unet_record["gflop_per_image"] / fwd_per_image
    assert 2.5 < ratio < 4.0, ratio


@pytest.mark.slow
def test_full_train_step_record():
    rec = bench.run_train(
        bench_configs.get_config("smoke"), steps=1, warmup=1, matmul_size=256
    )
    assert rec["what"].startswith("full train step")
    assert rec["gflop_per_image"] > 0 and rec["images_per_s"] > 0


@pytest.mark.slow
def test_sample_record():
    config = bench_configs.get_config("peer,smoke")
    rec = bench.run_sample(config, num_steps=2, reps=1, warmup=1)
    assert rec["mode"] == "sample" and rec["num_steps"] == 2
    assert rec["batch_size"] == config.bench.sample_batch
    assert rec["images_per_s"] == pytest.approx(
        config.bench.sample_batch / rec["batch_seconds"]
    )


def test_denoise_record_times_the_instruction_against_text_only():
    from experiments import stage2_shapes

    config = stage2_shapes.get_config("smoke")
    config.data.batch_size = 2
    rec = bench.run_denoise(config, reps=2, warmup=1)
    assert rec["mode"] == "denoise" and rec["batch_size"] == 2
    assert rec["context_items"] == config.data.max_context
    for name in ("text", "instruction", "encode_context"):
        assert len(rec["times_ms"][name]) == 2 and rec[f"{name}_ms"] > 0
        assert rec["what"][name].endswith("batch 2")
    ratios = [
        a / b for a, b in zip(rec["times_ms"]["instruction"], rec["times_ms"]["text"])
    ]
    assert rec["instruction_over_text"] == pytest.approx(np.median(ratios))
    with pytest.raises(ValueError, match="conditioning='instruction'"):
        bench.prepare_denoise(bench_configs.get_config("smoke"))


def _peer_unet(config_arg="peer", batch_size=1):
    """The bench UNet, its call arguments and its (abstract, boxed) variables."""
    config = bench_configs.get_config(config_arg)
    unet = bench.unet_of(config)
    batch = bench._unet_batch(config, batch_size)
    args = (batch["image"], jnp.zeros((batch_size,)), batch["text"], batch["text_mask"])
    with nn.logical_axis_rules(()):
        boxed = jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), *args))
    return unet, args, boxed


def _peer_params():
    return nn.meta.unbox(_peer_unet()[2])["params"]


def test_peer_config_matches_imagen_pytorch_spec():
    c = bench_configs.get_config("peer")
    assert (c.data.resolution, c.data.batch_size) == (32, 32)
    assert (c.data.max_text_len, c.text.d_model) == (16, 256)
    assert c.bench.text_encoder is False and c.model.patch_size == 1


def test_peer_unet_structure():
    params = _peer_params()
    for i, width in enumerate((64, 128, 256)):
        for side in ("enc", "dec"):
            level = params[f"{side}_{i}"]
            blocks = sorted(k for k in level if k.startswith("ResBlock"))
            assert blocks == ["ResBlock_0", "ResBlock_1"], (side, i, blocks)
            kernel = level["ResBlock_1"]["conv2"]["kernel"]
            chex.assert_shape(kernel, (3, 3, width, width))
            attends = any(k.startswith("Attention") for k in level)
            assert attends == (i > 0), (side, i)
    # Cross-attention reads the 256-wide text embeddings.
    chex.assert_shape(params["enc_1"]["Attention_1"]["key"]["kernel"], (256, 512))
    # Comparable work: imagen-pytorch's UNet has 19.57 M parameters.
    count = bench.count_params(params)
    assert 15e6 < count < 25e6, count


def test_matmul_peak_is_positive():
    peak = bench.matmul_peak_gflops(256, reps=2)
    assert math.isfinite(peak) and peak > 0
    with pytest.raises(ValueError, match="n=0"):
        bench.matmul_peak_gflops(0)


def test_compiled_gflop_counts_a_matmul():
    x = jnp.ones((64, 32))
    compiled = jax.jit(lambda a: a @ a.T).lower(x).compile()
    assert bench.compiled_gflop(compiled) == pytest.approx(2 * 64 * 64 * 32 / 1e9)


def test_config_options():
    c = bench_configs.get_config("peer,batch=16,dtype=bfloat16")
    assert c.data.batch_size == 16 and c.model.dtype == "bfloat16"
    with pytest.raises(ValueError, match="batch"):
        bench_configs.get_config("batch=many")


def test_compare_table_reports_the_ratios():
    side = {"num_params": 2e7, "gflop_per_image": 13.0, "gflop_per_s": 40.0}
    record = {
        "ours": dict(side, mfu=0.3),
        "peer": dict(side, mfu=0.1),
        "train": {
            "ours_seconds": 10.0,
            "peer_seconds": 30.0,
            "ours_images_per_s": 3.2,
            "peer_images_per_s": 32 / 30,
            "speedup": 3.0,
        },
        "sample": {
            "ours_seconds": 100.0,
            "peer_seconds": 400.0,
            "ours_images_per_s": 0.32,
            "peer_images_per_s": 0.08,
            "speedup": 4.0,
        },
        "sample_steps": 64,
    }
    text = compare.table(record)
    assert "| train images/s | 3.20 | 1.07 | **3.00x** |" in text
    assert "64-step sampling" in text and "**4.00x**" in text


@pytest.mark.slow
def test_launcher_prints_one_json_line():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.bench",
            "--config=experiments/bench.py:peer,smoke",
            "--steps=1",
            "--warmup=1",
            "--matmul_size=256",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(TRAIN_KEYS) <= set(record)
