"""Generation with the full model: one compilation for any steps/guidance; the
conditions (the context items' memory included) encoded once per request;
requests beyond what the model takes refused, naming the field."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from experiments import t2i_shapes
from imagen_jax import (
    conditioning,
    generate,
    inference,
    instructions,
    sampling,
    sharding,
    train_state,
)
from imagen_jax.diffusion import guidance, losses
from imagen_jax.models.imagen import Imagen, build_model
from imagen_jax.models.unet import UNetConfig
from imagen_jax.text.tokenizers import make_tokenizer
from tests.params import perturbed


@pytest.fixture(scope="module")
def setup():
    cfg = t2i_shapes.get_config("smoke")
    tok = make_tokenizer(cfg)
    model = build_model(cfg, tok.vocab_size)
    mesh = sharding.make_mesh((-1, 1, 1), cfg.mesh.axes)
    params, _ = sharding.sharded_init(
        lambda: train_state.init_params(model, cfg), mesh, train_state.mesh_rules(cfg)
    )
    tokens, mask = tok.encode_batch(["a red circle", "a blue square"], 32)
    return cfg, model, params, {"text_tokens": tokens, "text_mask": mask}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_steps_and_guidance_do_not_recompile(setup, sampler):
    cfg, model, params, batch = setup
    generate = sampling.make_generate_fn(model, cfg, sampler)
    outs = []
    for steps, scale in [(2, 1.0), (3, 5.0), (5, 2.5)]:
        out = generate(params, batch, jax.random.PRNGKey(0), steps, scale)
        outs.append(np.asarray(out))
        assert out.shape == (2, 32, 32, 3)
        assert float(np.abs(out).max()) <= 1.0
    assert generate._cache_size() == 1


def test_unknown_sampler(setup):
    cfg, model, *_ = setup
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sampling.make_generate_fn(model, cfg, "euler")


def test_to_uint8_range():
    x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(sampling.to_uint8(x), [0, 0, 128, 255, 255])


B, K = 2, 4  # B * K = 8 differs from B and from 3 B (the guidance branches).
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def instruction():
    """A smoke instruction model with perturbed params and a batch with padded
    context items and one input image."""
    return _instruction()


@pytest.fixture(scope="module")
def input_memory():
    """As `instruction`, the input image also read as a context item."""
    return _instruction(input_memory=True)


@pytest.fixture(scope="module")
def input_text():
    """As `input_memory`, the input image encoded with the instruction."""
    return _instruction(input_memory=True, input_text=True)


@pytest.fixture(scope="module")
def context_instruction():
    """As `instruction`, each context item encoded with the instruction."""
    return _instruction(context_instruction=True)


@pytest.fixture(scope="module")
def context_marker():
    """As `instruction`, each context item followed by the instruction at its
    marker; the instruction names the first example's items 1 and 3 (item 3
    twice) and none of the second's."""
    cfg, model, params, batch = _instruction(context_marker=True)
    tokens = batch["text_tokens"].copy()
    # Item k's marker: its first and highest id (the other ids are below 200).
    ctx_tokens = batch["ctx_tokens"].copy()
    ctx_tokens[:, :, 0] = 200 + np.arange(K)
    markers = ctx_tokens[:, :, 0]
    for i in range(B):
        tokens[i][np.isin(tokens[i], markers[i])] = 1
    tokens[0, [2, 5, 7]] = markers[0, [0, 2, 2]]
    return cfg, model, params, dict(batch, text_tokens=tokens, ctx_tokens=ctx_tokens)


def _instruction(**model_fields):
    cfg = t2i_shapes.get_config("smoke")
    cfg.model.conditioning = "instruction"
    cfg.model.update(model_fields)
    cfg.data.max_context, cfg.data.ctx_text_len = K, 8
    model = build_model(cfg, make_tokenizer(cfg).vocab_size)
    params = perturbed(nn.meta.unbox(train_state.init_params(model, cfg)))
    rng = np.random.default_rng(0)
    shapes = conditioning.batch_shapes(cfg.data, model.conditioning, B)
    batch = {
        name: rng.integers(1, 200, shape).astype(dtype)
        for name, (shape, dtype) in shapes.items()
    }
    batch["text_mask"] = np.arange(32)[None] < np.array([[10], [20]])
    batch["ctx_text_mask"] = np.ones((B, K, 8), bool)
    batch["ctx_mask"] = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    batch["cond_image_mask"] = np.array([True, False])
    return cfg, model, params, batch


