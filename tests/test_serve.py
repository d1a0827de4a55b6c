"""The HTTP server (`launch.serve`): answers, every error path, batching,
no compilation after start-up, graceful shutdown, the page."""

import base64
import http.client
import io
import json
import os
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import stage2_shapes, t2i_shapes
from imagen_jax import (
    checkpointing,
    export,
    generate,
    instructions,
    server,
    train_state,
)
from imagen_jax.models.imagen import build_model
from imagen_jax.text import tokenizers
from tests.params import normal_like

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
R = 32  # the smoke configs' resolution


def _random_workdir(path: str, cfg) -> str:
    """A workdir holding `cfg`'s model with N(0, 0.05^2) parameters, saved as
    a step-1 checkpoint (compiling the model's init would take longer than
    the tests)."""
    model = build_model(cfg, tokenizers.make_tokenizer(cfg).vocab_size)
    init = lambda: nn.meta.unbox(train_state.init_params(model, cfg))  # noqa: E731
    params = jax.tree.map(jnp.asarray, normal_like(jax.eval_shape(init), 0.05))
    checkpointing.save_config(path, cfg)
    mngr = checkpointing.manager(os.path.join(path, "checkpoints"))
    state = train_state.TrainState(jnp.int32(1), params, params, {})
    checkpointing.save(mngr, 1, state, {})
    mngr.wait_until_finished()
    return path


@pytest.fixture(scope="module")
def t2i_workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("t2i"))
    return _random_workdir(path, t2i_shapes.get_config("smoke"))


@pytest.fixture(scope="module")
def t2i(t2i_workdir):
    """A text-to-image server compiled for batches of 1 and 2 images."""
    model = server.load_model(workdir=t2i_workdir, max_batch=2)
    srv = server.start(model, "127.0.0.1", 0, batch_wait_ms=50)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    """An instruction (stage-2) server, one image a call."""
    path = str(tmp_path_factory.mktemp("instruct"))
    workdir = _random_workdir(path, stage2_shapes.get_config("smoke"))
    srv = server.start(
        server.load_model(workdir=workdir, max_batch=1), "127.0.0.1", 0, 0
    )
    yield srv
    srv.close()


