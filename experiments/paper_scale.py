"""Instruct-Imagen at its published scale, for planning pod jobs (issue 16).

    python -m launch.scaling --config experiments/paper_scale.py \
        --mesh 256x1x1,64x4x1,16x16x1,1x256x1,32x4x2 --nocompile

`launch.scaling` lowers this config's train step ahead of time on meshes of
pod size and reports the memory every device needs (docs/scaling.md); no
parameter is allocated. Training it needs T5 v1.1 XXL itself (a converted
checkpoint and its sentencepiece model: `--config.text.pretrained`, README)
and image-text data; the data fields are stage 2's ShapesWorld ones.

What the paper fixes (DESIGN.md §1b): a 128x128 base UNet of 2.51B
parameters, +~10% for the context cross-attention (2.76B); one ResNet block
per UNet block, several blocks per resolution; self-, text and context
cross-attention in every block of the two lowest stages (32 and 16 px); a
frozen T5-XXL encoder; v-prediction, L2 loss, cosine schedule; Adafactor
(b1 0.9, b2 0.999), constant LR 1e-4 after 10k warm-up, batch 512, EMA
0.9999; stage 1 gives 3 retrieved neighbours as context.
What it does not publish (our choices, fitted to the counts above): the
widths. Base 512 channels x (1, 2, 4, 4), 4 blocks per level, 26 heads of 64
(cross-attention keys and values read T5-XXL's 4096-wide tokens): 2.53B UNet
parameters without the context layers, 2.76B with them (+9%). Text lengths
(128 instruction tokens, 32 per context item) are assumptions too.

Options (`:a=1,b`):
  smoke: a tiny model with the same structure, for CPU tests.
  remat: a `jax.checkpoint_policies` name applied per UNet level, or "none".
    By default each level's activations are recomputed in the backward pass
    ("nothing_saveable"): without it one example saves ~23 GiB of
    activations and, of the meshes of up to 512 chips in docs/scaling.md,
    only one (fsdp over 512) fits a v4.
  batch: global batch size (0 keeps the paper's 512).
"""

import ml_collections

from experiments import stage2_shapes
from imagen_jax.config_utils import parse_arg

OPTIONS = dict(smoke=False, remat="nothing_saveable", batch=0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, **OPTIONS)
    c = stage2_shapes.get_config("smoke" if opts.smoke else None)
    # Stage 1 of the paper: every example with its retrieved neighbours.
    c.model.conditioning = "instruction"
    c.data.mixture = ml_collections.ConfigDict()
    c.data.variant = "full"

    c.text.frozen = True
    c.diffusion.schedule = "cosine"
    c.diffusion.param = "v"
    # The paper's plain L2 loss: no min-SNR weighting.
    c.diffusion.min_snr_gamma = 0.0
    # Instruct-Imagen: 10% drop text and context, 10% drop context only.
    c.diffusion.cond_drop.all = 0.1
    c.diffusion.cond_drop.context = 0.1
    c.diffusion.cond_drop.text = 0.0
    c.diffusion.cond_drop.image = 0.0

    c.optim.name = "adafactor"
    c.optim.lr = 1e-4
    c.optim.decay = "constant"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.ema_decay = 0.9999
    c.model.remat_policy = opts.remat
    if opts.smoke:
        c.data.max_context = 3
        c.model.context_slots = 0.0
    else:
        _paper(c)
    if opts.batch:
        c.data.batch_size = opts.batch
    return c


def _paper(c: ml_collections.ConfigDict) -> None:
    """The published sizes (and our fitted widths; see the module docstring)."""
    c.data.resolution = 128
    c.data.batch_size = 512
    c.data.max_text_len = 128
    c.data.ctx_text_len = 32
    # Stage 1: 3 neighbours per example, every one encoded.
    c.data.max_context = 3
    c.model.context_slots = 0.0

    # T5 v1.1 XXL encoder, frozen (sentencepiece vocabulary: 32128 rows).
    c.text.tokenizer = "sentencepiece"
    c.text.vocab_size = 32128
    c.text.d_model = 4096
    c.text.d_kv = 64
    c.text.d_ff = 10240
    c.text.num_layers = 24
    c.text.num_heads = 64

    c.model.dtype = "bfloat16"
    c.model.base_channels = 512
    c.model.channel_mults = (1, 2, 4, 4)
    c.model.num_res_blocks = 4
    # Attention at the two lowest stages (32 and 16 px), in every block.
    c.model.attn_levels = (False, False, True, True)
    c.model.attn_blocks = "all"
    c.model.num_heads = 26
    c.model.head_dim = 64
    c.model.cond_dim = 2048
    c.model.patch_size = 1
    c.model.coord_channels = False
    c.model.text_pool = "mean"
    # The plain forms accelerator compilers are tuned for (`layers.KERNELS`).
    c.model.kernels = "stock"
    # Weights over fsdp, batch over data x fsdp (`launch.scaling` compares
    # other shapes; docs/scaling.md says which fit which accelerator).
    c.mesh.shape = (-1, 16, 1)

    c.optim.warmup_steps = 10_000
    c.train.num_steps = 500_000
    c.train.log_every = 100
    c.train.checkpoint_every = 5_000
    c.train.sample_every = 20_000
    c.sample.sampler = "ddpm"
    c.sample.steps = 256
    c.sample.guidance = 25.0
    c.sample.oscillate = True
    c.sample.clip_x0 = "dynamic"