def _inline_denoiser(model, param, params, batch, s_text, s_image):
    """Dual guidance as before the memory was precomputed: every evaluation
    encodes the three branches' conditions, context items included, from the
    tripled batch and the branch masks."""
    on, off = np.ones(B, bool), np.zeros(B, bool)
    tripled = jax.tree.map(lambda x: np.concatenate([x] * 3), batch)
    with_text = np.concatenate([on, off, off])
    masks = conditioning.condition_masks(
        tripled,
        model.conditioning,
        text=with_text,
        context=with_text,
        image=np.concatenate([on, on, off]),
    )

    def encode_and_denoise(module, z, logsnr):
        return module.denoise(z, logsnr, **module.condition(tripled, masks))

    def denoise_fn(z, logsnr):
        zz, ll = jnp.concatenate([z] * 3), jnp.concatenate([logsnr] * 3)
        out = model.apply({"params": params}, zz, ll, method=encode_and_denoise)
        e_it, e_i0, e_00 = jnp.split(losses.predict_x0(out, zz, ll, param), 3)
        return guidance.dual_guidance(e_00, e_i0, e_it, s_text, s_image)

    return denoise_fn


@pytest.mark.parametrize("step_index", [0, 1])
@pytest.mark.parametrize(
    "fixture",
    [
        "instruction",
        "input_memory",
        "input_text",
        "context_instruction",
        "context_marker",
    ],
)
def test_precomputed_memory_denoiser_equals_the_inline_one(
    request, fixture, step_index
):
    cfg, model, params, batch = request.getfixturevalue(fixture)
    param = cfg.diffusion.param
    scales = {"text": 3.0, "image": 1.5}
    # Oscillating guidance: the scales on even steps, none (1) on odd ones.
    on = step_index % 2 == 0
    guided = sampling.guided_denoiser(model, param, params, batch, scales, 1)
    inline = _inline_denoiser(
        model, param, params, batch, *(scales.values() if on else (1.0, 1.0))
    )
    z = jax.random.normal(jax.random.PRNGKey(3), (B, 32, 32, 3))
    logsnr = jnp.array([1.0, -2.0])
    got = jax.jit(guided)(z, logsnr, step_index)
    want = jax.jit(inline)(z, logsnr)
    # Per branch both compute the same float32 ops on the same values, on
    # batches of other sizes (B*K vs 3B*K context rows), so only summation
    # order differs: ~1e-6 on the O(1) x0 of each branch. Guidance sums the
    # branches with weights of magnitude at most 1 + 2 s_T + 2 s_I = 10.
    np.testing.assert_allclose(got, want, rtol=0, atol=10 * 2e-6)
    # The conditions matter: without the input image and the context the
    # guided output moves.
    dropped = dict(batch, ctx_mask=batch["ctx_mask"] & False)
    other = sampling.guided_denoiser(model, param, params, dropped, scales, 1)
    assert float(jnp.abs(jax.jit(other)(z, logsnr, step_index) - got).max()) > 1e-3


def test_input_memory_reads_the_kept_input_image_only(input_memory):
    cfg, model, params, batch = input_memory
    on = np.ones(B, bool)
    masks = conditioning.condition_masks(
        batch, model.conditioning, text=on, context=on, image=on
    )
    cond = model.apply({"params": params}, batch, masks, method=Imagen.condition)
    hw = cond["input_memory"].mask.shape[1]
    # One item of h*w tokens beside the K context items', kept where the
    # example has an input image (the second has none).
    assert cond["input_memory"].tokens.shape[:2] == (B, hw)
    assert hw == cond["memory"].tokens.shape[1] // K
    np.testing.assert_array_equal(cond["input_memory"].mask.all(1), [True, False])
    assert not cond["input_memory"].mask[1].any()
    z = jax.random.normal(jax.random.PRNGKey(3), (B, 32, 32, 3))
    logsnr = jnp.array([1.0, -2.0])

    def denoise(**cond):
        return model.apply({"params": params}, z, logsnr, method=Imagen.denoise, **cond)

    memory = cond["input_memory"]
    off = dict(cond, input_memory=memory.replace(mask=memory.mask & False))
    moved = jnp.abs(denoise(**cond) - denoise(**off)).max(axis=(1, 2, 3))
    # Masking the first example's input item moves its output; the second's
    # was masked already, so its output is the same computation.
    assert float(moved[0]) > 1e-3
    assert float(moved[1]) == 0.0


