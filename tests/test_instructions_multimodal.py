"""Multi-modal instructions: markers, validation, arrays, requests."""

import re

import numpy as np
import pytest

from imagen_jax import instructions
from imagen_jax.instructions import ContextItem, MultiModalInstruction
from imagen_jax.text.tokenizers import ByteTokenizer

R = 16


def _image(value=7, size=R, dtype=np.uint8):
    return np.full((size, size, 3), value, dtype)


def _instr(text, markers, input_image=None):
    items = tuple(
        ContextItem(m, f"item {i}", _image(i + 1)) for i, m in enumerate(markers)
    )
    return MultiModalInstruction(text, items, input_image)


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer(extra_tokens=instructions.MARKERS)


def test_markers_constant():
    assert instructions.MARKERS[0] == "[ref#1]"
    assert len(instructions.MARKERS) == instructions.K_MAX == 8


def test_parse_markers_distinct_in_order():
    text = "put [ref#2] left of [ref#1], then [ref#2] again"
    assert instructions.parse_markers(text) == ["[ref#2]", "[ref#1]"]
    assert instructions.parse_markers("a red circle [at the top]") == []


@pytest.mark.parametrize(
    "text,bad,position",
    [
        ("draw [ref#] now", "[ref#]", 5),
        ("draw [ref#0] now", "[ref#0]", 5),
        ("draw [ref#x] now", "[ref#x]", 5),
        ("draw [ref 1] now", "[ref 1]", 5),
        ("draw [ref#1", "[ref#1", 5),
        ("[ref#1] and [ref#9]", "[ref#9]", 12),
        ("draw [REF#1]", "[REF#1]", 5),
        ("draw ref#1] here", "ref#1]", 5),
    ],
)
def test_malformed_markers_are_named_with_position(text, bad, position):
    with pytest.raises(ValueError) as err:
        instructions.parse_markers(text)
    message = str(err.value)
    assert f"malformed marker {bad!r}" in message
    assert f"at position {position}" in message


def test_validate_accepts_one_marker_covering_several_images():
    instr = _instr("[ref#1] next to [ref#2]", ["[ref#1]", "[ref#1]", "[ref#2]"])
    instructions.validate(instr, max_context=3, resolution=R)


@pytest.mark.parametrize(
    "instr,match",
    [
        (_instr("[ref#1] and [ref#2]", ["[ref#1]"]), r"marker \[ref#2\] in the text"),
        (_instr("[ref#1]", ["[ref#1]", "[ref#3]"]), r"context item 1 \(\[ref#3\]"),
        (_instr("no markers", ["[ref#1]"]), "is never named in the text"),
        (_instr("[ref#1]", ["ref1"]), "context item 0 has marker 'ref1'"),
        (
            MultiModalInstruction(
                "[ref#1] and [ref#2]",
                (
                    ContextItem("[ref#1]", "like [ref#2]", _image()),
                    ContextItem("[ref#2]", "item", _image()),
                ),
            ),
            r"context item 0 \(\[ref#1\]\) names \[ref#2\] in its text",
        ),
        (_instr("[ref#1", ["[ref#1]"]), "malformed marker"),
        (
            _instr("[ref#1]", ["[ref#1]"] * 3),
            "3 context items; the model takes at most max_context=2",
        ),
        (
            _instr("x", [], input_image=_image(size=32)),
            r"input image must be uint8 of shape \(16, 16, 3\), got uint8 of "
            r"shape \(32, 32, 3\)",
        ),
        (
            _instr("x", [], input_image=np.zeros((R, R, 3), np.float32)),
            "input image must be uint8 .* got float32",
        ),
    ],
)
def test_validate_errors(instr, match):
    with pytest.raises(ValueError, match=match):
        instructions.validate(instr, max_context=2, resolution=R)


def test_validate_names_the_bad_context_image():
    items = (
        ContextItem("[ref#1]", "good", _image()),
        ContextItem("[ref#2]", "bad one", _image(size=8)),
    )
    instr = MultiModalInstruction("[ref#1] [ref#2]", items)
    with pytest.raises(
        ValueError, match=r"context item 1 \(\[ref#2\] 'bad one'\).*\(8, 8, 3\)"
    ):
        instructions.validate(instr, max_context=4, resolution=R)
    items = (ContextItem("[ref#1]", "grey", np.zeros((R, R), np.uint8)),)
    with pytest.raises(ValueError, match=r"context item 0 .*shape \(16, 16\)"):
        instructions.validate(
            MultiModalInstruction("[ref#1]", items), max_context=4, resolution=R
        )


def test_validate_token_limit(tok):
    instr = _instr("draw [ref#1] big", ["[ref#1]"])
    # "draw " 5 bytes + marker 1 id + " big" 4 bytes + EOS = 11 tokens.
    instructions.validate(
        instr, max_context=1, resolution=R, max_text_tokens=11, tokenizer=tok
    )
    with pytest.raises(ValueError, match="has 11 tokens .* max_text_tokens=10"):
        instructions.validate(
            instr, max_context=1, resolution=R, max_text_tokens=10, tokenizer=tok
        )
    with pytest.raises(ValueError, match="must be given together"):
        instructions.validate(instr, max_context=1, resolution=R, max_text_tokens=10)
    with pytest.raises(ValueError, match=r"no extra token for \['\[ref#1\]'\]"):
        instructions.validate(
            instr,
            max_context=1,
            resolution=R,
            max_text_tokens=99,
            tokenizer=ByteTokenizer(),
        )


