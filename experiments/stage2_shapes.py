"""Stage 2 on ShapesWorld: instruction tuning on the task mixture (issue 3, 13).

    python -m launch.train --config experiments/stage2_shapes.py \
        --workdir runs/stage2 --config.init_from=runs/demo
    python -m launch.eval --config experiments/stage2_shapes.py --workdir runs/stage2

Options (`:a=1,b`): res, smoke, minutes (as the text-to-image config) and
- simple: the CPU world (one object per scene, any fill and background, any
  subject identity under a made-up name; `tasks.WORLDS`), which 2 CPU cores
  learn; without it the full world (1-3 objects), for accelerators;
- task=NAME: train on that one task (a mechanism probe or a single-task
  specialist) and evaluate it alone; `task=A/B` trains and evaluates a few
  tasks at their `tasks.MIXTURE` ratios (e.g. `subject/style_generation`);
- t2i: the text-to-image starting model of this world (its text_to_image
  task, text conditioning only);
- plain: the multi-task baseline without instructions (the paper's Table 4):
  the same mixture, texts stripped to their captions and markers;
- raw: the context items without their own texts (markers and images
  only); with plain, the raw conditions and captions alone, where plain
  keeps the items' texts, which name their role ("style image");
- mix=NAME: the task mixture, one of `MIXTURES` ("paper", the default:
  `imagen_jax.data.tasks.MIXTURE`, subject-heavy after the paper; "even":
  the generation tasks' examples spread more evenly; "focus": more still
  to edit, depth estimation and segmentation; "balanced": between the two;
  "roles" and "parts" add opt-in tasks to "classify"; see `MIXTURES`);
- noise=P: make up each instruction word of training texts at rate P
  (`tasks.noisy_templates`; the unseen paraphrases all have words no
  training text has);
- pairs: two objects in each scene of segmentation, detection and
  classification (`tasks.World.query_objects`), so that the named object
  has to be found by matching the text against the image;
- answers=PRESENT/ABSENT: classification's answer colours (e.g.
  `answers=white/black`, names no object has); default "red/blue";
- words: the text as word pieces of the world's texts
  (`imagen_jax.data.vocabulary`, built by `python -m launch.build_data
  --dataset vocabulary --variant simple --data_dir data/vocab`), not bytes.
`--config.data.mixture` overrides it. Zero-shot combinations are
never trained on and are scored by `launch.eval`.
"""

import os

import ml_collections

from experiments import t2i_shapes
from imagen_jax import config_utils
from imagen_jax.config_utils import parse_arg
from imagen_jax.data import tasks, vocabulary

