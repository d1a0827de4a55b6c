"""Speed measurements: train-step and sampler throughput, FLOPs and MFU.

Two train steps can be timed:
- the project's own `train.train_step` (T5 text encoder + UNet, EMA, clipped
  AdamW/Adafactor), for any training config;
- with `config.bench.text_encoder = False`, a bench-only step of the UNet
  alone on given text embeddings `[B, max_text_len, text.d_model]` with plain
  Adam and no EMA: the work imagen-pytorch's `Imagen.forward(images,
  text_embeds=...)` + backward + `Adam.step()` does, so the two compare.

FLOPs come from XLA's cost analysis of the compiled step; MFU divides the
achieved FLOP/s by the best FLOP/s of a large float32 matmul timed in the same
process, i.e. the machine's measured (not nominal) peak.

Every `prepare_*` returns a `Bench`: a zero-argument `run()` that does one
blocking unit of work (one train step, or one sampled batch), so a driver can
interleave it with a peer's runs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from imagen_jax import conditioning, sampling, sharding, train, train_state
from imagen_jax.diffusion import losses
from imagen_jax.models.imagen import Imagen, build_model
from imagen_jax.models.unet import UNet
from imagen_jax.text.tokenizers import make_tokenizer


@dataclasses.dataclass
class Bench:
    """One blocking unit of work and what it is.

    Attributes:
      run: does one unit (a train step or a sampled batch) and blocks on it.
      images: images per unit.
      num_params: trainable + frozen parameters of the model timed.
      gflop: GFLOP of one unit from XLA's cost analysis (0 if unknown).
      description: what the unit is, for the report.
      warm: a cheaper run that compiles/warms the same program (default: run).
    """

    run: Callable[[], None]
    images: int
    num_params: int
    gflop: float
    description: str
    warm: Callable[[], None] | None = None

    def warm_up(self, times: int = 1) -> None:
        for _ in range(times):
            (self.warm or self.run)()


@flax.struct.dataclass
class UNetState:
    """State of the bench-only UNet step: no EMA (imagen-pytorch has none)."""

    step: jax.Array
    params: Any
    opt_state: Any


def bench_option(config: ml_collections.ConfigDict, name: str, default: Any) -> Any:
    """`config.bench.<name>`, or `default` for configs without a bench group."""
    group = config.get("bench")
    return default if group is None else group.get(name, default)


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def compiled_gflop(compiled: Any) -> float:
    """GFLOP of a compiled XLA program from its cost analysis (0 if absent)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0)) / 1e9


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an [n, n] @ [n, n] float32 matmul on the default device."""
    if n < 1 or reps < 1:
        raise ValueError(f"need n >= 1 and reps >= 1, got n={n}, reps={reps}")
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def time_runs(run: Callable[[], None], reps: int) -> list[float]:
    """Wall seconds of each of `reps` calls of a blocking `run`."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def _random_images(rng: jax.Array, batch: int, res: int) -> jax.Array:
    return jax.random.uniform(rng, (batch, res, res, 3), jnp.float32, -1.0, 1.0)


def unet_train_step(
    state: UNetState, batch: dict, *, unet: UNet, tx: Any, config
) -> tuple[UNetState, jax.Array]:
    """Diffusion loss of the UNet on given text embeddings, backward, Adam update.

    `batch`: `image [B,H,W,3]` float in [-1, 1], `text [B,L,D]`, `text_mask [B,L]`.
    """
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
    drop_rng, loss_rng, dropout_rng = jax.random.split(rng, 3)
    drop = config.diffusion.cond_drop
    masks = train.drop_conditions(drop_rng, batch, drop, conditioning.TEXT)

    def loss_fn(params):
        def apply_fn(z, logsnr):
            return unet.apply(
                {"params": params},
                z,
                logsnr,
                batch["text"],
                masks["text_mask"],
                True,
                rngs={"dropout": dropout_rng},
            )

        return losses.diffusion_loss(
            apply_fn, batch["image"], loss_rng, **train.loss_options(config)
        )

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return UNetState(step=state.step + 1, params=params, opt_state=opt_state), loss


