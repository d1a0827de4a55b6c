"""Forward + backward time of the peer UNet's building blocks, JAX vs torch.

    python benchmarks/ops.py --framework jax   > ops_jax.json
    benchmarks/.venv-peer/bin/python benchmarks/ops.py --framework torch >ops_torch.json
    python benchmarks/ops.py --compare ops_jax.json ops_torch.json

Each op runs on the shapes of `experiments/bench.py:peer` (batch 32) and is
timed as the median of `--reps` calls of value-and-gradient, after a warm-up.
Neither side imports imagen_jax or imagen-pytorch: these are the raw kernels
(3x3 convolution, GroupNorm + SiLU, attention over 16x16 and 8x8 maps, a
dense projection), so the comparison says which kernels make up the gap in
the full step. One JSON line per op: {op, framework, ms, gflop, gflop_per_s}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

BATCH = 32
# (name, kind, shape args); FLOPs are forward + backward (3x the forward).
OPS = [
    ("conv3x3_64ch_32x32", "conv", (32, 64, 64)),
    ("conv3x3_128ch_16x16", "conv", (16, 128, 128)),
    ("conv3x3_256ch_8x8", "conv", (8, 256, 256)),
    ("groupnorm_silu_128ch_16x16", "norm", (16, 128)),
    ("attention_8x64_16x16", "attn", (16, 8, 64)),
    ("attention_8x64_8x8", "attn", (8, 8, 64)),
    ("dense_128_to_512_16x16", "dense", (16, 128, 512)),
]
# JAX-only rewrites of the same ops (named base/variant), compared against the
# base op of the other framework: a 3x3 conv as one im2col matmul, attention
# with heads moved in front so both einsums are plain batched GEMMs, and
# heads first with the scale on q and the softmax normalisation applied to the
# [Q, D] output (imagen_jax.models.layers.attention).
JAX_VARIANTS = [
    ("conv3x3_64ch_32x32/im2col", "conv_im2col", (32, 64, 64)),
    ("conv3x3_128ch_16x16/im2col", "conv_im2col", (16, 128, 128)),
    ("conv3x3_256ch_8x8/im2col", "conv_im2col", (8, 256, 256)),
    ("attention_8x64_16x16/heads_first", "attn_heads_first", (16, 8, 64)),
    ("attention_8x64_8x8/heads_first", "attn_heads_first", (8, 8, 64)),
    ("attention_8x64_16x16/deferred_norm", "attn_deferred", (16, 8, 64)),
    ("attention_8x64_8x8/deferred_norm", "attn_deferred", (8, 8, 64)),
]


def flops(kind, args) -> float:
    kind = kind.split("_")[0]
    if kind == "conv":
        r, cin, cout = args
        return 3 * 2 * BATCH * r * r * cin * cout * 9
    if kind == "attn":
        r, heads, dim = args
        t = r * r
        return 3 * 2 * 2 * BATCH * heads * t * t * dim
    if kind == "dense":
        r, cin, cout = args
        return 3 * 2 * BATCH * r * r * cin * cout
    return 0.0


def _time(fn, reps, warmup=2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _attention_inputs(key, args):
    """Head width and (q, k, v) [BATCH, tokens, heads, dim] for the attention ops."""
    import jax

    r, heads, dim = args
    q = jax.random.normal(key, (BATCH, r * r, heads, dim))
    return dim, (q, q * 0.5, q * 0.25)


def jax_op(kind, args):
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    if kind == "conv":
        r, cin, cout = args
        x = jax.random.normal(key, (BATCH, r, r, cin))
        w = jax.random.normal(key, (3, 3, cin, cout)) * 0.05

        def f(x, w):
            y = jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return jnp.sum(y**2)

        inputs = (x, w)
    elif kind == "conv_im2col":
        r, cin, cout = args
        x = jax.random.normal(key, (BATCH, r, r, cin))
        w = jax.random.normal(key, (3, 3, cin, cout)) * 0.05

        def f(x, w):
            xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            cols = [xp[:, i : i + r, j : j + r] for i in range(3) for j in range(3)]
            y = jnp.concatenate(cols, axis=-1) @ w.reshape(9 * cin, cout)
            return jnp.sum(y**2)

        inputs = (x, w)
    elif kind == "norm":
        r, c = args
        x = jax.random.normal(key, (BATCH, r, r, c))
        g = jnp.ones((c,))

        def f(x, g):
            xg = x.reshape(BATCH, r, r, 32, c // 32)
            mean = xg.mean(axis=(1, 2, 4), keepdims=True)
            var = xg.var(axis=(1, 2, 4), keepdims=True)
            y = ((xg - mean) * jax.lax.rsqrt(var + 1e-5)).reshape(x.shape) * g
            return jnp.sum(jax.nn.silu(y) ** 2)

        inputs = (x, g)
    elif kind == "attn":
        dim, inputs = _attention_inputs(key, args)

        def f(q, k, v):
            logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / dim**0.5
            w = jax.nn.softmax(logits, axis=-1)
            return jnp.sum(jnp.einsum("bnqk,bknd->bqnd", w, v) ** 2)

    elif kind == "attn_heads_first":
        dim, inputs = _attention_inputs(key, args)

        def f(q, k, v):
            q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
            logits = jnp.einsum("bnqd,bnkd->bnqk", q, k) / dim**0.5
            w = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bnqk,bnkd->bnqd", w, v).transpose(0, 2, 1, 3)
            return jnp.sum(out**2)

    elif kind == "attn_deferred":
        dim, inputs = _attention_inputs(key, args)

        def f(q, k, v):
            q = q * dim**-0.5
            q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
            logits = jnp.einsum("bnqd,bnkd->bnqk", q, k)
            logits = logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))
            e = jnp.exp(logits)
            out = jnp.einsum("bnqk,bnkd->bnqd", e, v) / e.sum(-1, keepdims=True)
            return jnp.sum(out.transpose(0, 2, 1, 3) ** 2)

    else:
        r, cin, cout = args
        x = jax.random.normal(key, (BATCH, r * r, cin))
        w = jax.random.normal(key, (cin, cout)) * 0.05

        def f(x, w):
            return jnp.sum((x @ w) ** 2)

        inputs = (x, w)
    grad = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(inputs)))))
    return lambda: jax.block_until_ready(grad(*inputs))


def torch_op(kind, args, threads):
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)

    def param(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    if kind == "conv":
        r, cin, cout = args
        x, w = param(BATCH, cin, r, r), param(cout, cin, 3, 3, scale=0.05)

        def f():
            return (torch.nn.functional.conv2d(x, w, padding=1) ** 2).sum()

        leaves = (x, w)
    elif kind == "norm":
        r, c = args
        x, g = param(BATCH, c, r, r), param(c)

        def f():
            y = torch.nn.functional.group_norm(x, 32, g)
            return (torch.nn.functional.silu(y) ** 2).sum()

        leaves = (x, g)
    elif kind == "attn":
        r, heads, dim = args
        t = r * r
        q = param(BATCH, heads, t, dim)
        k, v = param(BATCH, heads, t, dim), param(BATCH, heads, t, dim)

        def f():
            # imagen-pytorch's Attention: einsum similarity, softmax, einsum.
            sim = torch.einsum("bhid,bhjd->bhij", q, k) * dim**-0.5
            out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
            return (out**2).sum()

        leaves = (q, k, v)
    else:
        r, cin, cout = args
        x, w = param(BATCH, r * r, cin), param(cin, cout, scale=0.05)

        def f():
            return ((x @ w) ** 2).sum()

        leaves = (x, w)

    def step():
        for leaf in leaves:
            leaf.grad = None
        f().backward()

    return step


def compare(path_a: str, path_b: str) -> None:
    def load(path):
        with open(path) as f:
            return {r["op"]: r for r in map(json.loads, f) if r.get("op")}

    a, b = load(path_a), load(path_b)
    b.update({op: b[op.split("/")[0]] for op in a if op.split("/")[0] in b})
    fa = next(iter(a.values()))["framework"]
    fb = next(iter(b.values()))["framework"]
    print(f"| op | {fa} ms | {fb} ms | {fa} GFLOP/s | {fb} GFLOP/s | {fb}/{fa} time |")
    print("|---|---|---|---|---|---|")
    for op in a:
        if op in b:
            ra, rb = a[op], b[op]
            print(
                f"| {op} | {ra['ms']:.1f} | {rb['ms']:.1f} | "
                f"{ra['gflop_per_s']:.1f} | {rb['gflop_per_s']:.1f} | "
                f"{rb['ms'] / ra['ms']:.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=("jax", "torch"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if not args.framework:
        parser.error("give --framework jax|torch, or --compare A B")
    ops = OPS + (JAX_VARIANTS if args.framework == "jax" else [])
    for name, kind, shape in ops:
        if args.framework == "jax":
            fn = jax_op(kind, shape)
        else:
            fn = torch_op(kind, shape, args.threads)
        seconds = _time(fn, args.reps)
        gflop = flops(kind, shape) / 1e9
        record = {
            "op": name,
            "framework": args.framework,
            "ms": 1e3 * seconds,
            "gflop": gflop,
            "gflop_per_s": gflop / seconds if gflop else 0.0,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
