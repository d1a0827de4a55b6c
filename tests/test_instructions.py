"""Request parsing (DESIGN §7): valid requests and every error path."""

import json

import pytest

from imagen_jax import instructions


def test_full_request_parses():
    r = instructions.parse_request(
        {
            "text": "a red circle",
            "sampler": "ddpm",
            "steps": 8,
            "guidance": {"text": 5.0},
            "seed": 3,
            "num_images": 2,
        }
    )
    assert (r.text, r.sampler, r.steps, r.guidance, r.seed, r.num_images) == (
        "a red circle",
        "ddpm",
        8,
        {"text": 5.0},
        3,
        2,
    )
    assert instructions.parse_request({"text": "x", "guidance": 2}).guidance == {
        "text": 2.0
    }


@pytest.mark.parametrize(
    "obj,match",
    [
        ([], "must be a JSON object"),
        ({}, "'text' must be a non-empty string"),
        ({"text": "  "}, "'text' must be a non-empty string"),
        ({"text": "x", "stepz": 3}, r"unknown request fields \['stepz'\]"),
        ({"text": "x", "steps": 0}, "'steps' must be a positive integer"),
        ({"text": "x", "num_images": 1.5}, "'num_images' must be a positive integer"),
        ({"text": "x", "guidance": "high"}, "'guidance' must be a number"),
        ({"text": "x", "context": {"a": 1}}, "'context' must be a list"),
    ],
)
def test_bad_requests_name_the_field(obj, match):
    with pytest.raises(ValueError, match=match):
        instructions.parse_request(obj)


def test_load_request_reports_bad_json(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        instructions.load_request(str(p))
    p.write_text(json.dumps({"text": "a blue square"}))
    assert instructions.load_request(str(p)).text == "a blue square"


@pytest.mark.parametrize(
    "field, limit, asked", [("steps", 1000, 10**8), ("num_images", 64, 10**6)]
)
def test_limits_name_the_field_value_and_limit(field, limit, asked):
    assert getattr(instructions.LIMITS, field) == limit
    at_limit = instructions.parse_request({"text": "x", field: limit})
    assert getattr(at_limit, field) == limit
    for value in (limit + 1, asked):
        with pytest.raises(
            instructions.LimitError,
            match=rf"^request field '{field}' is {value}; the limit is {limit}$",
        ):
            instructions.parse_request({"text": "x", field: value})
    # A caller (a server) may set its own limits.
    tight = instructions.RequestLimits(**{field: 2})
    with pytest.raises(instructions.LimitError, match="the limit is 2"):
        instructions.parse_request({"text": "x", field: 3}, tight)


def test_retrieve_is_a_count_that_excludes_explicit_context():
    assert instructions.parse_request({"text": "a glim"}).retrieve == 0
    assert instructions.parse_request({"text": "a glim", "retrieve": 3}).retrieve == 3
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="'retrieve'"):
            instructions.parse_request({"text": "a glim", "retrieve": bad})
    item = {"marker": "[ref#1]", "image": "x.png"}
    with pytest.raises(ValueError, match="exclude each other"):
        instructions.parse_request(
            {"text": "a [ref#1]", "context": [item], "retrieve": 1}
        )