@pytest.mark.parametrize("fixture", ["input_memory", "input_text"])
def test_input_text_makes_the_input_encoding_read_the_instruction(request, fixture):
    cfg, model, params, batch = request.getfixturevalue(fixture)
    on = np.ones(B, bool)
    masks = conditioning.condition_masks(
        batch, model.conditioning, text=on, context=on, image=on
    )
    # Another instruction of the same length (the first example's input is
    # kept; only its text changes).
    other = dict(batch, text_tokens=(batch["text_tokens"] % 150) + 7)

    def input_tokens(b):
        cond = model.apply({"params": params}, b, masks, method=Imagen.condition)
        return cond["input_memory"].tokens[0]

    moved = float(jnp.abs(input_tokens(batch) - input_tokens(other)).max())
    if model.unet_config.input_text:
        assert moved > 1e-3
    else:
        assert moved == 0.0


@pytest.mark.parametrize(
    "fixture", ["instruction", "context_instruction", "context_marker"]
)
def test_context_instruction_makes_the_items_encoding_read_the_instruction(
    request, fixture
):
    cfg, model, params, batch = request.getfixturevalue(fixture)
    on = np.ones(B, bool)
    other = dict(batch, text_tokens=(batch["text_tokens"] % 150) + 7)

    def memory(b, text):
        masks = conditioning.condition_masks(
            b, model.conditioning, text=on & text, context=on, image=on
        )
        cond = model.apply({"params": params}, b, masks, method=Imagen.condition)
        return cond["memory"].tokens

    moved = float(jnp.abs(memory(batch, True) - memory(other, True)).max())
    # A dropped text is not read: the items' encodings are those of no text.
    unread = float(jnp.abs(memory(batch, False) - memory(other, False)).max())
    assert unread == 0.0
    if model.unet_config.items_read_instruction:
        assert moved > 1e-3
        # ... and the text's presence itself moves them.
        assert float(jnp.abs(memory(batch, True) - memory(batch, False)).max()) > 1e-3
    else:
        assert moved == 0.0


def test_context_instruction_needs_the_instruction(context_instruction):
    cfg, model, params, batch = context_instruction
    with pytest.raises(ValueError, match="pass instruction="):
        model.apply(
            {"params": params},
            *(batch[k] for k in ("ctx_images", "ctx_tokens", "ctx_text_mask")),
            batch["ctx_mask"],
            method=Imagen.encode_memory,
        )
    on = np.ones(B, bool)
    # Text embeddings stored by a frozen encoder, without their tokens.
    no_tokens = {k: v for k, v in batch.items() if k != "text_tokens"}
    no_tokens["text_embeddings"] = np.zeros(
        batch["text_mask"].shape + (cfg.text.d_model,), np.float32
    )
    masks = conditioning.condition_masks(
        batch, model.conditioning, text=on, context=on, image=on
    )
    with pytest.raises(ValueError, match="needs the instruction's text_tokens"):
        model.apply({"params": params}, no_tokens, masks, method=Imagen.condition)