def test_to_arrays_shapes_masks_and_padding(tok):
    instr = _instr("[ref#1] beside [ref#2]", ["[ref#1]", "[ref#2]"])
    arrays = instructions.to_arrays(
        instr, tok, max_context=4, text_len=32, ctx_text_len=12, resolution=R
    )
    shapes = {k: (v.shape, v.dtype) for k, v in arrays.items()}
    assert shapes == {
        "text_tokens": ((32,), np.int32),
        "text_mask": ((32,), np.bool_),
        "ctx_images": ((4, R, R, 3), np.uint8),
        "ctx_tokens": ((4, 12), np.int32),
        "ctx_text_mask": ((4, 12), np.bool_),
        "ctx_mask": ((4,), np.bool_),
        "cond_image": ((R, R, 3), np.uint8),
        "cond_image_mask": ((), np.bool_),
    }
    np.testing.assert_array_equal(arrays["ctx_mask"], [True, True, False, False])
    np.testing.assert_array_equal(arrays["ctx_images"][0], _image(1))
    np.testing.assert_array_equal(arrays["ctx_images"][1], _image(2))
    assert not arrays["ctx_images"][2:].any()
    assert (arrays["ctx_tokens"][2:] == tok.pad_id).all()
    assert not arrays["ctx_text_mask"][2:].any()
    assert arrays["ctx_tokens"][1, 0] == tok.extra_token_id("[ref#2]")
    assert tok.decode(arrays["ctx_tokens"][0]) == "[ref#1] item 0"
    assert tok.decode(arrays["text_tokens"]) == instr.text
    # 1 + 8 + 1 text ids + EOS = 11 valid positions.
    assert arrays["text_mask"].sum() == 11
    assert not arrays["cond_image_mask"] and not arrays["cond_image"].any()


def test_to_arrays_input_image_and_errors(tok):
    instr = _instr("edit this", [], input_image=_image(9))
    arrays = instructions.to_arrays(
        instr, tok, max_context=2, text_len=16, ctx_text_len=8, resolution=R
    )
    assert arrays["cond_image_mask"]
    np.testing.assert_array_equal(arrays["cond_image"], _image(9))
    assert not arrays["ctx_mask"].any()
    with pytest.raises(ValueError, match="max_context=1"):
        instructions.to_arrays(
            _instr("[ref#1]", ["[ref#1]"] * 2),
            tok,
            max_context=1,
            text_len=16,
            ctx_text_len=8,
            resolution=R,
        )
    with pytest.raises(ValueError, match="no extra token"):
        instructions.to_arrays(
            _instr("[ref#1]", ["[ref#1]"]),
            ByteTokenizer(),
            max_context=1,
            text_len=16,
            ctx_text_len=8,
            resolution=R,
        )


def _request(**overrides):
    obj = {
        "text": "Generate [ref#1] in the style of [ref#2]",
        "context": [
            {"marker": "[ref#1]", "text": "a glim", "image": "glim.png"},
            {"marker": "[ref#2]", "text": "style image", "image": "s.png"},
        ],
        "image": "input.png",
    }
    obj.update(overrides)
    return instructions.parse_request(obj)


_IMAGES = {"glim.png": _image(1), "s.png": _image(2), "input.png": _image(3)}


def test_instruction_from_request():
    instr = instructions.instruction_from_request(_request(), _IMAGES.__getitem__)
    assert instr.text == "Generate [ref#1] in the style of [ref#2]"
    assert [(c.marker, c.text) for c in instr.context] == [
        ("[ref#1]", "a glim"),
        ("[ref#2]", "style image"),
    ]
    np.testing.assert_array_equal(instr.context[1].image, _image(2))
    np.testing.assert_array_equal(instr.input_image, _image(3))
    instructions.validate(instr, max_context=2, resolution=R)
    plain = instructions.instruction_from_request(
        instructions.parse_request({"text": "a red circle"}), _IMAGES.__getitem__
    )
    assert plain.context == () and plain.input_image is None


@pytest.mark.parametrize(
    "context,match",
    [
        ([{"marker": "[ref#1]", "image": "glim.png"}], r"item 0 has fields \['image'"),
        (
            [{"marker": "[ref#1]", "text": "a", "image": "glim.png", "size": 3}],
            "expected exactly",
        ),
        (["glim.png"], "item 0 must be an object"),
        ([{"marker": "[ref#1]", "text": 3, "image": "glim.png"}], "'text' must be"),
        (
            [{"marker": "[ref#1]", "text": "a glim", "image": "glim.png"}],
            r"marker \[ref#2\] in the text",
        ),
    ],
)
def test_instruction_from_request_errors(context, match):
    with pytest.raises(ValueError, match=match):
        instructions.instruction_from_request(
            _request(context=context), _IMAGES.__getitem__
        )


@pytest.mark.parametrize(
    "field, ref", [("image", "input.png"), ("context[1].image", "s.png")]
)
def test_request_images_beyond_the_size_limit_are_named(field, ref):
    side = instructions.LIMITS.image_side
    assert side == 1024
    wide = {**_IMAGES, ref: np.zeros((side, side + 1, 3), np.uint8)}
    with pytest.raises(
        instructions.LimitError,
        match=rf"^request field '{re.escape(field)}' is 1025x1024 pixels; the "
        r"limit is 1024x1024$",
    ):
        instructions.instruction_from_request(_request(), wide.__getitem__)
    # At the limit the image passes here; `validate` then wants the model's R.
    square = {**_IMAGES, ref: np.zeros((side, side, 3), np.uint8)}
    instr = instructions.instruction_from_request(_request(), square.__getitem__)
    with pytest.raises(ValueError, match=r"shape \(16, 16, 3\)"):
        instructions.validate(instr, max_context=2, resolution=R)
