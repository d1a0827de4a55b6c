"""Per-device memory of the train step on meshes of any size, on paper.

The train state is built once with `jax.eval_shape` and, for each mesh, given
the shardings its logical axes map to on an `AbstractMesh`: parameter, EMA
and optimizer bytes per device are read off those shardings, exactly and
without allocating anything. The train step (`train.compile_train_step`, the
jit training runs) is then lowered ahead of time on that mesh. Where enough
devices exist to compile it (fake CPU devices:
`--xla_force_host_platform_device_count`), XLA's `memory_analysis()` gives
the peak: the state and batch, plus its temporaries (gradients,
activations, gathered weights, workspace).

Without a compile (a pod-size mesh on a small host) the peak is estimated:
state + batch + one float32 gradient per trained parameter (sharded as the
parameter) + the activations autodiff saves for the backward pass (the
residuals of `Imagen.forward`'s vjp, traced once per config, scaled to the
per-device batch). The estimate leaves out XLA's workspace and transient
gathered weights; compiled meshes report both, so the two can be compared.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AbstractMesh

from imagen_jax import conditioning as conditioning_lib
from imagen_jax import optim, sharding, train, train_state
from imagen_jax.models import t5
from imagen_jax.models.imagen import Imagen, build_model
from imagen_jax.text.tokenizers import make_tokenizer

GIB = 2**30

# HBM per chip (GiB) of the accelerators a pod job may run on.
ACCELERATORS: dict[str, float] = {
    "TPU v5e": 16.0,
    "TPU v4": 32.0,
    "A100 80GB": 80.0,
    "H100 80GB": 80.0,
    "TPU v5p": 95.0,
}


@dataclasses.dataclass
class MeshReport:
    """Per-device bytes of the train step on one mesh shape.

    Attributes:
      mesh: axis name -> size.
      devices: number of devices.
      batch_per_device: examples each device holds.
      params, ema_params, opt_state, batch: the shards of the train state and
        of the batch on one device (exact, from the shardings).
      gradients: one float32 gradient per trained parameter, sharded as it.
      activations: the activations saved for the backward pass at the
        per-device batch, plus the compute-dtype copies of the weights
        (counted whole, as if gathered).
      estimate: params + ema_params + opt_state + batch + gradients +
        activations.
      temp: XLA's temporaries of the compiled step; None without a compile.
      total: the compiled peak (argument + output - aliased + temp from
        `memory_analysis()`); None without a compile.
      fits: accelerator -> the step fits its HBM: by `total` when compiled,
        else by `estimate`.
      fits_by: "memory_analysis (<platform>)" or "estimate".
      lowered: the step was lowered on this mesh.
      lower_seconds, compile_seconds: wall time of each (None: not done).
    """

    mesh: dict[str, int]
    devices: int
    batch_per_device: float
    params: int
    ema_params: int
    opt_state: int
    batch: int
    gradients: int
    activations: int
    estimate: int
    temp: int | None
    total: int | None
    fits: dict[str, bool]
    fits_by: str
    lowered: bool
    lower_seconds: float | None
    compile_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        sizes = ("params", "ema_params", "opt_state", "batch", "gradients")
        for key in sizes + ("activations", "estimate", "temp", "total"):
            if out[key] is not None:
                out[f"{key}_gib"] = round(out[key] / GIB, 3)
        return out


def parse_meshes(text: str, axes: Sequence[str]) -> list[tuple[int, ...]]:
    """`"64x4x1,256x1x1"` -> mesh shapes; missing trailing axes are 1.

    Raises:
      ValueError: on a shape that is not positive integers joined by "x", or
        with more sizes than `axes`.
    """
    shapes = []
    for item in text.split(","):
        parts = item.strip().split("x")
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(
                f"mesh {item.strip()!r} is not sizes joined by 'x' (e.g. 64x4x1)"
            )
        if len(parts) > len(axes):
            raise ValueError(
                f"mesh {item.strip()!r} has {len(parts)} sizes; the config's "
                f"axes are {tuple(axes)}"
            )
        sizes = [int(p) for p in parts]
        shapes.append(tuple(sizes + [1] * (len(axes) - len(sizes))))
    return shapes


def vocab_size(config: ml_collections.ConfigDict) -> int:
    """Embedding rows of the text encoder.

    A sentencepiece config without its model file (a plan made before the
    files are at hand) has `text.vocab_size` rows, by default T5 v1.1's 32128,
    whose padding holds the `[ref#k]` marker tokens.
    """
    if config.text.tokenizer == "sentencepiece" and not config.text.vocab_path:
        return config.text.get("vocab_size", 0) or t5.T5_V1_1_VOCAB_SIZE
    return make_tokenizer(config).vocab_size


class Plan:
    """A config's model, optimizer and abstract train state, built once and
    placed on any number of meshes."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.model = build_model(config, vocab_size(config))
        self.tx, _ = optim.build_optimizer(config)
        self.rules = train_state.mesh_rules(config)
        self.boxed = jax.eval_shape(
            lambda: train_state.initial_state(self.model, self.tx, config)
        )
        self.params = nn.meta.unbox(self.boxed.params)
        self.per_example, self.per_model = activation_bytes(
            self.model, config, self.params
        )

    def state_on(self, mesh) -> tuple[train_state.TrainState, Any]:
        """The state as ShapeDtypeStructs sharded on `mesh`, and its shardings."""
        shardings = sharding.logical_shardings(self.boxed, mesh, self.rules)
        # Shardings first: they hold a sharding where optax has an empty
        # `MaskedNode` (a frozen text encoder's state), which stays as it is.
        state = jax.tree.map(
            lambda s, x: (
                jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                if isinstance(x, jax.ShapeDtypeStruct)
                else x
            ),
            shardings,
            nn.meta.unbox(self.boxed),
        )
        return state, shardings

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by top-level part (`unet`, `text_encoder`)."""
        return {
            name: sum(math.prod(x.shape) for x in jax.tree.leaves(sub))
            for name, sub in self.params.items()
        }


def trained_parts(config, params: dict) -> tuple[dict, dict]:
    """(trained, frozen) top-level parts of `params` (`text.frozen`)."""
    frozen = {"text_encoder"} if config.text.frozen else set()
    return (
        {k: v for k, v in params.items() if k not in frozen},
        {k: v for k, v in params.items() if k in frozen},
    )


def activation_bytes(model: Imagen, config, params) -> tuple[float, int]:
    """What autodiff saves of the forward pass for the backward pass:
    (bytes per example, bytes per model).

    The residuals of the vjp of `Imagen.forward` (every condition kept, the
    trained parameters differentiated), traced (never run) at two batch
    sizes: their growth is the per-example part. The per-model part counts
    the residuals not in the parameters' float32 (the weights cast to the
    compute dtype); the float32 weights the backward reads are the
    parameters themselves, already in the state.
    """
    small, large = (_residual_bytes(model, config, params, b) for b in (2, 4))
    per_example = (large[0] - small[0]) / 2
    per_model = max(2 * small[1] - large[1], 0)
    return per_example, per_model


def _residual_bytes(model: Imagen, config, params, batch_size: int) -> tuple:
    """(all, not float32) bytes of the vjp residuals at `batch_size`."""
    shapes = conditioning_lib.batch_shapes(config.data, model.conditioning, batch_size)
    batch = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
    trained, frozen = trained_parts(config, params)

    def loss(trained, frozen, batch):
        variables = {"params": {**trained, **jax.lax.stop_gradient(frozen)}}
        z = jnp.zeros(batch["image"].shape, jnp.float32)
        logsnr = jnp.zeros(batch["image"].shape[:1], jnp.float32)
        out = model.apply(variables, z, logsnr, batch, True, method=Imagen.forward)
        return jnp.mean(jnp.square(out))

    def residuals(trained, frozen, batch):
        _, vjp_fn = jax.vjp(lambda t: loss(t, frozen, batch), trained)
        return [x for x in jax.tree.leaves(vjp_fn) if isinstance(x, jax.Array)]

    saved = jax.eval_shape(residuals, trained, frozen, batch)
    nbytes = [math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in saved]
    low = [n for n, x in zip(nbytes, saved) if x.dtype != jnp.float32]
    return sum(nbytes), sum(low)


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs.

    Every device holds a shard of the same shape (`sharding._fit_spec` keeps
    only the mesh axes that divide their dimension).
    """
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def abstract_batch(config, conditioning, batch_sharding) -> dict:
    """The global training batch as sharded ShapeDtypeStructs."""
    shapes = conditioning_lib.batch_shapes(
        config.data, conditioning, config.data.batch_size
    )
    return {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
        for name, (shape, dtype) in shapes.items()
    }