# Task mixtures of stage 2 (option `mix`). "paper" is Instruct-Imagen's ratios
# (`tasks.MIXTURE`): at 55 CPU minutes its 35% subject share gives the subject
# task as many examples as the subject specialist and the other generation
# tasks a third (style generation) to a seventh (mask to image) of theirs
# (docs/results.md, session 19 §2). "even" moves examples from subject and
# text-to-image (which the start already draws) to the style, edit and
# control tasks and to classification. "focus" moves more, from the tasks
# (a) draws at 0.96-1.00 after "even" (text-to-image, the four controls) and
# from subject and the style tasks, to edit (0.25 in (a); its specialist
# 0.71 on 3.5x the examples, session 24), depth estimation (its object pairs
# at chance) and segmentation. "balanced" sits between them: the controls
# back near "even" (with "focus" at 0.03 their SC fell to their text-only
# SC, session 25), depth estimation and edit near "focus". "classify" is
# "balanced" with the examples classification needs (0.14, each at the
# deciding noise levels through RECIPE's low_snr fields; session 35) taken
# from text-to-image, edit, style generation and detection, and a little more
# to segmentation and depth estimation. "reference" is "classify" with more
# to text to image (0.83 in its (a), where (c) draws 0.96) and to the tasks
# that read a reference image (subject, the style tasks), taken from the
# controls, segmentation, depth estimation, edit and classification: in
# domain 0.858 against 0.835, but segmentation IoU 0.71 against 0.98 and
# zero-shot 0.481 against 0.485, with the style pattern and the subject's
# identity as before (session 40).
MIXTURES = {
    "paper": tasks.MIXTURE,
    "even": {
        "text_to_image": 0.05,
        "subject": 0.18,
        "style_generation": 0.15,
        "style_transfer": 0.12,
        "edit": 0.12,
        "depth_to_image": 0.05,
        "mask_to_image": 0.05,
        "edge_to_image": 0.05,
        "sketch_to_image": 0.04,
        "segmentation": 0.05,
        "detection": 0.02,
        "depth_estimation": 0.04,
        "classification": 0.07,
    },
    "focus": {
        "text_to_image": 0.03,
        "subject": 0.16,
        "style_generation": 0.13,
        "style_transfer": 0.10,
        "edit": 0.20,
        "depth_to_image": 0.03,
        "mask_to_image": 0.03,
        "edge_to_image": 0.03,
        "sketch_to_image": 0.03,
        "segmentation": 0.07,
        "detection": 0.02,
        "depth_estimation": 0.10,
        "classification": 0.07,
    },
    "balanced": {
        "text_to_image": 0.03,
        "subject": 0.16,
        "style_generation": 0.14,
        "style_transfer": 0.11,
        "edit": 0.15,
        "depth_to_image": 0.05,
        "mask_to_image": 0.04,
        "edge_to_image": 0.05,
        "sketch_to_image": 0.05,
        "segmentation": 0.06,
        "detection": 0.02,
        "depth_estimation": 0.10,
        "classification": 0.04,
    },
    "classify": {
        "text_to_image": 0.01,
        "subject": 0.16,
        "style_generation": 0.12,
        "style_transfer": 0.11,
        "edit": 0.10,
        "depth_to_image": 0.04,
        "mask_to_image": 0.04,
        "edge_to_image": 0.04,
        "sketch_to_image": 0.04,
        "segmentation": 0.08,
        "detection": 0.01,
        "depth_estimation": 0.11,
        "classification": 0.14,
    },
    "reference": {
        "text_to_image": 0.05,
        "subject": 0.20,
        "style_generation": 0.16,
        "style_transfer": 0.12,
        "edit": 0.08,
        "depth_to_image": 0.03,
        "mask_to_image": 0.03,
        "edge_to_image": 0.03,
        "sketch_to_image": 0.03,
        "segmentation": 0.06,
        "detection": 0.01,
        "depth_estimation": 0.08,
        "classification": 0.12,
    },
}


# "classify" with the opt-in task whose roles only the instruction gives
# (role_transfer) and its oracle, whose items' texts say the roles
# (role_transfer_told), which teaches the text encoder the roles from the
# wording with `optim.text_lr_scale` and `text.marker_loss_form="contrast"`
# (session 54: SC 0.80 against `swapped` 0.02 in their four-task mixture,
# 13 told examples a step). Here about 3 a step of 32 of each, beside style
# transfer's (whose markers come in one order); the other tasks keep their
# ratios at 0.81 of their share.
MIXTURES["roles"] = {
    **MIXTURES["classify"],
    "role_transfer": 0.12,
    "role_transfer_told": 0.12,
}

# "classify" with the two opt-in tasks whose part of the reference only the
# instruction's words say (reference_objects: its objects in the caption's
# setting; reference_style: the caption's objects in its style). Their raw
# texts are alike, so (c) can only guess the part, where (a) has a word to
# read (session 61). The other tasks keep their ratios at 0.86 of their share.
MIXTURES["parts"] = {
    **MIXTURES["classify"],
    "reference_objects": 0.08,
    "reference_style": 0.08,
}

# "parts" with the two tasks at 0.3 each (37.5% of the examples against
# 14%): at 14% neither model read the part by 5434 steps (about 24000 of
# their examples, session 62), where the two tasks alone were read from
# 25600 (session 61), so the share, not the count, is what this varies.
MIXTURES["parts_focus"] = {
    **MIXTURES["classify"],
    "reference_objects": 0.3,
    "reference_style": 0.3,
}


