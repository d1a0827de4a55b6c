"""The memory plan of `launch.scaling` on the tiny paper-scale config."""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec

from experiments import paper_scale
from imagen_jax import scaling, train_state
from imagen_jax.models.imagen import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def config():
    return paper_scale.get_config("smoke")


def test_parse_meshes_fills_missing_axes_with_one():
    axes = ("data", "fsdp", "tensor")
    assert scaling.parse_meshes("64x4,256x1x1, 8", axes) == [
        (64, 4, 1),
        (256, 1, 1),
        (8, 1, 1),
    ]
    with pytest.raises(ValueError, match="64xa"):
        scaling.parse_meshes("64xa", axes)
    with pytest.raises(ValueError, match="has 4 sizes"):
        scaling.parse_meshes("2x2x2x2", axes)


def _expected_param_bytes(config, fsdp: int) -> tuple[int, int]:
    """(all parameter bytes, bytes per device with `fsdp` shards), from the
    logical axes: a parameter whose fsdp-mapped dimension divides is split."""
    model = build_model(config, scaling.vocab_size(config))
    boxed = jax.eval_shape(lambda: train_state.init_params(model, config))
    specs = nn.logical_to_mesh(
        nn.get_partition_spec(boxed), train_state.mesh_rules(config)
    )
    leaves = jax.tree.leaves(nn.meta.unbox(boxed))
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    total = per_device = 0
    for x, spec in zip(leaves, spec_leaves, strict=True):
        nbytes = math.prod(x.shape) * x.dtype.itemsize
        split = any(
            axes == "fsdp" and dim % fsdp == 0 for dim, axes in zip(x.shape, spec)
        )
        total += nbytes
        per_device += nbytes // fsdp if split else nbytes
    return total, per_device


def test_command_shards_parameters_over_fsdp(config, tmp_path):
    out = tmp_path / "scaling.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.scaling",
            "--config",
            "experiments/paper_scale.py:smoke",
            "--mesh",
            "4x1x1,1x4x1",
            "--nocompile",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    data, fsdp = json.loads(out.read_text())["meshes"]
    total, sharded = _expected_param_bytes(config, fsdp=4)
    assert data["params"] == total  # replicated over data
    assert fsdp["params"] == sharded < total
    assert fsdp["ema_params"] == fsdp["params"]
    assert data["batch_per_device"] == fsdp["batch_per_device"] == 2
    # Lowered, not compiled: judged by the estimate.
    assert fsdp["lowered"] and fsdp["total"] is None
    assert fsdp["fits_by"] == "estimate" and all(fsdp["fits"].values())
    assert fsdp["activations"] > 0


@pytest.mark.slow  # a compile of the smoke step: minutes on 2 cores
def test_compiled_step_reports_its_temporaries():
    # The smallest step of the config (no context path, no remat) compiles
    # fastest; the context path is lowered by the command test.
    config = paper_scale.get_config("smoke,remat=none")
    config.model.conditioning = "text"
    report = scaling.analyse_mesh(scaling.Plan(config), (2, 2, 1), jax.devices())
    assert report.fits_by == "memory_analysis (cpu)"
    assert report.temp > 0
    state = report.params + report.ema_params + report.opt_state
    # The donated state is an argument and an output counted once.
    assert state + report.batch <= report.total - report.temp < 1.1 * state
    # The estimate (traced residuals) is of the compiled peak's size.
    assert 0.5 * report.total < report.estimate < 2 * report.total
    assert all(report.fits.values())


def test_a_model_too_large_for_any_accelerator_does_not_fit(config):
    big = paper_scale.get_config("smoke")
    # ~10B UNet parameters: params, EMA and momentum exceed 95 GiB on one device.
    big.model.base_channels = 4096
    report = scaling.analyse_mesh(scaling.Plan(big), (1, 1, 1), None, lower=False)
    assert report.params + report.ema_params + report.opt_state > 95 * scaling.GIB
    assert report.fits_by == "estimate" and not any(report.fits.values())