def test_context_marker_reads_the_instruction_at_each_items_marker(context_marker):
    cfg, model, params, batch = context_marker
    variables = {"params": params}
    mask = batch["text_mask"]
    encoding = model.apply(
        variables, batch["text_tokens"], mask, method=Imagen.encode_text
    )

    def items_text(instruction):
        return model.apply(
            variables,
            batch["ctx_tokens"],
            batch["ctx_text_mask"],
            instruction,
            method=Imagen.encode_items_text,
        )

    text, text_mask = items_text((batch["text_tokens"], mask, encoding))
    own = model.apply(
        variables,
        batch["ctx_tokens"],
        batch["ctx_text_mask"],
        method=Imagen.encode_text,
    )
    # Each item's own text, then one token: the instruction at its marker.
    assert text.shape == (B, K, 8 + 1, cfg.text.d_model)
    np.testing.assert_array_equal(text[..., :8, :], own)
    np.testing.assert_array_equal(text_mask[..., :8], batch["ctx_text_mask"])
    # Named: the first example's items 1 (at 2) and 3 (at 5 and 7); no other.
    np.testing.assert_array_equal(
        text_mask[..., 8], [[True, False, True, False], [False] * K]
    )
    # Averaged over f32 values of O(1): a few ulps.
    np.testing.assert_allclose(text[0, 0, 8], encoding[0, 2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        text[0, 2, 8], (encoding[0, 5] + encoding[0, 7]) / 2, rtol=0, atol=1e-6
    )
    # A dropped text is not read.
    _, dropped = items_text((batch["text_tokens"], mask & False, encoding))
    assert not dropped[..., 8].any()
    with pytest.raises(ValueError, match="pass instruction=\\(tokens, mask, enc"):
        items_text((batch["text_tokens"], mask))


def test_context_marker_and_context_instruction_exclude_each_other():
    with pytest.raises(ValueError, match="set one"):
        UNetConfig(context_instruction=True, context_marker=True)


def test_input_text_needs_input_memory():
    with pytest.raises(ValueError, match="input_text needs input_memory"):
        UNetConfig(input_text=True)


def _branch_x0(model, param, params, batch, z, logsnr, text, context, image):
    """x0 of one guidance branch, its conditions encoded from the masks."""
    on = np.ones(B, bool)
    masks = conditioning.condition_masks(
        batch,
        model.conditioning,
        text=on & text,
        context=on & context,
        image=on & image,
    )

    def encode_and_denoise(module, z, logsnr):
        return module.denoise(z, logsnr, **module.condition(batch, masks))

    out = model.apply({"params": params}, z, logsnr, method=encode_and_denoise)
    return losses.predict_x0(out, z, logsnr, param)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("fixture", ["instruction", "context_instruction"])
def test_interleaved_guidance_guides_on_text_or_on_context(request, fixture, eta):
    cfg, model, params, batch = request.getfixturevalue(fixture)
    param = cfg.diffusion.param
    z = jax.random.normal(jax.random.PRNGKey(3), (B, 32, 32, 3))
    logsnr = jnp.array([1.0, -2.0])
    coins = jax.random.PRNGKey(7)
    guided = sampling.guided_denoiser(
        model,
        param,
        params,
        batch,
        {"text": 3.0},
        0,
        rule="interleaved",
        eta=eta,
        rng=coins,
    )
    got = jax.jit(guided)(z, logsnr, 2)
    full, no_text, no_ctx = (
        _branch_x0(model, param, params, batch, z, logsnr, *kept, True)
        for kept in [(True, True), (False, True), (True, False)]
    )
    on_text = guidance.cfg(full, no_text, 3.0)
    on_ctx = guidance.cfg(full, no_ctx, 3.0)
    # The stacked branches differ from these apart only in summation order
    # (~1e-6 on an O(1) x0); cfg weighs them by at most 1 + 2 s = 7.
    atol = 7 * 2e-6
    if eta in (0.0, 1.0):
        want = on_text if eta else on_ctx
    else:  # the coins of this step: fold_in(rng, step_index)
        heads = jax.random.bernoulli(jax.random.fold_in(coins, 2), eta, (B,))
        want = jnp.where(heads[:, None, None, None], on_text, on_ctx)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    # The two guides differ, so the comparison above tells them apart.
    assert float(jnp.abs(on_text - on_ctx).max()) > 1e-3


def test_interleaved_rule_needs_context_items(setup, instruction):
    cfg, model, *_ = setup
    with pytest.raises(ValueError, match="needs an instruction model"):
        sampling.make_generate_fn(model, cfg, "ddim", "interleaved")
    with pytest.raises(ValueError, match="unknown guidance rule 'mixed'"):
        sampling.make_generate_fn(model, cfg, "ddim", "mixed")
    cfg, model, params, batch = instruction
    with pytest.raises(ValueError, match="needs rng"):
        sampling.guided_denoiser(model, "v", params, batch, {}, 0, rule="interleaved")


def _conv_batches(jaxpr, in_loop: bool = False) -> list[tuple[int, bool]]:
    """(batch size, inside a loop body) of every convolution in a jaxpr."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out.append((eqn.invars[0].aval.shape[0], in_loop))
        loop = in_loop or eqn.primitive.name in ("while", "scan")
        for sub in jax_core.jaxprs_in_params(eqn.params):
            out += _conv_batches(sub, loop)
    return out


def test_context_is_encoded_once_per_request_outside_the_sampler_loop(instruction):
    cfg, model, params, batch = instruction
    memory_of = jax.make_jaxpr(
        lambda p: model.apply(
            {"params": p},
            *(batch[k] for k in ("ctx_images", "ctx_tokens", "ctx_text_mask")),
            batch["ctx_mask"],
            method=Imagen.encode_memory,
        )
    )
    encoder = _conv_batches(memory_of(params).jaxpr)
    assert encoder and set(encoder) == {(B * K, False)}
    generate = sampling.make_generate_fn(model, cfg, "ddim")
    convs = _conv_batches(jax.make_jaxpr(generate)(params, batch, KEY, 3, 3.0).jaxpr)
    # One encoder pass over the B*K context images, before the loop ...
    assert convs.count((B * K, False)) == len(encoder)
    # ... and in the loop only the denoiser, on the 3 guidance branches.
    assert {b for b, in_loop in convs if in_loop} == {3 * B}
    assert (B * K, True) not in convs


def test_items_read_the_instruction_are_encoded_twice_outside_the_loop(
    context_instruction,
):
    cfg, model, params, batch = context_instruction
    memory_of = jax.make_jaxpr(
        lambda p: model.apply(
            {"params": p},
            *(batch[k] for k in ("ctx_images", "ctx_tokens", "ctx_text_mask")),
            batch["ctx_mask"],
            instruction=(batch["text_tokens"], batch["text_mask"]),
            method=Imagen.encode_memory,
        )
    )
    encoder = _conv_batches(memory_of(params).jaxpr)
    assert encoder and set(encoder) == {(B * K, False)}
    generate = sampling.make_generate_fn(model, cfg, "ddim")
    convs = _conv_batches(jax.make_jaxpr(generate)(params, batch, KEY, 3, 3.0).jaxpr)
    # With and without the text: two encoder passes over the B*K items, both
    # before the loop; the loop runs the denoiser only.
    assert convs.count((B * K, False)) == 2 * len(encoder)
    assert {b for b, in_loop in convs if in_loop} == {3 * B}


def test_interleaved_sampling_runs_three_branches_and_traces_eta(instruction):
    cfg, model, params, batch = instruction
    generate = sampling.make_generate_fn(model, cfg, "ddim", "interleaved")
    convs = _conv_batches(
        jax.make_jaxpr(generate)(params, batch, KEY, 3, 3.0, 1.0, 0, 0.5).jaxpr
    )
    assert {b for b, in_loop in convs if in_loop} == {3 * B}
    outs = [
        np.asarray(generate(params, batch, KEY, 2, 3.0, 1.0, 0, eta))
        for eta in (0.0, 1.0)
    ]
    assert generate._cache_size() == 1
    assert np.abs(outs[0] - outs[1]).max() > 1e-4  # eta reaches the sampler


def test_text_to_image_guidance_runs_two_branches(setup):
    cfg, model, params, batch = setup
    generate = sampling.make_generate_fn(model, cfg, "ddim")
    convs = _conv_batches(jax.make_jaxpr(generate)(params, batch, KEY, 3, 3.0).jaxpr)
    assert convs and set(convs) == {(2 * 2, True)}  # batch 2, two branches


def test_text_to_image_is_classifier_free_guidance(setup):
    cfg, model, params, batch = setup
    params = perturbed(params)
    z = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
    logsnr = jnp.array([1.0, -2.0])
    guided = sampling.guided_denoiser(
        model, cfg.diffusion.param, params, batch, {"text": 4.0, "image": 9.0}, 0
    )

    def branch(text_kept):
        mask = batch["text_mask"] & text_kept
        out = model.apply(
            {"params": params}, z, logsnr, batch["text_tokens"], mask
        )  # Imagen.__call__: text encoded with this mask
        return losses.predict_x0(out, z, logsnr, cfg.diffusion.param)

    want = guidance.cfg(branch(True), branch(False), 4.0)  # s_image plays no part
    # The branches run stacked (batch 4) there and apart (batch 2) here: only
    # the float32 summation order differs (~1e-6 on an O(1) x0), and guidance
    # weighs the branches by at most 1 + 2 s = 9.
    np.testing.assert_allclose(guided(z, logsnr, 0), want, rtol=0, atol=9 * 2e-6)


def test_missing_batch_fields_are_named(instruction):
    cfg, model, params, batch = instruction
    text_only = {k: batch[k] for k in ("text_tokens", "text_mask")}
    with pytest.raises(ValueError, match="ctx_images"):
        sampling.guided_denoiser(model, "v", params, text_only, {}, 0)


def _loaded(cfg, model, params):
    return inference.Loaded(cfg, make_tokenizer(cfg), model, params, step=0)


def _request(text, **fields):
    return instructions.parse_request(
        {"text": text, "steps": 1, "num_images": 1, **fields}
    )


def test_text_beyond_the_model_limit_is_refused_not_cut(setup):
    cfg, model, params, _ = setup
    loaded = _loaded(cfg, model, params)
    assert cfg.data.max_text_len == 32
    at_limit = "a small red circle at the right"  # 31 bytes + EOS
    assert generate.generate_images(loaded, _request(at_limit)).shape == (1, 32, 32, 3)
    for text, tokens in [(at_limit + "!", 33), ("a" * 26_000, 26_001)]:
        with pytest.raises(
            instructions.LimitError,
            match=rf"^request field 'text' is {tokens} tokens \(EOS included\); "
            r"the limit is 32 \(the model's data.max_text_len\)$",
        ):
            generate.generate_images(loaded, _request(text))


def test_marker_to_a_text_to_image_model_is_named(setup):
    loaded = _loaded(*setup[:3])
    with pytest.raises(ValueError, match=r"'text' names \[ref#2\].*text-to-image"):
        generate.generate_images(loaded, _request("a [ref#2] at the top"))


def _context(texts):
    return [
        {"marker": f"[ref#{k}]", "text": t, "image": "ref.png"}
        for k, t in enumerate(texts, start=1)
    ]


def test_context_beyond_the_model_limits_is_named(instruction):
    cfg, model, params, _ = instruction
    loaded = _loaded(cfg, model, params)
    assert (cfg.data.max_context, cfg.data.ctx_text_len) == (K, 8)
    loads = []

    def load_image(ref):
        loads.append(ref)
        return np.zeros((32, 32, 3), np.uint8)

    def sample(texts):
        markers = " ".join(f"[ref#{k}]" for k in range(1, len(texts) + 1))
        request = _request(f"Generate {markers}", context=_context(texts))
        return generate.generate_images(loaded, request, load_image)

    with pytest.raises(
        instructions.LimitError,
        match=r"^request field 'context' is 5 items; the limit is 4 "
        r"\(the model's data.max_context\)$",
    ):
        sample(["a dot"] * 5)
    assert not loads  # refused before any image is loaded
    # "[ref#2] a glim": marker + space + 6 bytes + EOS = 9 tokens.
    with pytest.raises(
        instructions.LimitError,
        match=r"^request field 'context\[1\].text' is 9 tokens \(with its marker "
        r"and EOS\); the limit is 8 \(the model's data.ctx_text_len\)$",
    ):
        sample(["a dot", "a glim"])
    # At both limits: K items of 8 tokens each.
    assert sample(["a dot"] * K).shape == (1, 32, 32, 3)


def test_an_image_too_large_to_decode_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    path = str(tmp_path / "huge.png")
    Image.new("1", (64, 64)).save(path)
    # PIL's decompression-bomb guard, lowered: refuses over 2 x 1000 pixels.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="huge.png' is not a readable image"):
        generate.load_png(path)


def test_interleaved_guidance_in_a_request(setup, instruction):
    t2i = _loaded(*setup[:3])
    with pytest.raises(ValueError, match=r"guidance for \['interleave'\]"):
        generate.generate_images(t2i, _request("a dot", guidance={"interleave": 0.5}))
    loaded = _loaded(*instruction[:3])
    context = {"context": _context(["a dot"])}

    def sample(g):
        request = _request("a [ref#1]", guidance=g, **context)
        return generate.generate_images(
            loaded, request, lambda ref: np.zeros((32, 32, 3), np.uint8)
        )

    with pytest.raises(ValueError, match=r"interleave is eta.*got 1.5"):
        sample({"interleave": 1.5})
    with pytest.raises(ValueError, match="takes no 'image' scale"):
        sample({"interleave": 0.5, "image": 2.0})
    assert sample({"text": 3.0, "interleave": 0.5}).shape == (1, 32, 32, 3)