def words(data_dir: str = "data", world: str = "simple") -> dict:
    """The config fields of option `words`: the text as word pieces of the
    task world's training texts (`imagen_jax.data.vocabulary`, built by
    `launch.build_data --dataset vocabulary`) instead of bytes. The CPU
    world's longest instruction is then 49 pieces, where as bytes it is 156
    and `data.max_text_len` 96 cut 72-81% of the control tasks' (session 20).
    """
    return {
        "text.tokenizer": "sentencepiece",
        "text.vocab_path": vocabulary.path_for(os.path.join(data_dir, "vocab"), world),
        "data.max_text_len": 64,
    }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(
        arg,
        **t2i_shapes.OPTIONS,
        simple=False,
        task="",
        t2i=False,
        plain=False,
        raw=False,
        mix="paper",
        words=False,
        noise=0.0,
        pairs=False,
        answers="",
    )
    if opts.mix not in MIXTURES:
        raise ValueError(f"unknown mixture mix={opts.mix!r}; known: {sorted(MIXTURES)}")
    c = t2i_shapes.build(opts)
    smoke = c.train.num_steps < 100

    c.data.name = "shapes_world_tasks"
    c.model.conditioning = "text" if opts.t2i else "instruction"
    # Task world: "full" (1-3 objects) or "simple" (the CPU world).
    c.data.variant = "simple" if opts.simple else "full"
    # Task -> weight; empty means tasks.MIXTURE.
    c.data.mixture = ml_collections.ConfigDict()
    if opts.t2i:
        c.data.mixture = {"text_to_image": 1.0}
    elif opts.task:
        names = opts.task.split("/")
        c.data.mixture = {n: tasks.MIXTURE.get(n, 1.0) for n in names}
    elif opts.mix != "paper":
        c.data.mixture = dict(MIXTURES[opts.mix])
    # Texts stripped of instruction words (`tasks.plain_templates`).
    c.data.plain_text = opts.plain
    # Context items without their own texts ("style image", "edge map", a
    # subject's name): markers and images only (`tasks.Task.make`).
    c.data.plain_items = opts.raw
    # Rate at which training instructions' words are made up, fields and
    # markers kept (`tasks.noisy_templates`): robustness to unread words.
    c.data.word_noise = opts.noise
    # Objects in each scene of segmentation, detection and classification; 0
    # is the world's (one in "simple"). Option `pairs` puts two there, so the
    # named object has to be found by matching text against image.
    c.data.query_objects = 2 if opts.pairs else 0
    # Classification's answer names, "present/absent" (`controls.ANSWER_COLOURS`);
    # "" is the world's "red/blue", whose words are also object colours.
    c.data.answers = opts.answers
    # The tasks whose examples diffusion.low_snr_share is taken from (a tuple
    # of mixture names); empty takes it from every example. Classification's
    # answer, a whole-image colour, is decided below log-SNR -7, where the
    # plain schedule trains under 1% of the time; the other tasks need no move.
    c.data.low_snr_tasks = ()
    # The tasks whose loss data.object_weight weighs toward the objects (a
    # tuple of mixture names); empty weighs every task's. The other tasks'
    # pixels weigh alike.
    c.data.object_weight_tasks = ()
    # Of those, the tasks whose weight goes to the background (outside the
    # object boxes) instead: the tasks whose reference decides the background,
    # such as style generation, whose objects the text gives.
    c.data.background_weight_tasks = ()
    # Examples are procedural: the index space is effectively endless.
    c.data.num_examples = 10_000_000
    # Seed of the procedural examples (evaluation uses other seeds).
    c.data.seed = 0
    c.data.max_context = 4
    # Context items encoded per example in training (`UNetConfig.context_slots`):
    # the mixture's mean item count with a margin (the CPU mixture averages
    # 1.15 items per example -> 1.5; subject alone 1.9 -> 2.5). 0 encodes all
    # B * K slots; set it again when overriding data.mixture.
    c.model.context_slots = (
        0.0
        if opts.t2i
        else tasks.context_slots(c.data.mixture or tasks.MIXTURE, c.data.variant)
    )
    # The encoder level whose features are the context memory
    # (`UNetConfig.context_level`; -1 the last, as in Re-Imagen).
    c.model.context_level = -1
    # LayerNorm on the context memory (`UNetConfig.context_norm`).
    c.model.context_norm = False
    # The input image also read as a context item (`UNetConfig.input_memory`).
    c.model.input_memory = False
    # ... and encoded with the instruction as its text (`UNetConfig.input_text`).
    c.model.input_text = False
    # Each context item's pooled text added to its memory tokens
    # (`UNetConfig.context_item_text`).
    c.model.context_item_text = False
    # Each context item encoded with the instruction after its own text
    # (`UNetConfig.context_instruction`).
    c.model.context_instruction = False
    # ... or each item's text followed by the instruction's encoding at the
    # item's marker (`UNetConfig.context_marker`).
    c.model.context_marker = False
    c.data.max_text_len = 96
    c.data.ctx_text_len = 24
    if opts.words:
        config_utils.override(c, words(c.data.data_dir, c.data.variant))

    # Instruct-Imagen: 10% drop text and context, 10% drop context only;
    # InstructCV: 5% text, 5% image (the 5% "both" is inside `all`).
    c.diffusion.cond_drop.all = 0.1
    c.diffusion.cond_drop.context = 0.1
    c.diffusion.cond_drop.text = 0.05
    c.diffusion.cond_drop.image = 0.05

    if not smoke:  # a time budget (`minutes`) shortens the schedule to fit
        c.train.num_steps = 6000
    if not opts.t2i:  # fine-tuning a drawing model: a gentler peak LR
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 100

    if opts.t2i and not smoke:
        # DPM-Solver++(2M) at 10 steps keeps every oracle score of DDIM-50
        # within noise on the text-to-image model of this world (the
        # fewer-steps sweep, README "Evaluation sweeps"; 5 steps do not). The
        # instruction models keep DDIM-50 until their own sweep says otherwise.
        c.sample.sampler = "dpmpp_2m"
        c.sample.steps = 10
    c.sample.guidance = 3.0
    # Input-image guidance (InstructPix2Pix s_I).
    c.sample.image_guidance = 1.5
    # Instruct-Imagen's oscillating guidance: scales on even steps only.
    c.sample.oscillate = False

    c.evals = ml_collections.ConfigDict()
    c.evals.tasks = ml_collections.ConfigDict()
    # Evaluator "tasks": every task (trained, zero-shot, unseen paraphrases).
    c.evals.tasks.type = "tasks"
    # Tasks to score; empty means all of them. A tuple, so that a command
    # line can set it: --config.evals.tasks.names="('edit', 'segmentation')".
    c.evals.tasks.names = (
        tuple(opts.task.split("/"))
        if opts.task
        else ("text_to_image",)
        if opts.t2i
        else ()
    )
    c.evals.tasks.per_task = 4 if smoke else 24
    # The zero-shot average has 4 tasks to the in-domain one's 9: 96 examples
    # each give it about the same standard error (sessions 35 and 37 report
    # both sizes). 576 more samples (4 tasks x 72, with and without their
    # conditions) than 24 each.
    c.evals.tasks.zero_shot_per_task = 4 if smoke else 96
    c.evals.tasks.batch_size = 8 if smoke else 24
    # Unseen paraphrases (and caption grammar); a plain model has no phrasing.
    c.evals.tasks.robustness = not opts.plain
    # The text-only pass (context items and input image dropped): the
    # baseline each task's SC must beat. False skips it (a quicker eval).
    c.evals.tasks.text_only = True
    if opts.t2i:  # what the start draws from text alone, the fill included
        c.evals.held_out = ml_collections.ConfigDict()
        c.evals.held_out.type = "single_object"
        c.evals.held_out.num_prompts = 8 if smoke else 96
        c.evals.held_out.batch_size = 8 if smoke else 48
    return c