@pytest.fixture
def compilations():
    """The XLA compilations done while the test runs."""
    events = []

    def listen(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield events
    jax.monitoring.unregister_event_duration_listener(listen)


def _call(srv, method, path, body=None, headers=None):
    """-> (status, decoded JSON or the raw body, headers)."""
    host, port = srv.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    kind = response.getheader("Content-Type", "")
    data = json.loads(raw) if kind.startswith("application/json") else raw
    return response.status, data, response


def _post(srv, body, **kwargs):
    status, data, _ = _call(srv, "POST", "/generate", body, **kwargs)
    return status, data


def _png(side=R, seed=0, fmt="PNG") -> str:
    """A base64 image of random pixels (black above 64 pixels: small files)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (side, side, 3), np.uint8) * (side <= 64)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def _images(answer) -> np.ndarray:
    out = []
    for png in answer["images"]:
        with Image.open(io.BytesIO(base64.b64decode(png))) as image:
            assert image.format == "PNG"
            out.append(np.asarray(image))
    return np.stack(out)


REQUEST = {"text": "a red circle", "steps": 3, "num_images": 2, "seed": 1}


def test_good_request_returns_pngs_and_settings(t2i):
    status, answer = _post(t2i, dict(REQUEST, guidance={"text": 2.5}))
    assert status == 200, answer
    images = _images(answer)
    assert images.shape == (2, R, R, 3) and images.dtype == np.uint8
    assert images.std() > 0
    assert answer["settings"] == {
        "sampler": "ddim",
        "steps": 3,
        "guidance": {"text": 2.5},
        "oscillate": False,
        "seed": 1,
        "num_images": 2,
    }
    assert set(answer["batch"]) == {"id", "requests", "images"}


def test_images_are_launch_sample_images(t2i):
    """The server draws what `launch.sample` draws for the same request."""
    status, answer = _post(t2i, REQUEST)
    assert status == 200, answer
    loaded = t2i.model.loaded
    expected = generate.generate_images(loaded, instructions.parse_request(REQUEST))
    diff = np.abs(_images(answer).astype(int) - expected.astype(int))
    # float32 rounding of two compilations can move a pixel across a level
    assert diff.max() <= 1 and diff.mean() < 0.01, diff.max()


def test_defaults_come_from_the_run(t2i):
    status, answer = _post(t2i, {"text": "a blue square", "num_images": 1})
    assert status == 200, answer
    assert answer["settings"]["steps"] == 4  # the smoke config's sample.steps
    assert answer["settings"]["guidance"] == {"text": 3.0}
    assert answer["settings"]["seed"] == 0


T2I_ERRORS = {
    "unknown field": (dict(REQUEST, colour="red"), "unknown request fields"),
    "malformed marker": (dict(REQUEST, text="a [ref#0] circle"), "malformed marker"),
    "marker to t2i": (
        dict(REQUEST, text="[ref#1] at the top"),
        "text-to-image model",
    ),
    "context to t2i": (
        dict(REQUEST, context=[{"marker": "[ref#1]", "text": "x", "image": _png()}]),
        "text-to-image model",
    ),
    "steps over the limit": (dict(REQUEST, steps=10**8), "'steps' is 100000000"),
    "images over max_batch": (dict(REQUEST, num_images=3), "'num_images' is 3"),
    "images over the limit": (dict(REQUEST, num_images=10**6), "the limit is 2"),
    "no text": ({"steps": 3}, "'text' must be a non-empty string"),
    "not an object": ([1, 2], "must be a JSON object"),
    "bad seed": (dict(REQUEST, seed="x"), "invalid literal"),
    "seed too large": (dict(REQUEST, seed=2**70), "expected a 64-bit integer"),
    "other sampler": (dict(REQUEST, sampler="ddpm"), "this server runs 'ddim'"),
    "unknown guidance": (dict(REQUEST, guidance={"colour": 2}), "not supported"),
    "retrieve": (dict(REQUEST, retrieve=2), "'retrieve' is not served"),
    "text too long": (dict(REQUEST, text="a" * 26000), "'text' is 26001 tokens"),
}


@pytest.mark.parametrize("name", sorted(T2I_ERRORS))
def test_bad_request_is_400_with_message(t2i, name):
    body, message = T2I_ERRORS[name]
    status, answer = _post(t2i, body)
    assert status == 400, answer
    assert message in answer["error"], answer


def _instruct_request(**over):
    request = {
        "text": "draw [ref#1] at the top left",
        "context": [{"marker": "[ref#1]", "text": "a zorblat", "image": _png()}],
        "image": "data:image/png;base64," + _png(seed=1),
        "steps": 2,
        "num_images": 1,
        "guidance": {"text": 4.0, "image": 2.0},
    }
    return dict(request, **over)


def test_instruction_request(instruct):
    status, answer = _post(instruct, _instruct_request())
    assert status == 200, answer
    assert _images(answer).shape == (1, R, R, 3)
    assert answer["settings"]["guidance"] == {"image": 2.0, "text": 4.0}


def _item(**over):
    return [dict({"marker": "[ref#1]", "text": "a zorblat", "image": _png()}, **over)]


INSTRUCT_ERRORS = {
    "marker without item": (
        {"text": "[ref#3] beside [ref#1]"},
        "marker [ref#3] in the text",
    ),
    "item never named": ({"text": "draw a circle"}, "never named"),
    "wrong image size": (
        {"context": _item(image=_png(side=48))},
        "must be uint8 of shape (32, 32, 3)",
    ),
    "input image size": ({"image": _png(side=16)}, "input image must be uint8"),
    "bad base64": ({"context": _item(image="not base64!")}, "context[0].image"),
    "not a png": ({"image": _png(fmt="JPEG")}, "'image' is a JPEG image"),
    "not an image": (
        {"image": base64.b64encode(b"hello").decode()},
        "'image' is not a readable PNG",
    ),
    "image over the side limit": (
        {"image": _png(side=1100)},
        "'image' is 1100x1100 pixels; the limit is 1024x1024",
    ),
    "image not a string": ({"image": 7}, "must be a base64 PNG string"),
    "item fields": ({"context": [{"marker": "[ref#1]"}]}, "has fields"),
    "too many items": (
        {
            "text": " ".join(f"[ref#{k}]" for k in range(1, 6)),
            "context": [
                {"marker": f"[ref#{k}]", "text": "x", "image": _png()}
                for k in range(1, 6)
            ],
        },
        "data.max_context",
    ),
}


@pytest.mark.parametrize("name", sorted(INSTRUCT_ERRORS))
def test_bad_instruction_request_is_400(instruct, name):
    over, message = INSTRUCT_ERRORS[name]
    status, answer = _post(instruct, _instruct_request(**over))
    assert status == 400, answer
    assert message in answer["error"], answer


def test_body_errors(t2i):
    status, answer = _post(t2i, b"{not json")
    assert (status, answer["error"][:25]) == (400, "the request body is not J")
    status, answer = _post(t2i, b"\xff\xfe")
    assert status == 400 and "not JSON" in answer["error"]


def test_oversized_body_is_413_unread(t2i):
    host, port = t2i.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/generate")
    conn.putheader("Content-Length", str(t2i.max_body + 1))
    conn.endheaders()  # the body is never sent: the server must not wait for it
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 413
    assert f"the limit is {t2i.max_body}" in answer["error"]


def test_missing_length_is_411(t2i):
    host, port = t2i.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/generate")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411
    assert "Content-Length" in json.loads(response.read())["error"]
    conn.close()


@pytest.mark.parametrize(
    "method, path, status, allow",
    [
        ("GET", "/nope", 404, None),
        ("POST", "/generate/x", 404, None),
        ("GET", "/generate", 405, "POST"),
        ("POST", "/health", 405, "GET"),
        ("DELETE", "/", 405, "GET"),
        ("PUT", "/generate", 405, "POST"),
    ],
)
def test_paths_and_methods(t2i, method, path, status, allow):
    got, answer, response = _call(t2i, method, path)
    assert got == status
    assert answer["error"]
    assert response.getheader("Allow") == allow


def test_health(t2i):
    status, health, _ = _call(t2i, "GET", "/health")
    assert status == 200
    assert health["status"] == "ok"
    assert health["batch_sizes"] == [1, 2]
    assert health["model"]["conditioning"] == "text"
    assert health["model"]["resolution"] == R
    assert health["model"]["step"] == 1
    assert health["limits"]["num_images"] == 2
    assert health["limits"]["steps"] == instructions.LIMITS.steps
    assert health["queue_depth"] == 0
    before = health["batches_served"]
    assert _post(t2i, dict(REQUEST, num_images=1))[0] == 200
    assert _call(t2i, "GET", "/health")[1]["batches_served"] == before + 1


def test_page(t2i):
    status, page, response = _call(t2i, "GET", "/?text=a+red+circle&autorun=1")
    assert status == 200
    assert response.getheader("Content-Type").startswith("text/html")
    assert b"<title>imagen_jax</title>" in page
    assert b'fetch("/generate"' in page and b"[ref#" in page
    assert b"<script src" not in page and b"<link" not in page  # self-contained


def test_no_compilation_across_requests(t2i, instruct, compilations):
    for steps, scale, seed, n in [(1, 1.0, 0, 1), (5, 7.5, 3, 2), (2, 0.0, 2**33, 2)]:
        body = dict(REQUEST, steps=steps, guidance=scale, seed=seed, num_images=n)
        status, answer = _post(t2i, body)
        assert status == 200, answer
        assert answer["settings"]["steps"] == steps
    for steps in (1, 3):
        guidance = {"text": steps, "image": 1.0, "oscillate": 1}
        status, answer = _post(
            instruct, _instruct_request(steps=steps, guidance=guidance)
        )
        assert status == 200, answer
    assert compilations == []


def test_concurrent_requests_share_a_call(t2i):
    """Two requests arriving together run as one batch; each gets the images
    it gets alone (its own seed and guidance)."""
    a = dict(REQUEST, num_images=1, seed=5, guidance=2.0)
    b = dict(REQUEST, text="a green triangle", num_images=1, seed=6, guidance=4.0)
    alone = [_images(_post(t2i, r)[1]) for r in (a, b)]
    answers = [None, None]

    def send(i, request):
        answers[i] = _post(t2i, request)

    t2i.batcher.wait_s = 2.0  # the second request surely arrives in time
    try:
        threads = [
            threading.Thread(target=send, args=(i, r)) for i, r in enumerate((a, b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        t2i.batcher.wait_s = 0.05
    (sa, aa), (sb, ab) = answers
    assert sa == sb == 200
    assert aa["batch"] == ab["batch"]
    assert aa["batch"]["requests"] == 2 and aa["batch"]["images"] == 2
    for answer, single in zip((aa, ab), alone):
        diff = np.abs(_images(answer).astype(int) - single.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01


def test_graceful_shutdown_finishes_the_request_in_flight(t2i):
    """close() stops accepting at once and answers the request in flight."""
    srv = server.Server(t2i.model, batch_wait_ms=0, compiled=True).start()
    host, port = srv.httpd.server_address[:2]
    answer = []
    request = dict(REQUEST, steps=200, num_images=1)
    thread = threading.Thread(target=lambda: answer.append(_post(srv, request)))
    thread.start()
    deadline = time.monotonic() + 60
    while srv.health()["in_flight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    srv.close()
    thread.join()
    ((status, body),) = answer
    assert status == 200, body
    assert body["settings"]["steps"] == 200
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(host, port, timeout=5).connect()


def test_compiling_server_answers_503(t2i):
    """Until the model is compiled, /health and /generate answer 503, the page
    is served."""
    srv = server.Server(t2i.model).start()
    try:
        status, health, _ = _call(srv, "GET", "/health")
        assert (status, health["status"]) == (503, "compiling")
        status, answer = _post(srv, REQUEST)
        assert status == 503 and "compiling" in answer["error"]
        assert _call(srv, "GET", "/")[0] == 200
    finally:
        srv.close()


def test_bundle_server_matches_workdir_server(t2i, t2i_workdir, tmp_path):
    bundle = str(tmp_path / "bundle")
    export.export_bundle(t2i_workdir, bundle, batch_sizes=(2,))
    srv = server.start(server.load_model(bundle=bundle), "127.0.0.1", 0, 0)
    try:
        status, answer = _post(srv, dict(REQUEST, num_images=1))
        assert status == 200, answer
        assert answer["settings"]["steps"] == 3
        assert _call(srv, "GET", "/health")[1]["model"]["source"] == "bundle"
        status, error = _post(srv, dict(REQUEST, num_images=3))
        assert status == 400 and "the limit is 2" in error["error"]
    finally:
        srv.close()
    expected = _images(_post(t2i, dict(REQUEST, num_images=1))[1])
    diff = np.abs(_images(answer).astype(int) - expected.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_load_test_counts_answers_and_failures(t2i):
    from imagen_jax import loadtest

    prompts = ("a red circle", "a blue square")
    runs = loadtest.run_load({"ok": t2i.url}, 2, 1.0, steps=1, prompts=prompts)
    run = runs["ok"]
    assert run["requests"] >= 2 and run["failed"] == 0, run
    assert run["images"] == run["requests"]
    assert 0 < run["latency_s"]["p50"] <= run["latency_s"]["p95"]
    assert run["server_cpu_s_per_image"] > 0
    # steps beyond the limit: every request answered 400 and counted failed
    bad = loadtest.run_load({"bad": t2i.url}, 2, 0.5, steps=10**6, prompts=prompts)
    bad = bad["bad"]
    assert bad["requests"] >= 2 and bad["failed"] == bad["requests"]
    assert bad["errors"][0].startswith("400: request field 'steps'")