def _batch_shards(config, mesh: AbstractMesh) -> int:
    shards = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
    if config.data.batch_size % shards:
        shape = "x".join(str(s) for s in mesh.axis_sizes)
        raise ValueError(
            f"mesh {shape}: batch {config.data.batch_size} does not divide over "
            f"its {shards} data x fsdp shards"
        )
    return shards


def analyse_mesh(
    plan: Plan,
    shape: tuple[int, ...],
    devices: Sequence[jax.Device] | None,
    lower: bool = True,
) -> MeshReport:
    """The report of `plan` on a `shape` mesh.

    Args:
      plan: the config's `Plan`.
      shape: the mesh's sizes, one per `config.mesh.axes`.
      devices: devices to compile on (at least the mesh's size; their
        platform is the one lowered for), or None not to compile.
      lower: lower the train step on the mesh (implied by `devices`).
    """
    config = plan.config
    mesh = AbstractMesh(tuple(shape), tuple(config.mesh.axes))
    shards = _batch_shards(config, mesh)
    state, shardings = plan.state_on(mesh)
    step_fn, batch_sharding = train.compile_train_step(
        plan.model, plan.tx, config, mesh, shardings
    )
    batch = abstract_batch(config, plan.model.conditioning, batch_sharding)
    memory, seconds = None, [None, None]
    if lower or devices:
        devices = devices[: mesh.size] if devices else None
        memory, seconds = _lower_and_compile(plan, step_fn, state, batch, devices)
    trained, _ = trained_parts(config, state.params)
    gradients = device_bytes(
        jax.tree.map(lambda x: x.update(dtype=jnp.float32), trained)
    )
    per_device = config.data.batch_size // shards
    return _report(
        plan, mesh, state, batch, gradients, per_device, memory, seconds, devices
    )