# The stage-2 options of every model after the text start (`table()`,
# `launch/instruct.sh`): the context memory from the encoder's next-to-last
# level (8x8 tokens per item) and the loss weighed toward the objects'
# positions. After the same kind of text start they gave in-domain O 0.50 in
# 55 minutes (session 19), where the defaults gave 0.38 in 65 (session 10;
# docs/results.md); evaluate with the same model fields. The input image is
# also read as a context item encoded with the instruction as its text, and
# classification's examples all train at log-SNR shifted by -8, where its
# answer is decided: a specialist then learns classification in 1000 steps
# (session 31), (a) to 0.875 inside the mixture (session 35).
RECIPE = {
    "model.context_level": -2,
    "data.object_weight": 9.0,
    "model.input_memory": True,
    "model.input_text": True,
    "diffusion.low_snr_share": 1.0,
    "diffusion.low_snr_shift": -8.0,
    "data.low_snr_tasks": ("classification",),
}
# The fields of RECIPE that stage 1's experiment has (`table()`'s stage-1 row).
STAGE1_RECIPE = ("model.context_level", "data.object_weight")
# The mixture of the models after the text start ((a), (c), (a) after stage
# 1; `launch/instruct.sh`): "classify", which with RECIPE and word pieces
# met every part of issue 13's item 2 from nothing (in-domain O 0.835,
# classification 1.00, segmentation IoU 0.98, depth ordering 0.99, zero-shot
# 0.485; session 38, docs/results.md; 0.78, 0.875, 0.78, 0.94 and 0.43 in
# session 35's 2229 steps on a slower machine). "balanced"
# before it, without the classification fields, met all but classification
# (0.38; session 26).
MIXTURE = "classify"
# Their options: the CPU world, that mixture, the text as word pieces (0.87
# and 0.47 against bytes' 0.52 and 0.27 in domain and zero-shot on "even",
# session 21).
MIXTURE_ARG = f"simple,mix={MIXTURE},words"
# The text start of every model ((a), (b), (c); `launch/instruct.sh`), and
# its minutes: 50, so that with stage 2's 55 the README's command trains in
# under two hours.
T2I_ARG = "simple,t2i,words"
T2I_MINUTES = 50
# The steps of MIXTURE's (a) in the table (session 38: 4518 in 55 minutes
# on an AMD EPYC, docs/results/table/cpu_instruct.json). (c) trains for as
# many steps, so it sees as many examples as (a) whatever the machine's
# speed (on session 35's machine, 0.69 steps/s, that is 110 minutes).
A_STEPS = 4518
# Column "b_steps" trains each specialist for its task's share of an (a)'s
# steps: as many examples of the task as (a) saw, so (a) against it measures
# what the other tasks' examples add. Matched to MIXTURE's (a) (A_STEPS):
# subject 723 steps, style generation 542, mask to image 181, segmentation
# 361. Until session 38 they were matched to the (a) of session 23, on
# "even" (2909 steps; records in docs/results/table_2026-12-02).
MATCHED_MIXTURE, MATCHED_STEPS = MIXTURE, A_STEPS
# The text start with word order (session 51): the small T5's relative
# position bias ten times T5's scale, without which its encoder reads the
# instruction nearly as a bag of words and role transfer's two marker orders
# as one text.
POSITION = {"text.relative_attention_init_scale": 10.0}
# (a) and (c) on "roles" (columns "a_roles", "c_roles"): RECIPE, that start,
# each context item given the instruction's encoding at its marker, and the
# text encoder at a tenth of the LR with the pairwise marker objective, with
# which the role mixture read the roles from the wording (session 54).
ROLES_RECIPE = {
    **RECIPE,
    **POSITION,
    "model.context_marker": True,
    "optim.text_lr_scale": 0.1,
    "text.marker_text_loss": 1.0,
    "text.marker_loss_form": "contrast",
    # the table's samples: no text-only baseline pass (item 2's, not the table's)
    "evals.tasks.text_only": False,
}
ROLES_MINUTES = 78
# The steps those 78 minutes gave (a) side by side with (c) in session 55
# (AMD EPYC, 2 cores; (c) 2705): the columns "a_roles_long" and
# "c_roles_long" continue both to twice that.
ROLES_STEPS = 2717
# Their columns' options: (c) is (a)'s without the instruction words.
ROLES_ARGS = (("a", "simple,mix=roles,words"), ("c", "simple,mix=roles,words,plain"))
# At twice the steps (a) read the roles and still trailed (c) on nearly every
# task (in domain 0.68 against 0.76, session 56), where at the full text LR
# on "classify" it was level: columns "a_roles03" and "c_roles03" give the
# text encoder three tenths of the LR instead (with which session 54's role
# mixture read the roles in 917 steps), for the steps of "a_roles", and
# "a_roles03_long" and "c_roles03_long" continue them to twice that.
ROLES03_RECIPE = {**ROLES_RECIPE, "optim.text_lr_scale": 0.3}
# (a) behind (c) at both, with its training loss higher on the vision tasks
# (`benchmarks/task_fit`, session 57), where at the full text LR on
# "classify" it was level: column "a_roles_sched" trains the text encoder at
# the full LR for the first quarter of the long columns' steps, then at a
# tenth of it for the roles (`optim.text_full_lr_steps`), from the start,
# and "c_roles_sched" (c) with the same schedule.
# A quarter of 2 * ROLES_STEPS, rounded up: 1359.
ROLES_SCHED_RECIPE = {**ROLES_RECIPE, "optim.text_full_lr_steps": -(-ROLES_STEPS // 2)}
# It kept up with (c) and did not read the roles (session 58). The reverse
# order: "a_roles_rev" and "c_roles_rev" start from "a_roles" / "c_roles"
# (x0.1, where (a) reads the roles) and train the text encoder at the full LR
# for as many steps again, to ask whether the roles survive it. They start
# anew from those models' weights (`init_from`; a new optimizer state, its
# LR warmed up and decayed again), since a resumed state keeps its optimizer.
ROLES_REV_RECIPE = {**ROLES_RECIPE, "optim.text_lr_scale": 1.0}
# With its own control measured (session 60), the schedule's (a) leads (c)
# on both averages (in domain by less than its noise): "a_roles_sched_long"
# and "c_roles_sched_long" continue the pair to three times ROLES_STEPS.

# Role transfer is one task of eleven in the in-domain mean, so even read it
# moves (a) - (c) by a few hundredths. "a_parts" and "c_parts" train on
# "parts", whose two reference tasks (c) can only guess, from the text start
# of "classify" with RECIPE (the text encoder at the full LR, with which (a)
# learns segmentation's words), for ROLES_STEPS (a pair side by side: 42
# minutes each at 1.09 steps/s, session 61, AMD EPYC); "a_parts_long" and
# "c_parts_long" continue them to twice that, "a_parts_long3" and
# "c_parts_long3" to three times.
PARTS_ARGS = (("a", "simple,mix=parts,words"), ("c", "simple,mix=parts,words,plain"))
PARTS_RECIPE = {**RECIPE, "evals.tasks.text_only": False}
# "a_parts_focus" and "c_parts_focus" start anew from the weights of
# "a_parts_long" / "c_parts_long" (5434 steps) and train ROLES_STEPS more on
# "parts_focus" (session 62: (a) reads the part, O 0.87 / 0.78 against (c)'s
# 0.32 / 0.38, and leads in domain 0.843 against 0.733; zero-shot level).
PARTS_FOCUS_STEPS = ROLES_STEPS
PARTS_FOCUS_ARGS = tuple(
    (row, arg.replace("mix=parts", "mix=parts_focus")) for row, arg in PARTS_ARGS
)
# "a_parts_focus_long" and "c_parts_focus_long" continue the pair to twice
# PARTS_FOCUS_STEPS, for (a)'s subject (0.74) and style generation (0.89)
# against the specialists (b); "_long3" to three times (session 63: at twice,
# the four specialist tasks 0.953 against (b)'s 0.982); "_long4" to four
# times (session 64: at three times, zero-shot +0.016 ±0.015 where it was
# +0.039 ±0.016 at twice, the paired errors of `table.differences`).
# The mixtures and steps that "a_parts_focus_long3" trained on after the text
# start. Column "b_parts_steps" trains each specialist from that same start
# for its task's share of them (`task_steps`): (b)'s columns "b" and
# "b_steps" start from an earlier text start (session 38's).
PARTS_FOCUS_LEGS = (("parts", 2 * ROLES_STEPS), ("parts_focus", 3 * PARTS_FOCUS_STEPS))

# (a)'s zero-shot mean stopped rising after 10868 steps while (c)'s rose on,
# so the lead it had there was gone by 16302 (session 64). On the roles
# mixture, the text encoder at a tenth of the LR after its first steps kept
# (a) ahead zero-shot (sessions 58 and 60). "a_parts_focus_sched" and
# "c_parts_focus_sched" train the parts_focus pair again from the same
# 5434-step starts with the text encoder at the full LR for the first leg
# (PARTS_FOCUS_STEPS, where (a) learned to read the parts; the same updates
# as "a_parts_focus") and at a tenth of it after, with the same legs:
# "_long" to twice, "_long3" and "_long4" to three and four times.
PARTS_SCHED_RECIPE = {
    **PARTS_RECIPE,
    "optim.text_lr_scale": 0.1,
    "optim.text_full_lr_steps": PARTS_FOCUS_STEPS,
}


def task_steps(task: str, legs) -> int:
    """The steps that a run over `legs`, (mixture name, steps) in turn, spends
    on `task`: each leg's steps times the task's share of its mixture."""
    spent = 0.0
    for name, steps in legs:
        mixture = MIXTURES[name]
        spent += steps * mixture.get(task, 0.0) / sum(mixture.values())
    return round(spent)


def _pair(kind, args, init_from, recipe, budget, *longer) -> list[dict]:
    """Table columns "{row}_{kind}" for each (row, arg) of `args`, trained
    from `init_from` (its "{row}" filled in) with `recipe` for `budget`,
    then each continued in turn to the step counts `longer`:
    "{row}_{kind}_long" resumes the column's run, "{row}_{kind}_long3",
    "_long4", ... the one before."""
    runs = [
        {
            "row": f"{row}_{kind}",
            "name": f"cpu_{kind}_{row}",
            "arg": arg,
            **budget,
            "init_from": init_from.format(row=row),
            "config": recipe,
        }
        for row, arg in args
    ]
    rows, last = list(runs), runs
    for i, steps in enumerate(longer):
        suffix = "_long" if i == 0 else f"_long{i + 2}"
        last = [
            {
                "row": f"{run['row']}{suffix}",
                "name": f"{run['name']}{suffix}",
                "arg": run["arg"],
                "minutes": 0,
                "steps": steps,
                "resume": prev["name"],
                "config": recipe,
            }
            for run, prev in zip(runs, last)
        ]
        rows += last
    return rows


def table() -> list[dict]:
    """The paper's Table 4 in miniature on the CPU world (`launch.table`).

    Each row is one model: its `:arg` options, the run it starts from, its
    time budget in minutes and the config fields it sets. (a) the
    instruction-tuned model (`launch/instruct.sh`), on MIXTURE; (b)
    single-task specialists, same architecture and start, for 20 minutes each
    and (column "b_steps") for the steps their task gets in the (a) of
    MATCHED_MIXTURE; (c) one multi-task model on (a)'s mixture without
    instruction text, for (a)'s steps (A_STEPS), and "c_raw", the same
    without the context items' texts. All start from the
    world's text-to-image model, row "t2i", and share RECIPE. (a) and (c)
    continued to twice A_STEPS: columns "a_long" and "c_long"; and on to
    three times: "a_long3" and "c_long3". (a) after stage
    1 (issue 14): the same start, then stage 1 (`experiments/stage1_shapes.py`;
    it needs the world's retrieval form and neighbour table first, see that
    file), then the mixture, (a)'s minutes in all.
    """
    start = {"init_from": "cpu_t2i", "config": RECIPE}
    rows = [
        {"row": "t2i", "name": "cpu_t2i", "arg": T2I_ARG, "minutes": T2I_MINUTES},
        {
            "row": "a",
            "name": "cpu_instruct",
            "arg": MIXTURE_ARG,
            "minutes": 55,
            **start,
        },
        {
            "row": "c",
            "name": "cpu_plain",
            "arg": f"{MIXTURE_ARG},plain",
            "minutes": 0,
            "steps": A_STEPS,
            **start,
        },
        # (c) on the raw conditions: the context items lose their own texts
        # too, which in (c) still name their role ("style image", "edge
        # map"), so nothing but the captions and images says the task.
        {
            "row": "c_raw",
            "name": "cpu_plain_raw",
            "arg": f"{MIXTURE_ARG},plain,raw",
            "minutes": 0,
            "steps": A_STEPS,
            **start,
        },
        # (a) and (c) on the mixture with role transfer, whose roles only the
        # instruction gives, from the start with word order; trained side by
        # side in session 55, so each had about half the machine.
        {
            "row": "t2i",
            "name": "cpu_t2i_pos",
            "arg": T2I_ARG,
            "minutes": T2I_MINUTES,
            "config": POSITION,
        },
        *_pair(
            "roles",
            ROLES_ARGS,
            "cpu_t2i_pos",
            ROLES_RECIPE,
            {"minutes": ROLES_MINUTES},
            2 * ROLES_STEPS,
        ),
        *_pair(
            "roles03",
            ROLES_ARGS,
            "cpu_t2i_pos",
            ROLES03_RECIPE,
            {"minutes": 0, "steps": ROLES_STEPS},
            2 * ROLES_STEPS,
        ),
        *_pair(
            "roles_sched",
            ROLES_ARGS,
            "cpu_t2i_pos",
            ROLES_SCHED_RECIPE,
            {"minutes": 0, "steps": 2 * ROLES_STEPS},
            3 * ROLES_STEPS,
        ),
        *(
            {
                "row": f"{row}_roles_rev",
                "name": f"cpu_roles_rev_{row}",
                "arg": arg,
                "minutes": 0,
                "steps": ROLES_STEPS,
                "init_from": f"cpu_roles_{row}",
                "config": ROLES_REV_RECIPE,
            }
            for row, arg in ROLES_ARGS
        ),
        *_pair(
            "parts",
            PARTS_ARGS,
            "cpu_t2i",
            PARTS_RECIPE,
            {"minutes": 0, "steps": ROLES_STEPS},
            2 * ROLES_STEPS,
            3 * ROLES_STEPS,
        ),
        *_pair(
            "parts_focus",
            PARTS_FOCUS_ARGS,
            "cpu_parts_{row}_long",
            PARTS_RECIPE,
            {"minutes": 0, "steps": PARTS_FOCUS_STEPS},
            2 * PARTS_FOCUS_STEPS,
            3 * PARTS_FOCUS_STEPS,
            4 * PARTS_FOCUS_STEPS,
        ),
        *_pair(
            "parts_focus_sched",
            PARTS_FOCUS_ARGS,
            "cpu_parts_{row}_long",
            PARTS_SCHED_RECIPE,
            {"minutes": 0, "steps": PARTS_FOCUS_STEPS},
            2 * PARTS_FOCUS_STEPS,
            3 * PARTS_FOCUS_STEPS,
            4 * PARTS_FOCUS_STEPS,
        ),
        {
            "row": "stage1",
            "name": "cpu_stage1",
            "experiment": "experiments/stage1_shapes.py",
            "arg": "",
            "minutes": 25,
            # stage 1's experiment has no `words` option: its fields, so
            # that it reads the text as the start does
            **start,
            "config": {**{k: RECIPE[k] for k in STAGE1_RECIPE}, **words()},
        },
        {
            "row": "a_stage1",
            "name": "cpu_instruct_stage1",
            "arg": MIXTURE_ARG,
            "minutes": 30,
            "init_from": "cpu_stage1",
            "config": RECIPE,
        },
        # (a) and (c) continued from their last checkpoint to twice (a)'s
        # steps (session 42: in domain 0.835 -> 0.921, zero-shot 0.485 ->
        # 0.605 for (a); docs/results.md), and those to three times.
        *(
            {
                "row": f"{row}_long{suffix}",
                "name": f"{name}_long{suffix}",
                "arg": arg,
                "minutes": 0,
                "steps": times * A_STEPS,
                "resume": name + parent,
                "config": RECIPE,
            }
            for times, suffix, parent in ((2, "", ""), (3, "3", "_long"))
            for row, name, arg in (
                ("a", "cpu_instruct", MIXTURE_ARG),
                ("c", "cpu_plain", f"{MIXTURE_ARG},plain"),
            )
        ),
    ]
    for task in ("subject", "style_generation", "mask_to_image", "segmentation"):
        arg = f"simple,task={task},words"
        rows.append(
            {
                "row": "b",
                "name": f"cpu_single_{task}",
                "arg": arg,
                "minutes": 20,
                **start,
            }
        )
        rows.append(
            {
                "row": "b_steps",
                "name": f"cpu_matched_{task}",
                "arg": arg,
                "minutes": 0,
                "steps": task_steps(task, ((MATCHED_MIXTURE, MATCHED_STEPS),)),
                **start,
            }
        )
        rows.append(
            {
                "row": "b_parts_steps",
                "name": f"cpu_parts_matched_{task}",
                "arg": arg,
                "minutes": 0,
                "steps": task_steps(task, PARTS_FOCUS_LEGS),
                "init_from": "cpu_t2i",
                "config": PARTS_RECIPE,
            }
        )
    return rows


def sweeps() -> dict[str, list[dict]]:
    """Evaluation sweeps, `python -m launch.eval --config
    experiments/stage2_shapes.py:simple --workdir runs/cpu_instruct --sweep NAME`
    (`imagen_jax.evaluation.sweep`; unset settings are `config.sample`'s).

    The text-to-image ones (`t2i_shapes.sweeps`), and for instruction models:
    dual_guidance, the text x input-image scale grid (InstructPix2Pix s_T, s_I)
    on the tasks with an input image; reference_guidance, the text-and-context
    scale on the tasks whose condition is a reference image (subject, style
    generation); oscillate, Instruct-Imagen's guidance on even steps only at a
    high scale, on every task.
    """
    from imagen_jax.evaluation.sweep import product

    with_input = ["edit", "mask_to_image", "depth_to_image", "segmentation"]
    return {
        **t2i_shapes.sweeps(),
        "dual_guidance": product(
            guidance=[1.5, 3.0, 5.0, 7.5],
            image_guidance=[1.0, 1.5, 2.5],
            tasks=[with_input],
        ),
        "reference_guidance": product(
            guidance=[1.5, 3.0, 5.0, 7.5], tasks=[["subject", "style_generation"]]
        ),
        "oscillate": product(guidance=[3.0, 8.0, 25.0], oscillate=[False, True]),
    }
