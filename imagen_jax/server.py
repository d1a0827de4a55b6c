"""HTTP serving of a trained run or a serving bundle (`launch.serve`).

    POST /generate   the request JSON of DESIGN §7, images as base64 PNG (a
                     "data:image/png;base64," prefix allowed) ->
                     {"images": [base64 PNG, ...], "settings": {...},
                      "batch": {"id", "requests", "images"}, "seconds"}
    GET  /health     model, limits, compiled batch sizes and counters
    GET  /           a page to try it (`static/index.html`)

A bad request is answered 4xx with `{"error": message}`; a failure of the
server's own is answered 500 and logged, and the server carries on.

Every function a request runs is compiled at start-up, for each batch size
served; steps, guidance and seed are runtime inputs. One worker thread runs
the model: requests that arrive within `batch_wait_ms` of the first and share
the sampler steps run as one call, padded to a compiled batch size. Each
request's initial noise is drawn from its own seed as `launch.sample` draws
it, and a sampler without per-step noise (DDIM, DPM-Solver++) treats rows
independently, so a request's images do not depend on the requests it was
batched with. Requests to a sampler with per-step noise (DDPM) and to a
serving bundle, whose exported function draws the noise of its whole batch
from one key, run one at a time.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import functools
import http.server
import io
import json
import signal
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from imagen_jax import instructions, serving_bundle
from imagen_jax.instructions import LIMITS, LimitError, RequestLimits

# Samplers whose steps draw no noise (DDIM is run with eta = 0): all of a
# request's randomness is its initial noise, so requests may share a call.
_NOISELESS_SAMPLERS = ("ddim", "dpmpp_2m")
# Requests waiting for the worker beyond which the server answers 503.
MAX_QUEUE = 256
# The page served at / (package data).
PAGE = "static/index.html"
# Text fields of a request body besides its images.
_TEXT_BYTES = 64 * 1024


def compiled_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes compiled for `max_batch` images a call: the powers of
    two below it and itself."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


def max_body_bytes(max_context: int, limits: RequestLimits = LIMITS) -> int:
    """The largest request body taken: `max_context` + 1 images of
    `limits.image_side` pixels as uncompressed PNG in base64, and the text."""
    side = limits.image_side
    png = 3 * side * side + side * 64 + 1024  # pixels, row filters, chunks
    return (max_context + 1) * (4 * png // 3 + 4) + _TEXT_BYTES


def decode_png(ref: Any, field: str, limits: RequestLimits = LIMITS) -> np.ndarray:
    """A base64 PNG of a request -> uint8 [H, W, 3] (RGB).

    Raises:
      ValueError: naming `field`: not a string, not base64, not a PNG;
        `LimitError` for a side beyond `limits.image_side` (checked before the
        pixels are decoded).
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(ref, str):
        raise ValueError(
            f"request field {field!r} must be a base64 PNG string, got "
            f"{type(ref).__name__}"
        )
    data = ref.split(",", 1)[1] if ref.startswith("data:") else ref
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"request field {field!r} is not valid base64: {e}") from e
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format != "PNG":
                raise ValueError(
                    f"request field {field!r} is a {image.format} image; expected PNG"
                )
            width, height = image.size
            if max(width, height) > limits.image_side:
                side = limits.image_side
                raise LimitError(field, f"{width}x{height} pixels", f"{side}x{side}")
            return np.asarray(image.convert("RGB"), np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as e:
        raise ValueError(f"request field {field!r} is not a readable PNG: {e}") from e


def encode_png(image: np.ndarray) -> str:
    """uint8 [H, W, 3] -> base64 PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_loader(
    request: instructions.Request, limits: RequestLimits
) -> Callable[[Any], np.ndarray]:
    """`decode_png` naming each image by its field in the request."""
    fields: dict[str, str] = {}
    for i, item in enumerate(request.context):
        if isinstance(item, dict) and isinstance(item.get("image"), str):
            fields.setdefault(item["image"], f"context[{i}].image")
    if isinstance(request.image, str):
        fields.setdefault(request.image, "image")

    def load(ref: Any) -> np.ndarray:
        field = fields.get(ref, "image") if isinstance(ref, str) else "image"
        return decode_png(ref, field, limits)

    return load


def _key(make_key: Callable[[int], Any], seed: int) -> Any:
    """`make_key(seed)`; a seed beyond 64 bits is a bad request."""
    try:
        return make_key(seed)
    except OverflowError as e:
        raise ValueError(
            f"request field 'seed' is {seed}; expected a 64-bit integer"
        ) from e


def _refuse_retrieval(request: instructions.Request) -> None:
    if request.retrieve:
        raise ValueError(
            "request field 'retrieve' is not served: give the items as 'context' "
            "(launch.sample retrieves)"
        )


@dataclasses.dataclass(eq=False)
class Job:
    """A request on its way through the worker.

    Attributes:
      key: requests of equal keys may share a call.
      rows: images asked for.
      inputs: what the model's `run` needs (the rows of its batch fields...).
      settings: the settings the images are drawn with, for the answer.
    """

    key: Hashable
    rows: int
    inputs: dict[str, Any]
    settings: dict[str, Any]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    images: np.ndarray | None = None
    error: BaseException | None = None
    batch: dict[str, int] = dataclasses.field(default_factory=dict)


class Model(Protocol):
    """What the server needs of a model (`WorkdirModel`, `BundleModel`)."""

    batch_sizes: tuple[int, ...]
    limits: RequestLimits

    def info(self) -> dict[str, Any]: ...

    def compile(self) -> None: ...

    def prepare(self, obj: Any) -> Job: ...

    def run(self, jobs: Sequence[Job]) -> list[np.ndarray]: ...


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """`rows` [n, ...] padded to `size` rows with copies of its first."""
    return np.concatenate([rows, np.repeat(rows[:1], size - len(rows), axis=0)])


def _padded_size(sizes: Sequence[int], rows: int) -> int:
    return min(b for b in sizes if b >= rows)


def _public_settings(
    sampler: str, chain: Sequence[str], request: instructions.Request, s: Mapping
) -> dict[str, Any]:
    """The settings reported with the images."""
    scales = {"text": s["guidance_text"], "image": s["guidance_image"]}
    return {
        "sampler": sampler,
        "steps": int(s["steps"]),
        "guidance": {name: float(scales[name]) for name in sorted(chain)},
        "oscillate": bool(s["oscillate"]),
        "seed": request.seed,
        "num_images": request.num_images,
    }


def _serving_fn(loaded, sampler: str) -> Callable:
    """Jitted `fn(params, batch, x_T, rng, num_steps, s_text, s_image,
    oscillate)` -> images [B, R, R, 3] in [-1, 1].

    `sampling.make_generate_fn` with the initial noise x_T [B, R, R, 3] given
    (each request's drawn from its seed) and the guidance scales and
    oscillation per row ([B]); `rng` is the per-step noise key.
    """
    from imagen_jax import sampling

    config, model = loaded.config, loaded.model
    sample = sampling.make_sampler_fn(config, sampler)

    def serve(params, batch, x_T, rng, num_steps, s_text, s_image, oscillate):
        denoise_fn = sampling.guided_denoiser(
            model,
            config.diffusion.param,
            params,
            batch,
            {"text": s_text, "image": s_image},
            oscillate,
        )
        return sample(denoise_fn, rng, x_T, num_steps)

    return jax.jit(serve)


def _noise_fn(rows: int, resolution: int) -> Callable:
    """Jitted `noise(rng)` -> (x_T [rows, R, R, 3], per-step key)
    (`sampling.draw_noise`, as `sampling.make_generate_fn` draws them)."""
    from imagen_jax import sampling

    return jax.jit(
        functools.partial(sampling.draw_noise, rows=rows, resolution=resolution)
    )


class WorkdirModel:
    """A training run's checkpoint, sampled in-process.

    Args:
      workdir: the run (its latest checkpoint, EMA weights as `launch.sample`).
      max_batch: most images a call draws, and so a request asks for.
      sampler: the sampler served; default the run's `sample.sampler`.
    """

    def __init__(self, workdir: str, max_batch: int = 8, sampler: str | None = None):
        from imagen_jax import inference
        from imagen_jax.diffusion import samplers

        self.batch_sizes = compiled_sizes(max_batch)
        self.loaded = inference.load(workdir)
        self.config = self.loaded.config
        self.kind = self.loaded.model.conditioning
        self.sampler = sampler or self.config.sample.sampler
        if self.sampler not in samplers.get_sampler_names():
            raise ValueError(
                f"unknown sampler {self.sampler!r}; expected one of "
                f"{samplers.get_sampler_names()}"
            )
        self.limits = dataclasses.replace(
            LIMITS, num_images=min(LIMITS.num_images, max_batch)
        )
        self.workdir = workdir
        # One device: a request's batch is small, and a mesh would run it
        # replicated on every device.
        self.params = jax.device_put(self.loaded.params, jax.local_devices()[0])
        self._fn = _serving_fn(self.loaded, self.sampler)
        self._compiled: dict[int, Any] = {}
        self._noise: Any = None

    def info(self) -> dict[str, Any]:
        data, s = self.config.data, self.config.sample
        chain = self.kind.guidance_chain
        scales = {"text": s.guidance, "image": s.get("image_guidance", 1.0)}
        return {
            "source": "workdir",
            "path": self.workdir,
            "step": self.loaded.step,
            "conditioning": self.kind.name,
            "instruction": self.kind.instruction,
            "resolution": data.resolution,
            "max_context": data.get("max_context", 0) if self.kind.instruction else 0,
            "text_tokens": data.max_text_len,
            "sampler": self.sampler,
            "batching": "across requests"
            if self.sampler in _NOISELESS_SAMPLERS
            else "one request a call",
            "defaults": {
                "steps": int(s.steps),
                "guidance": {n: float(scales[n]) for n in sorted(chain)},
            },
        }

    def _specs(self, b: int) -> tuple:
        from imagen_jax import conditioning

        shapes = conditioning.batch_shapes(self.config.data, self.kind, b)
        batch = {
            name: jax.ShapeDtypeStruct(*shapes[name]) for name in self.kind.batch_fields
        }
        r = self.config.data.resolution
        key = jax.random.PRNGKey(0)
        scalar = functools.partial(jax.ShapeDtypeStruct, ())
        row = functools.partial(jax.ShapeDtypeStruct, (b,))
        return (
            batch,
            jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32),
            jax.ShapeDtypeStruct(key.shape, key.dtype),
            scalar(jnp.int32),
            row(jnp.float32),
            row(jnp.float32),
            row(jnp.int32),
        )

    def compile(self) -> None:
        """Compiles the sampler of every batch size and the noise, and runs a
        request through them so that no request compiles anything."""
        for b in self.batch_sizes:
            lowered = self._fn.lower(self.params, *self._specs(b))
            self._compiled[b] = lowered.compile()
        rows, r = max(self.batch_sizes), self.config.data.resolution
        key = jax.random.PRNGKey(0)
        self._noise = (
            _noise_fn(rows, r)
            .lower(jax.ShapeDtypeStruct(key.shape, key.dtype))
            .compile()
        )
        for b in self.batch_sizes:
            self.run([self.prepare({"text": "warm up", "steps": 1, "num_images": b})])

    def prepare(self, obj: Any) -> Job:
        """Checks a decoded request and turns it into a job.

        Raises:
          ValueError: anything wrong with the request, naming the field.
        """
        from imagen_jax import generate

        request = instructions.parse_request(obj, self.limits)
        _refuse_retrieval(request)
        if request.sampler not in (None, self.sampler):
            raise ValueError(
                f"request field 'sampler' is {request.sampler!r}; this server runs "
                f"{self.sampler!r}"
            )
        if "interleave" in request.guidance:
            raise ValueError(
                "guidance.interleave is not served: this server runs the guidance "
                "chain (launch.sample runs interleaved guidance)"
            )
        load_image = _image_loader(request, self.limits)
        batch = generate.request_batch(self.loaded, request, load_image, self.limits)
        s = generate.request_settings(self.loaded, request)
        n = request.num_images
        x_T, sample_rng = self._noise(_key(jax.random.PRNGKey, request.seed))
        inputs = {
            "batch": batch,
            "x_T": np.asarray(x_T)[:n],
            "rng": sample_rng,
            "s_text": np.full((n,), s["guidance_text"], np.float32),
            "s_image": np.full((n,), s["guidance_image"], np.float32),
            "oscillate": np.full((n,), s["oscillate"], np.int32),
        }
        key = ("steps", s["steps"])
        if self.sampler not in _NOISELESS_SAMPLERS:
            key = ("alone", object())
        settings = _public_settings(self.sampler, self.kind.guidance_chain, request, s)
        return Job(key, n, inputs, settings)

    def run(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """Draws the images of `jobs` (one key) in one call -> uint8 per job."""
        from imagen_jax import conditioning, sampling

        rows = sum(j.rows for j in jobs)
        b = _padded_size(self.batch_sizes, rows)
        shapes = conditioning.batch_shapes(self.config.data, self.kind, b)

        def stacked(get, dtype):
            return _pad(np.concatenate([np.asarray(get(j), dtype) for j in jobs]), b)

        batch = {
            name: stacked(lambda j, n=name: j.inputs["batch"][n], shapes[name][1])
            for name in self.kind.batch_fields
        }
        images = self._compiled[b](
            self.params,
            batch,
            stacked(lambda j: j.inputs["x_T"], np.float32),
            jobs[0].inputs["rng"],
            np.int32(jobs[0].settings["steps"]),
            stacked(lambda j: j.inputs["s_text"], np.float32),
            stacked(lambda j: j.inputs["s_image"], np.float32),
            stacked(lambda j: j.inputs["oscillate"], np.int32),
        )
        out = sampling.to_uint8(images)
        return np.split(out[:rows], np.cumsum([j.rows for j in jobs])[:-1])


class BundleModel:
    """A serving bundle (`launch.export`), run through its exported functions.

    A request runs alone, padded to the smallest exported batch size that
    holds its images: the exported function draws the noise of its batch from
    one key.
    """

    def __init__(self, path: str):
        self.bundle = serving_bundle.load(path)
        self.path = path
        m = self.bundle.manifest
        self.batch_sizes = self.bundle.batch_sizes
        self.limits = dataclasses.replace(
            LIMITS,
            steps=min(LIMITS.steps, m["max_steps"]),
            num_images=min(LIMITS.num_images, max(self.batch_sizes)),
        )

    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        chain = m["conditioning"]["guidance_chain"]
        d = m["defaults"]
        scales = {"text": d["guidance_text"], "image": d["guidance_image"]}
        return {
            "source": "bundle",
            "path": self.path,
            "step": m["checkpoint"]["step"],
            "conditioning": m["conditioning"]["name"],
            "instruction": self.bundle.instruction,
            "resolution": self.bundle.resolution,
            "max_context": m["max_context"],
            "text_tokens": m["text_len"],
            "sampler": m["sampler"],
            "batching": "one request a call",
            "defaults": {
                "steps": int(d["steps"]),
                "guidance": {n: float(scales[n]) for n in sorted(chain)},
            },
        }

    def compile(self) -> None:
        self.bundle.compile()
        for b in self.batch_sizes:
            self.run([self.prepare({"text": "warm up", "steps": 1, "num_images": b})])

    def prepare(self, obj: Any) -> Job:
        """Checks a decoded request and turns it into a job.

        Raises:
          ValueError: anything wrong with the request, naming the field.
        """
        m = self.bundle.manifest
        request = instructions.parse_request(obj, self.limits)
        _refuse_retrieval(request)
        if request.sampler not in (None, m["sampler"]):
            raise ValueError(
                f"request field 'sampler' is {request.sampler!r}; this bundle was "
                f"exported with {m['sampler']!r}"
            )
        instructions.parse_markers(request.text)
        context, image = request.context, request.image
        if self.bundle.instruction:
            instr = instructions.instruction_from_request(
                request, _image_loader(request, self.limits), self.limits
            )
            context = [dataclasses.asdict(item) for item in instr.context]
            image = instr.input_image
        b = _padded_size(self.batch_sizes, request.num_images)
        batch = self.bundle.batch(request.text, context, image, num_images=b)
        scalars = self.bundle.settings(request.steps, request.guidance)
        _key(self.bundle.key, request.seed)
        s = {
            "steps": scalars["num_steps"],
            "guidance_text": scalars["guidance_text"],
            "guidance_image": scalars["guidance_image"],
            "oscillate": scalars["oscillate"],
        }
        settings = _public_settings(
            m["sampler"], m["conditioning"]["guidance_chain"], request, s
        )
        inputs = {"batch": batch, "request": request}
        return Job(("alone", object()), request.num_images, inputs, settings)

    def run(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        (job,) = jobs
        request = job.inputs["request"]
        images = self.bundle.sample(
            job.inputs["batch"], request.seed, request.steps, request.guidance
        )
        return [serving_bundle.to_uint8(images)[: job.rows]]


def load_model(
    workdir: str | None = None,
    bundle: str | None = None,
    max_batch: int = 8,
    sampler: str | None = None,
) -> Model:
    """The model of a training run or of a serving bundle (exactly one).

    Raises:
      ValueError: neither or both given; a bundle with `sampler` (fixed at
        export).
    """
    if (workdir is None) == (bundle is None):
        raise ValueError("serve a --workdir or a --bundle (exactly one)")
    if bundle is not None:
        if sampler is not None:
            raise ValueError("a bundle's sampler is fixed at export; drop --sampler")
        return BundleModel(bundle)
    return WorkdirModel(workdir, max_batch, sampler)


class Closed(Exception):
    """The batcher takes no more jobs (the server is stopping)."""


class Batcher:
    """One worker thread running jobs, those of one key together.

    Args:
      run: runs jobs of one key in one call -> uint8 images per job.
      max_rows: most images a call draws.
      wait_s: how long the first job of a call waits for others.
      on_batch: called after each call with (jobs, seconds).
    """

    def __init__(
        self,
        run: Callable[[Sequence[Job]], list[np.ndarray]],
        max_rows: int,
        wait_s: float,
        on_batch: Callable[[Sequence[Job], float], None] = lambda jobs, s: None,
    ):
        self._run, self.max_rows, self.wait_s = run, max_rows, wait_s
        self._on_batch = on_batch
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self.batches = self.requests = self.images = 0
        self._worker = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def submit(self, job: Job) -> None:
        """Queues `job`; `job.done` is set when its images or error are in.

        Raises:
          Closed: the batcher is closing, or MAX_QUEUE jobs wait already.
        """
        with self._cond:
            if self._closing:
                raise Closed("the server is stopping")
            if len(self._pending) >= MAX_QUEUE:
                raise Closed(f"{MAX_QUEUE} requests are waiting; try again later")
            self._pending.append(job)
            self._cond.notify_all()

    def close(self) -> None:
        """Runs the jobs queued, then stops the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join()

    def _fitting(self) -> list[Job]:
        """The first job and the later ones of its key that fit in one call."""
        first = self._pending[0]
        chosen, rows = [], 0
        for job in self._pending:
            if job.key == first.key and rows + job.rows <= self.max_rows:
                chosen.append(job)
                rows += job.rows
        return chosen

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.wait_s
            while True:
                chosen = self._fitting()
                left = deadline - time.monotonic()
                full = sum(j.rows for j in chosen) >= self.max_rows
                if full or left <= 0 or self._closing:
                    break
                self._cond.wait(left)
            for job in chosen:
                self._pending.remove(job)
            return chosen

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            start = time.perf_counter()
            try:
                images = self._run(jobs)
            except Exception as e:  # a failed call fails its jobs, not the server
                logging.exception("a batch of %d requests failed", len(jobs))
                images = [None] * len(jobs)
                for job in jobs:
                    job.error = e
            seconds = time.perf_counter() - start
            self.batches += 1
            self.requests += len(jobs)
            self.images += sum(j.rows for j in jobs)
            batch = {
                "id": self.batches,
                "requests": len(jobs),
                "images": sum(j.rows for j in jobs),
            }
            for job, out in zip(jobs, images):
                job.images, job.batch = out, batch
                job.done.set()
            self._on_batch(jobs, seconds)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_ROUTES = {
    "/": {"GET": "_page"},
    "/health": {"GET": "_health"},
    "/generate": {"POST": "_generate"},
}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes requests to the `Server` (`self.server.app`); answers JSON."""

    server_version = "imagen_jax"
    # Seconds a client may take to send its request.
    timeout = 60

    # http.server calls do_<METHOD>.
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the console has one line per batch, not one per request."""

    def _dispatch(self, method: str) -> None:
        try:
            self._answer(method)
        except ConnectionError:
            pass  # the client left before its answer: nothing to do

    def _answer(self, method: str) -> None:
        path = urlsplit(self.path).path
        routes = _ROUTES.get(path)
        try:
            if routes is None:
                raise _HTTPError(
                    404,
                    f"no such path {path!r}; the API is POST /generate, GET /health "
                    "and the page GET /",
                )
            if method not in routes:
                raise _HTTPError(405, f"{path} takes {', '.join(routes)}, not {method}")
            getattr(self, routes[method])()
        except _HTTPError as e:
            extra = {"Allow": ", ".join(routes)} if e.status == 405 else {}
            self._send_json(e.status, {"error": str(e)}, extra)
        except ConnectionError:
            raise
        except Exception as e:  # a bug of the server's: answer, log, go on
            logging.exception("answering %s %s failed", method, path)
            self._send_json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def _send(self, status: int, body: bytes, content_type: str, extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, extra=None) -> None:
        body = json.dumps(obj).encode()
        self._send(status, body, "application/json", extra)

    def _page(self) -> None:
        self._send(200, self.server.app.page, "text/html; charset=utf-8")

    def _health(self) -> None:
        health = self.server.app.health()
        self._send_json(200 if health["status"] == "ok" else 503, health)

    def _body(self) -> Any:
        """The request body decoded as JSON; 411, 413 or 400 if it is not one."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise _HTTPError(411, "a request body needs a Content-Length header")
        try:
            length = int(length)
        except ValueError as e:
            raise _HTTPError(400, f"bad Content-Length {length!r}") from e
        limit = self.server.app.max_body
        if length > limit:
            self.close_connection = True  # the body is never read
            raise _HTTPError(
                413, f"the request body is {length} bytes; the limit is {limit}"
            )
        try:
            return json.loads(self.rfile.read(length))
        except TimeoutError as e:
            self.close_connection = True
            raise _HTTPError(
                408, f"the request body did not arrive in {self.timeout} s"
            ) from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _HTTPError(400, f"the request body is not JSON: {e}") from e

    def _generate(self) -> None:
        app = self.server.app
        start = time.perf_counter()
        if not app.ready.is_set():
            raise _HTTPError(503, "the model is compiling; try again in a minute")
        with app.tracking():
            obj = self._body()
            try:
                job = app.model.prepare(obj)
            except (ValueError, TypeError) as e:
                raise _HTTPError(400, str(e)) from e
            try:
                app.batcher.submit(job)
            except Closed as e:
                raise _HTTPError(503, str(e)) from e
            job.done.wait()
        if job.error is not None:
            raise _HTTPError(500, f"generation failed: {job.error}")
        self._send_json(
            200,
            {
                "images": [encode_png(image) for image in job.images],
                "settings": job.settings,
                "batch": job.batch,
                "seconds": round(time.perf_counter() - start, 3),
            },
        )


class _HTTPServer(http.server.ThreadingHTTPServer):
    # Handler threads are joined on close: the requests in flight finish.
    daemon_threads = False
    block_on_close = True


class Server:
    """A model behind HTTP; it takes requests once `compile` is done or when
    made `compiled`.

    Args:
      model: a `Model` (`load_model`).
      host: address to listen on.
      port: port (0: a free one; see `url`).
      batch_wait_ms: how long a request waits for others to share its call.
      compiled: the model is compiled already.
    """

    def __init__(
        self,
        model: Model,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_wait_ms: float = 20.0,
        compiled: bool = False,
    ):
        self.model = model
        self.compile_seconds = 0.0
        self.ready = threading.Event()
        if compiled:
            self.ready.set()
        info = model.info()
        self.max_body = max_body_bytes(info["max_context"], model.limits)
        self.page = resources.files("imagen_jax").joinpath(PAGE).read_bytes()
        self.batcher = Batcher(
            model.run, max(model.batch_sizes), batch_wait_ms / 1e3, _log_batch
        )
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port}: {e}") from e
        self.httpd.app = self
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Server:
        """Serves from a background thread; returns self."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="http", daemon=True
        )
        self._thread.start()
        return self

    def compile(self) -> Server:
        """Compiles the model (/ and /health answer meanwhile); returns self."""
        start = time.perf_counter()
        self.model.compile()
        self.compile_seconds = time.perf_counter() - start
        self.ready.set()
        return self

    def close(self) -> None:
        """Stops accepting, finishes the requests in flight, stops the worker."""
        self._stopping = True
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.close()

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Counts a generation request in flight while in the context."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def health(self) -> dict[str, Any]:
        limits = dataclasses.asdict(self.model.limits)
        return {
            "status": "stopping"
            if self._stopping
            else ("ok" if self.ready.is_set() else "compiling"),
            "model": self.model.info(),
            "batch_sizes": list(self.model.batch_sizes),
            "batch_wait_ms": self.batcher.wait_s * 1e3,
            "compile_seconds": round(self.compile_seconds, 1),
            "limits": dict(limits, body_bytes=self.max_body),
            "batches_served": self.batcher.batches,
            "requests_served": self.batcher.requests,
            "images_served": self.batcher.images,
            "queue_depth": self.batcher.queue_depth,
            "in_flight": self._in_flight,
            # CPU seconds of this process, all threads: what a load costs
            # whatever else the machine runs.
            "cpu_seconds": round(time.process_time(), 3),
        }


def _log_batch(jobs: Sequence[Job], seconds: float) -> None:
    rows = sum(j.rows for j in jobs)
    failed = sum(j.error is not None for j in jobs)
    logging.info(
        "batch %d: %d request%s, %d image%s, %d steps, %.2f s%s",
        jobs[0].batch["id"],
        len(jobs),
        "" if len(jobs) == 1 else "s",
        rows,
        "" if rows == 1 else "s",
        jobs[0].settings["steps"],
        seconds,
        f", {failed} failed" if failed else "",
    )


def start(model: Model, host: str, port: int, batch_wait_ms: float) -> Server:
    """Serves `model` from background threads, compiled first (meanwhile the
    page shows, /health answers 503 "compiling" and /generate 503)."""
    server = Server(model, host, port, batch_wait_ms).start()
    try:
        return server.compile()
    except BaseException:
        server.close()
        raise


def serve(
    *,
    workdir: str | None = None,
    bundle: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    batch_wait_ms: float = 20.0,
    sampler: str | None = None,
) -> None:
    """Serves a run or a bundle until SIGTERM or SIGINT, then stops
    gracefully: no new connections, the requests in flight answered."""
    model = load_model(workdir, bundle, max_batch, sampler)
    server = start(model, host, port, batch_wait_ms)
    info = model.info()
    logging.info(
        "serving %s (step %d, %s, %d px, %s, batching %s) at %s/ - compiled "
        "batch sizes %s in %.1f s",
        info["path"],
        info["step"],
        info["conditioning"],
        info["resolution"],
        info["sampler"],
        info["batching"],
        server.url,
        list(model.batch_sizes),
        server.compile_seconds,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    logging.info(
        "stopping: finishing %d requests in flight", server.health()["in_flight"]
    )
    server.close()
    logging.info(
        "stopped after %d batches (%d requests, %d images)",
        server.batcher.batches,
        server.batcher.requests,
        server.batcher.images,
    )
