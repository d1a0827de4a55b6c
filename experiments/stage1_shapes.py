"""Stage 1 on ShapesWorld: retrieval-augmented text-to-image (issue 14).

The target's caption is the text and its K mined neighbours (image, caption)
are the context, all under one marker (`retrieval.mining.neighbour_instruction`);
the data is the CPU world's retrieval form (tfds config `r32_retrieval`: named
subjects of long-tailed frequency, retrieval-only names in the database) with
its neighbour table, mined beforehand by `launch.build_index`:

    python -m launch.build_data --dataset shapes_world --variant retrieval \
        --data_dir data
    python -m launch.build_index --config experiments/stage1_shapes.py \
        --workdir runs/stage1   # writes <dataset dir>/neighbours/train.npy
    python -m launch.train --config experiments/stage1_shapes.py \
        --workdir runs/stage1 --config.init_from=runs/cpu_t2i
    python -m launch.train --config experiments/stage2_shapes.py:simple \
        --workdir runs/stage2_from_stage1 --config.init_from=runs/stage1

Options (`:a=1,b`): res, smoke, minutes (as the text-to-image config). The
model is an instruction model, so stage 2 starts from it with every
parameter; its input-image path stays unused here (no input image).
"""

import ml_collections

from experiments import t2i_shapes
from imagen_jax.config_utils import parse_arg
from imagen_jax.retrieval import build


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, **t2i_shapes.OPTIONS)
    c = t2i_shapes.build(opts)

    c.data.name = "shapes_world_retrieval"
    c.model.conditioning = "instruction"
    # The world, "simple" (the CPU world, the one built in retrieval form);
    # the evaluators' task world too.
    c.data.variant = "simple"
    # Directory of the neighbour tables (<split>.npy + <split>.json); empty
    # means beside the dataset: <data_dir>/shapes_world/r<res>_retrieval/
    # <version>/neighbours (`retrieval.mining.neighbours_dir`).
    c.data.neighbours_dir = ""
    # Neighbours given as context (the paper: clusters of target + 3).
    c.data.max_context = 3
    # Captions reach 89 bytes; + " [ref#1]" (2 tokens) + EOS.
    c.data.max_text_len = 96
    # A context item's text is "[ref#1] <its caption>", cut to 32 tokens: the
    # subject comes first ("a small snorf at ..."); the background's words
    # past it are in the image. (96 tokens: 0.47 steps/s, session 11.)
    c.data.ctx_text_len = 32
    # Half of the named examples have their subject renamed by a made-up word
    # in the caption and the neighbours' captions
    # (`pipeline.RetrievalSource`): a few dozen names are each seen too often
    # for the neighbours to matter (session 11: identity 0.17 with retrieved
    # context after 835 steps); a made-up word is what a retrieval-only name
    # is to the model.
    # 80% since session 13 (more examples whose identity only the context
    # gives).
    c.data.rename = 0.8
    # Every renamed subject is also redrawn with a random (shape, colour,
    # fill) in the target and its neighbours (`shapes_world.redraw_subject`).
    # Without it the renamed subjects keep the training identities, and a
    # retrieval-only identity - a combination no training name has - came
    # out with the fill of the nearest known one: identity 0.58 at best, the
    # fill the part missing (docs/retrieval.md, session 15).
    c.data.redraw = 1.0
    # 0 encodes all B * K context slots: nearly every example has 3 neighbours.
    c.model.context_slots = 0.0
    # The context memory from the next-to-last encoder level (8x8 tokens per
    # 32-px item): the last (4x4) lost the stripes (fill 0.46 against 0.65,
    # session 14). Stage 2 starts from this model unchanged when it is given
    # the same level (`--config.model.context_level=-2`).
    c.model.context_level = -2
    c.model.context_norm = False

    # Instruct-Imagen stage 1: 10% drop text and context, 10% context only.
    c.diffusion.cond_drop.all = 0.1
    c.diffusion.cond_drop.text = 0.0
    c.diffusion.cond_drop.context = 0.1
    c.diffusion.cond_drop.image = 0.0

    if not opts.smoke:  # a time budget (`minutes`) shortens the schedule to fit
        c.train.num_steps = 6000
        # Continuing a drawing model (`init_from`): a gentler peak LR.
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 100

    # Embedder, index and mining (`launch.build_index`); see
    # `retrieval.build.default_config` for every field.
    c.retrieval = build.default_config()
    # Neighbours should show the target's subject. Trained on the records'
    # captions (position, size, background and a name or colour and shape),
    # the embedder matched images by where the object is and the background:
    # 0.33 of the top-10 shared the subject (session 11). On identity
    # captions it embeds what the object is.
    c.retrieval.embedder_captions = "subject"
    # That embedder puts every render of an identity close (median cosine of
    # the top 10: 0.9994); exact re-renders (same identity, background,
    # position and size: a third of the candidates) score >= 0.9999998 and
    # the other candidates <= 0.9999 (99th percentile). This drops the
    # re-renders only; 0.98 dropped 98% of the candidates (session 11).
    c.retrieval.near_duplicate = 0.99999
    if opts.smoke:
        c.retrieval.embedder.steps = 3
        c.retrieval.embedder.batch_size = 8
        c.retrieval.embedder.model.image_widths = (8, 16)
        c.retrieval.embedder.model.text_width = 16
        c.retrieval.embedder.model.text_layers = 1

    c.sample.guidance = 3.0
    # No input image in stage 1: input-image guidance plays no part.
    c.sample.image_guidance = 1.0
    c.sample.oscillate = False

    smoke = opts.smoke
    c.evals = ml_collections.ConfigDict()
    # Evaluator "tasks" on the CPU world: text-to-image, and subject (an
    # identity shown only in the context images), what stage 1 prepares for.
    c.evals.tasks = ml_collections.ConfigDict()
    c.evals.tasks.type = "tasks"
    c.evals.tasks.names = ("text_to_image", "subject")
    c.evals.tasks.per_task = 4 if smoke else 24
    c.evals.tasks.batch_size = 8 if smoke else 24
    c.evals.tasks.robustness = False
    # Evaluator "retrieval_only": subjects named only in the retrieval
    # database, drawn with the text's `k` nearest database items as context
    # (from the index `launch.build_index` built) and with the text alone.
    c.evals.retrieval = ml_collections.ConfigDict()
    c.evals.retrieval.type = "retrieval_only"
    # The retrieval directory; empty = <workdir>/retrieval.
    c.evals.retrieval.dir = ""
    c.evals.retrieval.k = c.data.get_ref("max_context")
    # How a prompt finds database items (`retrieve.TEXT_SEARCH`): "lexical"
    # (its words against the database captions, rare words weighing most:
    # a retrieval-only name finds its items) or "embedding" (the embedder's
    # text tower, which never saw those names).
    c.evals.retrieval.text_search = "lexical"
    # >= 0: the retrieved prompts once more under Re-Imagen's interleaved
    # guidance, guiding on the text with this probability (eta) and on the
    # context items otherwise; -1: not run.
    c.evals.retrieval.interleave = 0.5
    c.evals.retrieval.num_prompts = 4 if smoke else 96
    c.evals.retrieval.batch_size = 4 if smoke else 24
    return c


def sweeps() -> dict[str, list[dict]]:
    """Evaluation sweeps, `python -m launch.eval --config
    experiments/stage1_shapes.py --workdir runs/stage1 --sweep NAME
    --config.evals.retrieval.dir=...` (`imagen_jax.evaluation.sweep`).

    The text-to-image ones (`t2i_shapes.sweeps`), and retrieval_guidance: the
    guidance scale on the retrieval-only prompts alone (how much of a copied
    identity the scale decides).
    """
    from imagen_jax.evaluation.sweep import product

    return {
        **t2i_shapes.sweeps(),
        "retrieval_guidance": product(
            guidance=[1.0, 2.0, 3.0, 5.0, 8.0], evals=[["retrieval"]]
        ),
    }