def unet_of(config: ml_collections.ConfigDict) -> UNet:
    """The UNet of `config`'s model, alone (as `build_model` configures it)."""
    model = build_model(config, vocab_size=259)  # the vocabulary is unused here
    return UNet(model.unet_config, dtype=model.dtype, param_dtype=model.param_dtype)


def _unet_batch(config, batch_size: int) -> dict:
    """Random images and text embeddings of the shapes the config trains on."""
    rng_img, rng_txt = jax.random.split(jax.random.PRNGKey(config.seed + 1))
    length, width = config.data.max_text_len, config.text.d_model
    return {
        "image": _random_images(rng_img, batch_size, config.data.resolution),
        "text": jax.random.normal(rng_txt, (batch_size, length, width), jnp.float32),
        "text_mask": jnp.ones((batch_size, length), bool),
    }


def prepare_unet_train(config: ml_collections.ConfigDict, donate: bool = True) -> Bench:
    """The bench-only UNet step (given text embeddings, Adam), compiled.

    Sharded like the real step: state by the config's logical rules, the
    batch over the data axes of the config's mesh.
    """
    unet, batch_size = unet_of(config), config.data.batch_size
    o = config.optim
    tx = optax.adam(o.lr, o.b1, o.b2)
    rules = train_state.mesh_rules(config)
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes)
    example = _unet_batch(config, 1)

    def init():
        params = unet.init(
            jax.random.PRNGKey(config.seed),
            example["image"],
            jnp.zeros((1,)),
            example["text"],
            example["text_mask"],
        )["params"]
        return UNetState(jnp.zeros((), jnp.int32), params, tx.init(params))

    state, state_shardings = sharding.sharded_init(init, mesh, rules)
    data_axes = tuple(a for a in ("data", "fsdp") if a in config.mesh.axes)
    batch_sharding = sharding.batch_sharding(mesh, data_axes)
    batch = jax.device_put(_unet_batch(config, batch_size), batch_sharding)
    jitted = jax.jit(
        functools.partial(unet_train_step, unet=unet, tx=tx, config=config),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,) if donate else (),
    )
    with mesh, nn.logical_axis_rules(rules):
        compiled = jitted.lower(state, batch).compile()
    holder = {"state": state}

    def run():
        holder["state"], loss = compiled(holder["state"], batch)
        loss.block_until_ready()

    return Bench(
        run=run,
        images=batch_size,
        num_params=count_params(state.params),
        # The compiled program is one device's share of the step.
        gflop=compiled_gflop(compiled) * mesh.size,
        description="UNet train step on given text embeddings (Adam)",
    )


def _token_batch(
    config, kind: conditioning.Conditioning, batch_size: int, vocab_size: int
) -> dict:
    """Random uint8 images and tokens with every mask set: a `kind` batch of
    the config's shapes (instructions with all K context items and an input
    image)."""
    shapes = conditioning.batch_shapes(config.data, kind, batch_size)
    rng = np.random.default_rng(config.seed + 1)
    draw = {
        np.uint8: lambda shape: rng.integers(0, 256, shape, np.uint8),
        np.int32: lambda shape: rng.integers(1, vocab_size, shape, np.int32),
        np.bool_: lambda shape: np.ones(shape, np.bool_),
    }
    return {name: draw[dtype](shape) for name, (shape, dtype) in shapes.items()}


def prepare_full_train(config: ml_collections.ConfigDict) -> Bench:
    """The project's own sharded `train.train_step` (T5 + UNet, EMA), compiled."""
    built, state = train.setup(config)
    local = _token_batch(
        config,
        built.model.conditioning,
        config.data.batch_size,
        built.tokenizer.vocab_size,
    )
    batch = sharding.global_batch(local, built.batch_sharding)
    mesh = built.mesh
    with mesh, nn.logical_axis_rules(built.rules):
        compiled = built.step_fn.lower(state, batch).compile()
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    return Bench(
        run=run,
        images=config.data.batch_size,
        num_params=count_params(state.params),
        # The compiled program is one device's share of the step.
        gflop=compiled_gflop(compiled) * mesh.size,
        description="full train step (T5 encoder + UNet, EMA)",
    )


