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