def _lower_and_compile(plan, step_fn, state, batch, devices) -> tuple:
    """Lowers `step_fn` (and compiles it on exactly `devices`, if given).

    Returns `memory_analysis()` (None without a compile) and the seconds
    spent lowering and compiling.
    """
    platform = devices[0].platform if devices else "cpu"
    t0 = time.time()
    # The logical-axis rules as training traces the step (no mesh context:
    # as under `train_and_evaluate`'s `with mesh`, flax's activation
    # constraints are inactive and XLA propagates the shardings).
    with nn.logical_axis_rules(plan.rules):
        lowered = step_fn.trace(state, batch).lower(lowering_platforms=(platform,))
    seconds = [time.time() - t0, None]
    if not devices:
        return None, seconds
    t0 = time.time()
    compiled = lowered.compile(device_assignment=tuple(devices))
    seconds[1] = time.time() - t0
    return compiled.memory_analysis(), seconds


def _report(plan, mesh, state, batch, gradients, per_device, memory, seconds, devs):
    parts = dict(
        params=device_bytes(state.params),
        ema_params=device_bytes(state.ema_params),
        opt_state=device_bytes(state.opt_state),
        batch=device_bytes(batch),
        gradients=gradients,
        activations=int(plan.per_example * per_device) + plan.per_model,
    )
    estimate = sum(parts.values())
    temp = total = None
    fits_by = "estimate"
    if memory is not None:
        temp = int(memory.temp_size_in_bytes)
        total = int(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + temp
        )
        fits_by = f"memory_analysis ({devs[0].platform})"
    peak = estimate if total is None else total
    return MeshReport(
        mesh=dict(mesh.shape),
        devices=mesh.size,
        batch_per_device=per_device,
        **parts,
        estimate=estimate,
        temp=temp,
        total=total,
        fits={name: peak <= gib * GIB for name, gib in ACCELERATORS.items()},
        fits_by=fits_by,
        lowered=seconds[0] is not None,
        lower_seconds=None if seconds[0] is None else round(seconds[0], 1),
        compile_seconds=None if seconds[1] is None else round(seconds[1], 1),
    )


def analyse(
    config: ml_collections.ConfigDict,
    shapes: Sequence[tuple[int, ...]],
    compile_up_to: int | None = None,
    lower: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The memory report of `config` on every mesh of `shapes`.

    Args:
      config: an experiment config.
      shapes: mesh shapes (one size per `config.mesh.axes`).
      compile_up_to: compile the meshes of at most this many devices (of
        `jax.devices()`); None: every mesh `jax.devices()` covers; 0: none.
      lower: lower the step on the meshes that are not compiled.
      log: called with one line per mesh.

    Returns:
      A JSON-able dict: the parameter counts, the activation bytes, the
      accelerators' HBM and one `MeshReport` per mesh.
    """
    available = jax.devices()
    limit = len(available) if compile_up_to is None else compile_up_to
    plan = Plan(config)
    meshes = []
    for shape in shapes:
        compile_here = math.prod(shape) <= min(limit, len(available))
        report = analyse_mesh(plan, shape, available if compile_here else None, lower)
        log(summary_line(report))
        meshes.append(report.to_json())
    return {
        "parameters": plan.parameter_counts(),
        "activation_bytes_per_example": int(plan.per_example),
        "activation_bytes_per_model": plan.per_model,
        "batch_size": config.data.batch_size,
        "resolution": config.data.resolution,
        "accelerators_gib": ACCELERATORS,
        "jax": jax.__version__,
        "meshes": meshes,
    }


def summary_line(report: MeshReport) -> str:
    """One line per mesh: its shape, the state and peak per device, fits."""
    shape = "x".join(str(s) for s in report.mesh.values())
    state = (report.params + report.ema_params + report.opt_state) / GIB
    fits = [name for name, ok in report.fits.items() if ok] or ["none"]
    if report.total is None:
        peak = f"~{report.estimate / GIB:.1f} GiB (estimate)"
    else:
        peak = f"{report.total / GIB:.2f} GiB (compiled)"
    return (
        f"mesh {shape}: state {state:.2f} GiB, peak {peak} per device; "
        f"fits: {', '.join(fits)}"
    )