def prepare_train(config: ml_collections.ConfigDict) -> Bench:
    """The train step `config.bench.text_encoder` names (default: the full one)."""
    if bench_option(config, "text_encoder", True):
        return prepare_full_train(config)
    return prepare_unet_train(config, donate=bench_option(config, "donate", True))


def _init_model(config: ml_collections.ConfigDict) -> tuple[Any, Any, int]:
    """The config's model, its initial params and its vocabulary size."""
    tokenizer = make_tokenizer(config)
    model = build_model(config, tokenizer.vocab_size)
    with nn.logical_axis_rules(train_state.mesh_rules(config)):
        params = jax.jit(
            lambda: nn.meta.unbox(train_state.init_params(model, config))
        )()
    return model, params, tokenizer.vocab_size


def prepare_sample(
    config: ml_collections.ConfigDict,
    num_steps: int,
    sampler: str = "ddim",
    batch_size: int | None = None,
) -> Bench:
    """One guided batch from `sampling.make_generate_fn`, compiled.

    The batch size is `config.bench.sample_batch` unless given; the guidance
    scales are `config.sample.guidance` (> 1, so every step runs every guidance
    branch) and, for instruction models, `config.sample.image_guidance`; their
    requests carry all K context items and an input image.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    model, params, vocab_size = _init_model(config)
    batch_size = batch_size or bench_option(config, "sample_batch", 32)
    batch = _token_batch(config, model.conditioning, batch_size, vocab_size)
    generate = sampling.make_generate_fn(model, config, sampler)
    s = config.sample
    args = (
        params,
        jax.tree.map(jnp.asarray, batch),
        jax.random.PRNGKey(0),
        jnp.int32(num_steps),
        jnp.float32(s.guidance),
        jnp.float32(s.get("image_guidance", 1.0)),
        jnp.int32(s.get("oscillate", False)),
    )
    compiled = generate.lower(*args).compile()

    def run(steps=args[3]):
        compiled(*args[:3], steps, *args[4:]).block_until_ready()

    branches = len(model.conditioning.guidance_chain) + 1
    return Bench(
        run=run,
        images=batch_size,
        num_params=count_params(params),
        gflop=0.0,  # the loop body is counted once by XLA: not a per-batch figure
        description=f"{sampler} {num_steps} steps, guidance {s.guidance}, "
        f"{model.conditioning.name} conditioning ({branches} branches), "
        f"batch {batch_size}",
        # The step count is traced: one step runs the same compiled program.
        warm=functools.partial(run, jnp.int32(1)),
    )


def prepare_denoise(
    config: ml_collections.ConfigDict, batch_size: int | None = None
) -> dict[str, Bench]:
    """One denoiser evaluation of an instruction model, three ways, compiled.

    - "text": text only (no memory, no input image): what a text-to-image
      model of the same UNet computes;
    - "instruction": with all K context items (memory precomputed) and the
      input image;
    - "encode_context": the K items' memory, which a sampler computes once per
      request (and the old sampler once per evaluation).

    The batch size is `config.data.batch_size` unless given.

    Raises:
      ValueError: the config's model is not an instruction model.
    """
    model, params, vocab_size = _init_model(config)
    if not model.conditioning.instruction:
        raise ValueError(
            "the denoise benchmark needs config.model.conditioning='instruction', "
            f"got {model.conditioning.name!r}"
        )
    b = batch_size or config.data.batch_size
    batch = jax.tree.map(
        jnp.asarray, _token_batch(config, model.conditioning, b, vocab_size)
    )
    variables = {"params": params}
    keep = jnp.ones((b,), bool)
    masks = conditioning.condition_masks(
        batch, model.conditioning, text=keep, context=keep, image=keep
    )
    cond = jax.jit(
        lambda: model.apply(variables, batch, masks, method=Imagen.condition)
    )()
    z = _random_images(jax.random.PRNGKey(2), b, config.data.resolution)
    logsnr = jnp.zeros((b,), jnp.float32)
    denoise = jax.jit(
        lambda c: model.apply(variables, z, logsnr, method=Imagen.denoise, **c)
    )
    text_only = {"text": cond["text"], "text_mask": cond["text_mask"]}
    encode = jax.jit(
        lambda: model.apply(
            variables,
            batch["ctx_images"],
            batch["ctx_tokens"],
            batch["ctx_text_mask"],
            batch["ctx_mask"],
            instruction=(batch["text_tokens"], batch["text_mask"]),
            method=Imagen.encode_memory,
        )
    )
    k = config.data.max_context
    units = {
        "text": (functools.partial(denoise, text_only), "denoiser, text only"),
        "instruction": (
            functools.partial(denoise, cond),
            f"denoiser, {k} context items (memory precomputed) + input image",
        ),
        "encode_context": (encode, f"memory of {k} context items"),
    }
    return {
        name: Bench(
            run=lambda fn=fn: jax.block_until_ready(fn()),
            images=b,
            num_params=count_params(params),
            gflop=0.0,
            description=f"{what}, batch {b}",
        )
        for name, (fn, what) in units.items()
    }


def summarize(bench: Bench, times: list[float]) -> dict:
    """Rates from per-unit wall times (median, so one stall does not count)."""
    seconds = statistics.median(times)
    return {
        "what": bench.description,
        "num_params": bench.num_params,
        "batch_size": bench.images,
        "reps": len(times),
        "seconds_per_unit": seconds,
        "images_per_s": bench.images / seconds,
        "gflop_per_image": bench.gflop / bench.images,
    }


def machine_info() -> dict:
    return {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def run_train(
    config: ml_collections.ConfigDict,
    steps: int = 5,
    warmup: int = 2,
    matmul_size: int = 2048,
) -> dict:
    """Times `steps` train steps after `warmup`; returns the bench record.

    Keys: images_per_s, step_ms, gflop_per_image, gflop_per_s,
    peak_gflop_per_s, mfu, num_params, batch_size, plus machine info.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    bench = prepare_train(config)
    bench.warm_up(warmup)
    out = summarize(bench, time_runs(bench.run, steps))
    peak = matmul_peak_gflops(matmul_size)
    achieved = out["gflop_per_image"] * out["images_per_s"]
    out.update(
        mode="train",
        step_ms=1e3 * out.pop("seconds_per_unit"),
        gflop_per_s=achieved,
        peak_gflop_per_s=peak,
        mfu=achieved / peak,
        **machine_info(),
    )
    return out


