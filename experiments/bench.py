"""Speed benchmark configs for `launch.bench` and `benchmarks/run_peer.sh`.

    python -m launch.bench --config experiments/bench.py --mode train
    python -m launch.bench --config experiments/bench.py:peer --mode train
    python -m launch.bench --config experiments/bench.py:peer --mode sample
    python -m launch.bench --config experiments/bench.py:retrieval --mode retrieval

Options (`:a=1,b`):
  peer: the UNet of imagen-pytorch's README-sized
    `Unet(dim=64, dim_mults=(1, 2, 4), num_resnet_blocks=2,
    layer_attns=(False, True, True), layer_cross_attns=(False, True, True),
    text_embed_dim=256, cond_dim=256)` at 32x32, batch 32, 16 x 256 text
    embeddings, Adam, timed without a text encoder (as imagen-pytorch is
    timed with given `text_embeds`). Without it: the t2i_shapes demo model and
    its full train step (T5 + UNet + EMA).
  retrieval: the retrieval benchmark (`--mode retrieval`): a ScaNN index
    against exact search on 1M synthetic 128-d embeddings; the config holds
    only the `retrieval` group (sizes: `--config.retrieval.num_vectors=...`).
  smoke: tiny variant for tests.
  dtype: compute dtype, "float32" or "bfloat16".
  batch: batch size override (0 keeps the config's).
"""

import ml_collections

from experiments import t2i_shapes
from imagen_jax.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(
        arg, peer=False, retrieval=False, smoke=False, dtype="float32", batch=0
    )
    if arg.retrieval:
        return _retrieval(arg.smoke)
    c = t2i_shapes.get_config("res=32,smoke" if arg.smoke else "res=32")
    c.bench = ml_collections.ConfigDict()
    # Which train step is timed: True = the project's full step (T5 encoder +
    # UNet + EMA); False = the UNet alone on given text embeddings
    # [B, data.max_text_len, text.d_model] with plain Adam (the peer's work).
    c.bench.text_encoder = True
    # Donate the train state to the step (buffers reused in place).
    c.bench.donate = True
    # Images per sampled batch in --mode sample.
    c.bench.sample_batch = 32
    if arg.peer:
        _peer(c)
    if arg.smoke:
        _smoke(c)
    c.model.dtype = arg.dtype
    if arg.batch:
        c.data.batch_size = arg.batch
    return c


def _peer(c: ml_collections.ConfigDict) -> None:
    """imagen-pytorch's Unet(dim=64, dim_mults=(1, 2, 4), ...) at 32x32."""
    c.bench.text_encoder = False
    c.data.resolution = 32
    c.data.batch_size = 32
    c.data.max_text_len = 16
    c.text.d_model = 256
    c.model.base_channels = 64
    c.model.channel_mults = (1, 2, 4)
    c.model.num_res_blocks = 2
    c.model.attn_levels = (False, True, True)
    # imagen-pytorch's defaults: attn_heads=8, attn_dim_head=64.
    c.model.num_heads = 8
    c.model.head_dim = 64
    c.model.cond_dim = 256
    # imagen-pytorch runs its first level at full resolution.
    c.model.patch_size = 1
    c.optim.lr = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.0
    c.sample.sampler = "ddim"
    c.sample.steps = 64
    c.sample.guidance = 3.0


def _smoke(c: ml_collections.ConfigDict) -> None:
    """Small enough for a test to compile and run a step in seconds."""
    # Divisible by the 8 fake devices of the tests' data-parallel mesh.
    c.data.batch_size = 8
    c.data.resolution = 16
    c.model.base_channels = 16
    c.model.channel_mults = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_levels = (False, True)
    c.model.num_heads = 2
    c.model.head_dim = 8
    c.model.cond_dim = 32
    c.model.patch_size = 1
    c.text.d_model = 32
    c.data.max_text_len = 8
    c.bench.sample_batch = 2


def _retrieval(smoke: bool) -> ml_collections.ConfigDict:
    """ScaNN against exact search (imagen_jax/retrieval/bench.py)."""
    # Imported here: it loads ScaNN (and TensorFlow), which the others skip.
    from imagen_jax.retrieval import index

    r = ml_collections.ConfigDict()
    # Database vectors and their dimension (the embedder's default, 128).
    r.num_vectors = 1_000_000
    r.dim = 128
    # Queries timed (the same ones for ScaNN and exact search) and k.
    r.num_queries = 1000
    r.k = 10
    # The synthetic mixture: clusters, log-normal sigma of their weights, and
    # the range of their noise norms relative to the unit centre.
    r.num_clusters = 2000
    r.size_sigma = 1.0
    r.min_spread = 0.5
    r.max_spread = 1.0
    r.seed = 0
    # Exact search blocks: queries x database rows per matmul.
    r.exact_batch_size = 1024
    r.exact_chunk_size = 16_384
    # Timed ScaNN passes over the queries (the median is reported).
    r.search_reps = 3
    r.index = index.default_config()
    r.index.num_leaves = 2000
    r.index.num_leaves_to_search = 100
    r.index.training_sample_size = 250_000
    r.index.dims_per_block = 2
    r.index.anisotropic_quantization_threshold = 0.2
    r.index.reorder = 200
    if smoke:
        r.num_vectors = 3000
        r.dim = 32
        r.num_queries = 50
        r.num_clusters = 20
        r.exact_chunk_size = 1024
        r.search_reps = 1
        r.index.brute_force_below = 1000
        r.index.num_leaves = 0
        r.index.num_leaves_to_search = 20
        r.index.reorder = 50
    return ml_collections.ConfigDict({"retrieval": r})
