"""Text-to-image on ShapesWorld: the README's demo and the base of later stages.

    python -m launch.train --config experiments/t2i_shapes.py --workdir runs/t2i
    python -m launch.train --config experiments/t2i_shapes.py:smoke --workdir /tmp/s

Options (`:a=1,b`): res (32 or 64), smoke (tiny CPU test variant),
minutes (training time budget; 0 = run all steps).
"""

import ml_collections

from imagen_jax.config_utils import parse_arg

# `:arg` options and their defaults (configs deriving from this one add theirs).
OPTIONS = dict(res=32, smoke=False, minutes=0.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(parse_arg(arg, **OPTIONS))


def build(arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config for parsed options `arg` (fields of `OPTIONS`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Resume order: workdir checkpoint, else `resume` (a checkpoint dir to
    # continue exactly), else `init_from` (params only, partial allowed).
    c.resume = ""
    c.init_from = ""
    # Regexes of parameter paths not loaded by `init_from` (kept at init).
    c.init_skip = ()

    c.data = ml_collections.ConfigDict()
    # Dataset name; only "shapes_world" is built in (real data: tfds builders).
    c.data.name = "shapes_world"
    c.data.data_dir = "data"
    c.data.resolution = arg.res
    # ShapesWorld variant: "full" (1-3 patterned objects on styled backgrounds)
    # or "simple" (single solid objects on plain backgrounds: the demo).
    c.data.variant = "simple"
    c.data.batch_size = 32
    c.data.max_text_len = 64
    # > 0: in the denoising loss the pixels in the box at each object's
    # position (`shapes_world.position_mask`) weigh 1 + this, the rest 1
    # (instruction datasets, from their scenes). A ShapesWorld object is a few
    # percent of the image and its fill (a dot every 3 pixels) a ninth of it.
    c.data.object_weight = 0.0
    # grain threads decoding/tokenising ahead of the step.
    c.data.num_threads = 2
    c.data.prefetch = 4

    c.text = ml_collections.ConfigDict()
    # A pretrained T5 / T5 v1.1 / Flan-T5: a local Hugging Face directory
    # (config.json, model.safetensors or model.safetensors.index.json and its
    # shards, spiece.model), or "" for the small encoder below trained with
    # the UNet. When set, training loads its encoder frozen and sets the
    # fields below from it: the tokenizer is its spiece.model, the
    # architecture its config.json (`imagen_jax.text.pretrained`).
    c.text.pretrained = ""
    # Captions encoded once by that frozen encoder (`launch.encode_text`,
    # `imagen_jax.text.precompute`): the directory it wrote (by default
    # WORKDIR/text_embeddings), or "" to run the encoder at every step.
    # Text-to-image datasets only, whose captions are fixed per record.
    c.text.precomputed = ""
    # Tokenizer: "byte" (no vocabulary file) or "sentencepiece" (`vocab_path`).
    c.text.tokenizer = "byte"
    c.text.vocab_path = ""
    # Trained jointly (from scratch) or frozen (no optimizer state, no updates).
    c.text.frozen = False
    # Embedding rows; 0 = the tokenizer's vocabulary size.
    c.text.vocab_size = 0
    c.text.d_model = 128
    c.text.d_kv = 32
    c.text.d_ff = 256
    c.text.num_layers = 2
    c.text.num_heads = 4
    # Feed-forward network: "gated-gelu" (T5 v1.1, Flan-T5) or "relu" (T5).
    c.text.feed_forward_proj = "gated-gelu"
    c.text.relative_attention_num_buckets = 32
    c.text.relative_attention_max_distance = 128
    # The relative position bias's initial std as a multiple of T5's
    # (d_model ** -0.5; a pretrained encoder's weights replace it). At 1 the
    # small encoder trained with the UNet stays blind to word order.
    c.text.relative_attention_init_scale = 1.0
    # Weight of `imagen.marker_text_loss` (instruction models): the
    # instruction's encoding at each context item's marker predicts the item's
    # text, a text-only objective standing in for T5's pretraining. 0 = off.
    c.text.marker_text_loss = 0.0
    # Its form (`imagen.MARKER_LOSS_FORMS`): "text", the cross-entropy of the
    # item's text; "contrast", each pair of items read at their own markers
    # against swapped, so that only what tells the items apart counts.
    c.text.marker_loss_form = "text"
    c.text.layer_norm_epsilon = 1e-6

    c.model = ml_collections.ConfigDict()
    c.model.name = "imagen"
    # What the model is conditioned on: "text" (text-to-image) or "instruction"
    # (text + context items + a channel-concatenated input image).
    c.model.conditioning = "text"
    # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
    c.model.dtype = "float32"
    c.model.base_channels = 64
    c.model.channel_mults = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attn_levels = (False, True, True)
    c.model.num_heads = 4
    c.model.head_dim = 32
    c.model.cond_dim = 256
    c.model.dropout = 0.0
    # Space-to-depth stem: 1 (none) or 2 (the UNet runs on 2x2 patches).
    c.model.patch_size = 2
    # A jax.checkpoint_policies name, or "none".
    c.model.remat_policy = "none"
    # Text vector added to the time embedding: "mean" (Imagen) or "attention"
    # (a learned query per head picks out the colour and shape words).
    c.model.text_pool = "attention"
    # Coordinate maps appended to the stem's input: positions ("top left")
    # are learned from the start instead of inferred from the borders.
    c.model.coord_channels = True
    # Forms of the Dense products and attention: "cpu" (shaped for XLA:CPU:
    # custom-VJP matmul, deferred-norm attention), "stock" (dot_general,
    # jax.nn.dot_product_attention: for GPUs and TPUs) or "auto" (by JAX's
    # backend when the model is built). Parameters and checkpoints are the
    # same either way.
    c.model.kernels = "auto"

    c.diffusion = ml_collections.ConfigDict()
    # Schedule: "cosine", "shifted_cosine" (cosine + 2 log(64 / resolution), as
    # in simple diffusion) or "linear".
    c.diffusion.schedule = "cosine"
    # Parameterisation: "v" (Instruct-Imagen), "eps" or "x0".
    c.diffusion.param = "v"
    # Min-SNR-gamma loss weighting; 0 disables it.
    c.diffusion.min_snr_gamma = 5.0
    # Clip 1 + snr instead of snr: keeps the plain v-loss weight at high noise.
    c.diffusion.min_snr_plus_one = True
    # A share of each batch trained at log-SNR moved by the shift (toward
    # noise when negative), not below the schedule's noisiest level
    # (`losses.shift_share`); 0 moves none.
    c.diffusion.low_snr_share = 0.0
    c.diffusion.low_snr_shift = -7.0
    # Conditioning dropout for classifier-free guidance: per example one of
    # drop everything / only the text / only the context / only the input
    # image (mutually exclusive; probabilities sum to at most 1).
    c.diffusion.cond_drop = ml_collections.ConfigDict(
        {"all": 0.1, "text": 0.0, "context": 0.0, "image": 0.0}
    )

    c.optim = ml_collections.ConfigDict()
    # Optimizer: "adamw" or "adafactor".
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 200
    # Schedule after warm-up: "constant" or "cosine".
    c.optim.decay = "cosine"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    # The text encoder's learning rate as a multiple of optim.lr. A small
    # encoder reads the roles of an instruction's markers when fitted at
    # 1e-4 to 3e-4 and not at 1e-3 (benchmarks/role_reading, session 54).
    c.optim.text_lr_scale = 1.0
    # Steps at the start that train the text encoder at the full LR before
    # text_lr_scale applies (0: the scale from the first step).
    c.optim.text_full_lr_steps = 0
    # EMA decay; warmed up as min(decay, (1 + step) / (10 + step)).
    c.optim.ema_decay = 0.999

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)
    c.mesh.axes = ("data", "fsdp", "tensor")
    # Logical axis -> mesh axes. Weights are sharded over fsdp (and tensor for
    # wide projections); activations' batch over data and fsdp.
    c.mesh.rules = (
        ("act_batch", ("data", "fsdp")),
        ("act_height", None),
        ("act_width", None),
        ("act_len", None),
        ("act_channels", None),
        ("embed", "fsdp"),
        ("conv_in", "fsdp"),
        ("conv_out", "tensor"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("vocab", "tensor"),
        ("relpos_buckets", None),
    )

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2_500
    # Stop early (with a checkpoint) after this many minutes; 0 = no limit.
    c.train.time_budget_minutes = arg.minutes
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.sample_every = 500
    c.train.keep_checkpoints = 2

    c.sample = ml_collections.ConfigDict()
    # Sampler: "ddpm", "ddim" or "dpmpp_2m".
    c.sample.sampler = "ddim"
    c.sample.steps = 50
    c.sample.guidance = 3.0
    # Thresholding of x0: "dynamic", "static" or "none".
    c.sample.clip_x0 = "static"
    c.sample.num_images = 16
    # Sample (eval, launch.sample) with the EMA weights or the trained ones.
    c.sample.use_ema = True

    c.evals = ml_collections.ConfigDict()
    c.evals.held_out = ml_collections.ConfigDict()
    # Evaluator type: "single_object" scores held-out single-object prompts.
    c.evals.held_out.type = "single_object"
    c.evals.held_out.num_prompts = 96
    c.evals.held_out.batch_size = 48

    if arg.smoke:
        _smoke(c)
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    """Shrinks everything so a run takes seconds on CPU."""
    c.data.batch_size = 8
    c.data.max_text_len = 32
    c.text.d_model = 32
    c.text.d_kv = 8
    c.text.d_ff = 64
    c.text.num_layers = 1
    c.model.base_channels = 16
    c.model.num_res_blocks = 1
    c.model.num_heads = 2
    c.model.head_dim = 8
    c.model.cond_dim = 32
    c.train.num_steps = 6
    c.train.log_every = 2
    c.train.checkpoint_every = 3
    c.train.sample_every = 6
    c.optim.warmup_steps = 2
    c.sample.steps = 4
    c.sample.num_images = 4
    c.evals.held_out.num_prompts = 8
    c.evals.held_out.batch_size = 8


def sweeps() -> dict[str, list[dict]]:
    """Evaluation sweeps, `python -m launch.eval --config experiments/t2i_shapes.py
    --workdir runs/demo --sweep NAME` (`imagen_jax.evaluation.sweep`; unset
    settings are `config.sample`'s, the checkpoint the latest).

    fewer_steps: DDIM and DPM-Solver++(2M) at 5-50 steps (DDIM-50 is the
      default to match); guidance: the text scale; oscillate: guidance on
      every step or on even steps only; training: every saved checkpoint.
    """
    from imagen_jax.evaluation.sweep import product

    return {
        "fewer_steps": product(sampler=["ddim", "dpmpp_2m"], steps=[5, 10, 20, 50]),
        "guidance": product(guidance=[1.0, 2.0, 3.0, 5.0, 8.0]),
        "oscillate": product(guidance=[3.0, 6.0], oscillate=[False, True]),
        "training": product(checkpoint="all"),
    }