def run_sample(
    config: ml_collections.ConfigDict,
    num_steps: int = 64,
    reps: int = 2,
    warmup: int = 1,
    sampler: str = "ddim",
) -> dict:
    """Times `reps` sampled batches of `num_steps` steps after `warmup`."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got {reps}, {warmup}")
    bench = prepare_sample(config, num_steps, sampler)
    bench.warm_up(warmup)
    out = summarize(bench, time_runs(bench.run, reps))
    out.pop("gflop_per_image")
    out.update(
        mode="sample",
        sampler=sampler,
        num_steps=num_steps,
        batch_seconds=out.pop("seconds_per_unit"),
        **machine_info(),
    )
    return out


def run_denoise(
    config: ml_collections.ConfigDict, reps: int = 5, warmup: int = 2
) -> dict:
    """Times one denoiser evaluation with and without an instruction's context.

    The three units of `prepare_denoise` run in turns (text, instruction,
    encode, text, ...), so a drift of the machine's speed shows in all three,
    and the ratio is taken round by round.

    Returns:
      The record: `text_ms`, `instruction_ms`, `encode_context_ms` (medians),
      `instruction_over_text` (median of the rounds' ratios), each unit's
      description, the batch size, the context items, and machine info.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got {reps}, {warmup}")
    benches = prepare_denoise(config)
    for bench in benches.values():
        bench.warm_up(warmup)
    times = {name: [] for name in benches}
    for _ in range(reps):
        for name, bench in benches.items():
            times[name] += time_runs(bench.run, 1)
    out = {f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()}
    out.update(
        mode="denoise",
        instruction_over_text=statistics.median(
            a / b for a, b in zip(times["instruction"], times["text"], strict=True)
        ),
        what={name: bench.description for name, bench in benches.items()},
        times_ms={name: [1e3 * x for x in t] for name, t in times.items()},
        batch_size=benches["text"].images,
        context_items=config.data.max_context,
        reps=reps,
        **machine_info(),
    )
    return out
