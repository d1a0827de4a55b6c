"""imagen-pytorch's train step and sampler on the peer configuration, timed.

Runs in `benchmarks/.venv-peer` (torch 2.13.0 CPU + imagen-pytorch; made by
`run_peer.sh`), never in the project's environment:

    benchmarks/.venv-peer/bin/python benchmarks/peer_imagen_pytorch.py --reps 3
    benchmarks/.venv-peer/bin/python benchmarks/peer_imagen_pytorch.py --worker

The model is imagen-pytorch's
`Unet(dim=64, dim_mults=(1, 2, 4), num_resnet_blocks=2,
layer_attns=(False, True, True), layer_cross_attns=(False, True, True),
text_embed_dim=256, cond_dim=256)` inside
`Imagen(unets=..., image_sizes=32, timesteps=1000)`. One train step is
`Imagen.forward(images, text_embeds=...)` (its diffusion loss), backward and
`torch.optim.Adam.step()`. Sampling is `Imagen.sample(text_embeds=...,
cond_scale=...)`: imagen-pytorch has no DDIM, so its default (ancestral)
sampler runs on a 64-step grid, from an `Imagen` sharing the same Unet built
with `timesteps=64` (its continuous-time scheduler samples on that grid).

Standalone it prints one JSON line. With --worker it builds and warms up once,
then answers commands on stdin, one JSON line each on stdout (so a driver can
alternate it with another model): `info`, `train N`, `sample N` (N timed
repetitions; 0 = untimed warm-up) and `quit`. Library chatter goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import sys
import time
import types

DEFAULT_T5_DIM = 768  # google/t5-v1_1-base, the encoder imagen-pytorch names


def offline_imports():
    """Imports torch and imagen_pytorch without the model hub.

    imagen-pytorch calls `transformers.T5Config.from_pretrained(DEFAULT_T5_NAME)`
    at import time for a default argument; offline that fails, and given text
    embeddings make T5 unnecessary, so it is answered locally. The registry's
    torchvision wheels are built against CUDA torch and do not load with the
    CPU torch, so `run_peer.sh` removes torchvision; imagen-pytorch imports
    `torchvision.transforms` only for its dataset helpers, so an empty module
    stands in for it. Returns (torch, imagen_pytorch, notes).
    """
    import datasets  # noqa: F401  (it and transformers probe torchvision: first)
    import torch
    import transformers
    from transformers import T5Config, T5EncoderModel  # noqa: F401

    notes = []

    def from_pretrained(name, *args, **kwargs):
        del args, kwargs
        notes.append(f"T5Config.from_pretrained({name!r}) answered offline")
        return transformers.T5Config(d_model=DEFAULT_T5_DIM)

    transformers.T5Config.from_pretrained = from_pretrained
    try:
        importlib.import_module("torchvision.transforms")
    except (ImportError, OSError, RuntimeError) as e:
        notes.append(f"torchvision unusable ({type(e).__name__}); stubbed")
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        for module in (stub, stub.transforms):
            module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.transforms"] = stub.transforms
    import imagen_pytorch

    return torch, imagen_pytorch, notes


class Peer:
    """imagen-pytorch's Unet, its train step and its sampler on fixed inputs."""

    def __init__(self, args):
        torch, ip, self.notes = offline_imports()
        self.torch, self.ip, self.args = torch, ip, args
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        self.unet = ip.Unet(
            dim=64,
            dim_mults=(1, 2, 4),
            num_resnet_blocks=2,
            layer_attns=(False, True, True),
            layer_cross_attns=(False, True, True),
            text_embed_dim=args.text_dim,
            cond_dim=256,
            max_text_len=args.text_len,
        )
        self.imagen = self.with_timesteps(1000)
        # Sampling runs on a grid of `timesteps` steps; 1 step warms up cheaply.
        self.samplers = {n: self.with_timesteps(n) for n in (args.sample_steps, 1)}
        self.opt = torch.optim.Adam(
            self.unet.parameters(), lr=args.lr, betas=(0.9, 0.99)
        )
        self.images = torch.rand(args.batch, 3, args.res, args.res)
        self.text = torch.randn(args.batch, args.text_len, args.text_dim)
        self.mask = torch.ones(args.batch, args.text_len, dtype=torch.bool)
        self.sample_text = self.text[: args.sample_batch].clone()
        self.sample_mask = self.mask[: args.sample_batch].clone()

    def with_timesteps(self, timesteps: int):
        """An `Imagen` around the shared Unet with `timesteps` sampling steps."""
        return self.ip.Imagen(
            unets=self.unet,
            image_sizes=self.args.res,
            text_embed_dim=self.args.text_dim,
            timesteps=timesteps,
        )

    def loss(self):
        return self.imagen(
            self.images, text_embeds=self.text, text_masks=self.mask, unet_number=1
        )

    def train_step(self):
        self.imagen.train()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def sample(self, steps: int | None = None):
        sampler = self.samplers[steps or self.args.sample_steps]
        return sampler.sample(
            text_embeds=self.sample_text,
            text_masks=self.sample_mask,
            cond_scale=self.args.guidance,
            use_tqdm=False,
        )

    def gflop_per_image(self) -> float:
        """Forward + backward GFLOP per image (torch's FLOP counter: matmuls,
        convolutions, attention; elementwise ops are not counted)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.loss().backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops() / 1e9 / self.args.batch

    def info(self) -> dict:
        return {
            "torch": self.torch.__version__,
            "imagen_pytorch": _version(),
            "threads": self.torch.get_num_threads(),
            "num_params": sum(p.numel() for p in self.unet.parameters()),
            "gflop_per_image": self.gflop_per_image(),
            "batch_size": self.args.batch,
            "sample_batch": self.args.sample_batch,
            "sample_steps": self.args.sample_steps,
            "sampler": "imagen-pytorch ancestral (p_sample_loop), no DDIM",
            "notes": self.notes,
        }

    def timed(self, what: str, reps: int) -> dict:
        """Times `reps` runs; reps 0 is one untimed warm-up (1-step sampling)."""
        images = self.args.batch if what == "train" else self.args.sample_batch
        if what == "sample" and reps == 0:
            self.sample(steps=1)
            return {"what": what, "times": [], "images": images}
        run = {"train": self.train_step, "sample": self.sample}[what]
        times = []
        for _ in range(max(reps, 1)):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return {"what": what, "times": times if reps else [], "images": images}


def _version() -> str:
    from importlib.metadata import version

    return version("imagen-pytorch")


def serve(peer: Peer, out) -> None:
    """Answers `info`, `train N`, `sample N`, `quit` lines on stdin."""
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "quit":
            return
        if cmd == "info":
            reply = peer.info()
        elif cmd in ("train", "sample"):
            reply = peer.timed(cmd, int(rest[0]) if rest else 1)
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="serve commands on stdin")
    p.add_argument("--mode", choices=("train", "sample"), default="train")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--text_len", type=int, default=16)
    p.add_argument("--text_dim", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--sample_batch", type=int, default=32)
    p.add_argument("--sample_steps", type=int, default=64)
    p.add_argument("--guidance", type=float, default=3.0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out, sys.stdout = sys.stdout, sys.stderr  # keep library prints off the replies
    peer = Peer(args)
    if args.worker:
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        serve(peer, out)
        return
    for _ in range(args.warmup):
        peer.timed(args.mode, 0)
    result = peer.timed(args.mode, args.reps)
    times = sorted(result["times"])
    median = times[len(times) // 2]
    out.write(
        json.dumps(
            {
                **peer.info(),
                "mode": args.mode,
                "seconds_per_unit": median,
                "images_per_s": result["images"] / median,
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
