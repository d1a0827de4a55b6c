"""Loads a serving bundle (`launch.export`) and samples from it with jax alone.

This module imports only the standard library, numpy and jax (and
`sentencepiece` for a bundle with a sentencepiece tokenizer): a serving
process needs neither flax nor the training code. `launch.export` copies it
into every bundle as `loader.py`, so a bundle is usable without this package:

    import sys
    sys.path.insert(0, "BUNDLE_DIR")
    import loader

    bundle = loader.load("BUNDLE_DIR")
    images = bundle.generate("a red circle", num_images=4, seed=0, steps=20)
    # uint8 [4, R, R, 3]: the images `launch.sample` draws for that request

A bundle is a directory:

    manifest.json          format version, model config, sampler, input
                           signature, defaults, sha256 of every file
    params.npz             parameters by name (bfloat16 stored as uint16 bits)
    tokenizer/             tokenizer.json (+ spiece.model for sentencepiece)
    sampler_b{B}.jaxexport the sampler of batch size B, `jax.export`-serialized
    loader.py              a copy of this module

The exported function is `fn(params, inputs) -> images` with `params` the list
of `manifest["params"]["names"]` arrays and `inputs` the dict of
`manifest["inputs"]`: the request's fixed-shape batch fields (DESIGN §3), the
PRNG key, the number of steps and the guidance scales, all runtime values.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS_FILE = "params.npz"
TOKENIZER_DIR = "tokenizer"
LOADER_FILE = "loader.py"

# Request "guidance" keys besides the model's guidance chain, as in
# `launch.sample`: "oscillate" (> 0: the scales on even steps only) and
# "interleave" (eta of Re-Imagen's interleaved rule).
_GUIDANCE_OPTIONS = ("oscillate", "interleave")
_MARKER = re.compile(r"\[ref#[0-9]+\]")
_CONTEXT_FIELDS = ("marker", "text", "image")


class BundleError(ValueError):
    """A bundle that is missing, damaged or of another format version."""


def function_file(batch_size: int) -> str:
    """The file of the exported sampler of one batch size."""
    return f"sampler_b{batch_size}.jaxexport"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_uint8(images: Any) -> np.ndarray:
    """[-1, 1] float images -> uint8 (as `launch.sample` writes them)."""
    x = np.asarray(images, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


class _Tokenizer:
    """Text -> ids with T5 conventions (pad, eos) and one id per extra token."""

    def __init__(self, spec: Mapping[str, Any]):
        self.pad_id = int(spec["pad_id"])
        self.eos_id = int(spec["eos_id"])
        self.extra_tokens = tuple(spec["extra_tokens"])

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_row(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [max_len], mask bool [max_len]): text, EOS, padding."""
        tokens = self.encode(text)[: max_len - 1] + [self.eos_id]
        ids = np.full((max_len,), self.pad_id, np.int32)
        ids[: len(tokens)] = tokens
        return ids, np.arange(max_len) < len(tokens)


class _ByteTokenizer(_Tokenizer):
    """UTF-8 bytes b -> b + 3; extra tokens take the ids after the 259 bytes."""

    _OFFSET = 3
    _NUM_BYTE_IDS = 259

    def __init__(self, spec: Mapping[str, Any]):
        super().__init__(spec)
        ordered = sorted(self.extra_tokens, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(t) for t in ordered))

    def _bytes(self, text: str) -> list[int]:
        return [b + self._OFFSET for b in text.encode("utf-8")]

    def encode(self, text: str) -> list[int]:
        if not self.extra_tokens:
            return self._bytes(text)
        ids: list[int] = []
        start = 0
        for match in self._pattern.finditer(text):
            ids += self._bytes(text[start : match.start()])
            ids.append(self._NUM_BYTE_IDS + self.extra_tokens.index(match.group()))
            start = match.end()
        return ids + self._bytes(text[start:])


class _SentencePieceTokenizer(_Tokenizer):
    """The bundle's sentencepiece model, extra tokens already appended."""

    def __init__(self, spec: Mapping[str, Any], model_file: str):
        super().__init__(spec)
        import sentencepiece  # The tokenizer's own dependency, only here.

        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))


def _tokenizer(path: str, manifest: Mapping[str, Any]) -> _Tokenizer:
    spec = manifest["tokenizer"]
    if spec["type"] == "byte":
        return _ByteTokenizer(spec)
    if spec["type"] == "sentencepiece":
        return _SentencePieceTokenizer(
            spec, os.path.join(path, TOKENIZER_DIR, spec["model_file"])
        )
    raise BundleError(f"bundle {path} has an unknown tokenizer type {spec['type']!r}")


def _read_manifest(path: str) -> dict[str, Any]:
    file = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise BundleError(f"serving bundle {path!r} does not exist")
    if not os.path.exists(file):
        raise BundleError(
            f"{path!r} is not a serving bundle: it has no {MANIFEST} "
            "(write one with launch.export)"
        )
    try:
        with open(file) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"bundle manifest {file} is damaged: {e}") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {path!r} has format version {version!r}; this loader reads "
            f"version {FORMAT_VERSION} (export the checkpoint again)"
        )
    return manifest


def _check_files(path: str, manifest: Mapping[str, Any]) -> None:
    """Every file of the manifest exists and has the checksum written at export."""
    for name, digest in manifest["files"].items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise BundleError(f"bundle {path!r} lacks its file {name}")
        if sha256(file) != digest:
            raise BundleError(
                f"bundle file {file} is damaged: its sha256 differs from the manifest's"
            )


def _params(path: str, manifest: Mapping[str, Any]) -> list[jax.Array]:
    """The parameters in the exported function's order, on the device."""
    spec = manifest["params"]
    try:
        with np.load(os.path.join(path, spec["file"])) as npz:
            arrays = [npz[name] for name in spec["names"]]
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"bundle {path!r} has unreadable parameters: {e}") from e
    if spec["dtype"] == "bfloat16":
        arrays = [a.view(jnp.bfloat16) for a in arrays]
    return [jnp.asarray(a) for a in arrays]


def _functions(path: str, manifest: Mapping[str, Any]) -> dict[int, Any]:
    """Batch size -> its deserialized `jax.export.Exported`."""
    out = {}
    for batch, spec in manifest["functions"].items():
        with open(os.path.join(path, spec["file"]), "rb") as f:
            blob = f.read()
        try:
            out[int(batch)] = jax.export.deserialize(bytearray(blob))
        except Exception as e:  # the flatbuffer reader raises many kinds
            raise BundleError(
                f"bundle file {spec['file']} is not a jax.export function: {e}"
            ) from e
    return out


class Bundle:
    """A loaded bundle: tokenizes requests and runs the exported sampler.

    Attributes:
      path: the bundle directory.
      manifest: its manifest.json.
      batch_sizes: the batch sizes (`num_images`) it has a function for.
      resolution: side of the images it draws and takes.
    """

    def __init__(
        self,
        path: str,
        manifest: dict[str, Any],
        params: list[jax.Array],
        tokenizer: _Tokenizer,
        functions: dict[int, Any],
    ):
        self.path = path
        self.manifest = manifest
        self.params = params
        self.tokenizer = tokenizer
        self._functions = functions
        self._compiled: dict[int, Any] = {}
        self.batch_sizes = tuple(sorted(functions))
        self.resolution = int(manifest["resolution"])

    @property
    def instruction(self) -> bool:
        """The model takes context items and an input image."""
        return bool(self.manifest["conditioning"]["instruction"])

    def compile(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Compiles the functions of `batch_sizes` (all by default) now, once:
        steps and guidance are inputs, so no request compiles again."""
        for b in batch_sizes or self.batch_sizes:
            if b not in self._compiled:
                lowered = jax.jit(self._functions[b].call).lower(
                    self.params, self._input_specs(b)
                )
                self._compiled[b] = lowered.compile()

    def _input_specs(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {
            name: jax.ShapeDtypeStruct(
                tuple(batch_size if d == "B" else d for d in spec["shape"]),
                jnp.dtype(spec["dtype"]),
            )
            for name, spec in self.manifest["inputs"].items()
        }

    def batch(
        self,
        text: str,
        context: Sequence[Mapping[str, Any]] = (),
        image: np.ndarray | None = None,
        num_images: int = 1,
    ) -> dict[str, np.ndarray]:
        """The `num_images` copies of a request as the model's batch fields.

        Args:
          text: the instruction text; `[ref#k]` markers name context items.
          context: items `{"marker", "text", "image"}` with uint8 [R, R, 3]
            images (instruction models only).
          image: optional uint8 [R, R, 3] input image (instruction models).
          num_images: copies (one of `batch_sizes`).

        Raises:
          ValueError: a field the model does not take or is too long for,
            markers and context items that do not match, a wrong image shape.
        """
        m = self.manifest
        self._check_batch_size(num_images)
        self._check_markers(text, context, image)
        fields = {}
        fields["text_tokens"], fields["text_mask"] = self._row(
            "text", text, m["text_len"]
        )
        if self.instruction:
            fields.update(self._instruction_fields(context, image))
        return {k: np.stack([v] * num_images) for k, v in fields.items()}

    def _check_batch_size(self, b: Any) -> None:
        if b not in self._functions:
            raise ValueError(
                f"this bundle has samplers for num_images in {list(self.batch_sizes)}"
                f", not {b!r} (export with --batch_sizes to add one)"
            )

    def _row(self, field: str, text: str, max_len: int):
        if not isinstance(text, str):
            raise ValueError(f"request field {field!r} must be a string")
        length = len(self.tokenizer.encode(text)) + 1
        if length > max_len:
            raise ValueError(
                f"request field {field!r} is {length} tokens (EOS included); the "
                f"limit is {max_len}"
            )
        return self.tokenizer.encode_row(text, max_len)

    def _check_markers(self, text, context, image) -> None:
        if not isinstance(text, str):
            raise ValueError(f"request field 'text' must be a string, got {text!r}")
        named = set(_MARKER.findall(text))
        if not self.instruction:
            if context or image is not None or named:
                raise ValueError(
                    "this bundle holds a text-to-image model: it takes no "
                    "'context' items, input 'image' nor [ref#k] markers"
                )
            return
        for i, item in enumerate(context):
            if not isinstance(item, Mapping) or set(item) != set(_CONTEXT_FIELDS):
                raise ValueError(
                    f"request context item {i} must have exactly the fields "
                    f"{list(_CONTEXT_FIELDS)}"
                )
            if not isinstance(item["text"], str):
                raise ValueError(f"request context item {i} 'text' must be a string")
        given = [item["marker"] for item in context]
        for marker in given:
            if marker not in self.tokenizer.extra_tokens:
                raise ValueError(f"unknown context marker {marker!r}")
        if named - set(given):
            raise ValueError(
                f"marker {sorted(named - set(given))[0]} in the text {text!r} has "
                "no context item"
            )
        if set(given) - named:
            raise ValueError(
                f"context marker {sorted(set(given) - named)[0]} is never named in "
                f"the text {text!r}"
            )
        if len(context) > self.manifest["max_context"]:
            raise ValueError(
                f"request field 'context' has {len(context)} items; the limit is "
                f"{self.manifest['max_context']}"
            )

    def _image(self, field: str, image: Any) -> np.ndarray:
        r = self.resolution
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != (r, r, 3):
            raise ValueError(
                f"request field {field!r} must be uint8 of shape {(r, r, 3)}, got "
                f"{image.dtype} of shape {image.shape}"
            )
        return image

    def _instruction_fields(self, context, image) -> dict[str, np.ndarray]:
        """As `instructions.to_arrays`: items padded to K, "<marker> <text>"."""
        k, r = self.manifest["max_context"], self.resolution
        lc = self.manifest["ctx_text_len"]
        out = {
            "ctx_images": np.zeros((k, r, r, 3), np.uint8),
            "ctx_tokens": np.full((k, lc), self.tokenizer.pad_id, np.int32),
            "ctx_text_mask": np.zeros((k, lc), np.bool_),
            "ctx_mask": np.arange(k) < len(context),
            "cond_image": np.zeros((r, r, 3), np.uint8),
            "cond_image_mask": np.bool_(image is not None),
        }
        for i, item in enumerate(context):
            out["ctx_images"][i] = self._image(f"context[{i}].image", item["image"])
            out["ctx_tokens"][i], out["ctx_text_mask"][i] = self._row(
                f"context[{i}].text", f"{item['marker']} {item['text']}", lc
            )
        if image is not None:
            out["cond_image"] = self._image("image", image)
        return out

    def settings(
        self, steps: int | None, guidance: Mapping[str, float] | None
    ) -> dict[str, np.ndarray]:
        """Steps and guidance as the function's scalar inputs, defaults filled
        in as `launch.sample` fills them."""
        m, g = self.manifest, dict(guidance or {})
        defaults = m["defaults"]
        allowed = set(m["conditioning"]["guidance_chain"]) | {"oscillate"}
        if m["rule"] == "interleaved":
            allowed = (allowed - {"image"}) | {"interleave"}
        unknown = sorted(set(g) - allowed)
        if unknown:
            raise ValueError(
                f"guidance for {unknown} is not supported by this bundle (rule "
                f"{m['rule']!r}); known: {sorted(allowed)}"
            )
        steps = defaults["steps"] if steps is None else steps
        if not isinstance(steps, int) or not 1 <= steps <= m["max_steps"]:
            raise ValueError(
                f"request field 'steps' is {steps!r}; expected an integer in "
                f"1..{m['max_steps']} (the bundle's max_steps)"
            )
        out = {
            "num_steps": np.int32(steps),
            "guidance_text": np.float32(g.get("text", defaults["guidance_text"])),
            "guidance_image": np.float32(g.get("image", defaults["guidance_image"])),
            "oscillate": np.int32(g.get("oscillate", defaults["oscillate"])),
        }
        if m["rule"] == "interleaved":
            out["eta"] = np.float32(g.get("interleave", 0.5))
        return out

    def key(self, seed: int) -> np.ndarray:
        """The PRNG key data of `seed`, as `launch.sample` makes it."""
        impl = self.manifest["prng_impl"]
        return np.asarray(jax.random.key_data(jax.random.key(seed, impl=impl)))

    def sample(
        self,
        batch: Mapping[str, np.ndarray],
        seed: int = 0,
        steps: int | None = None,
        guidance: Mapping[str, float] | None = None,
        sampler: str | None = None,
    ) -> np.ndarray:
        """Runs the exported sampler on a `batch` -> float32 [B, R, R, 3] in
        [-1, 1]. `steps` and `guidance` ({"text", "image", "oscillate",
        "interleave"}) default to the exported run's `sample` settings;
        `sampler`, if given, must be the bundle's.

        Raises:
          ValueError: no function for this batch size; steps beyond
            `max_steps`; guidance or a sampler the bundle does not take.
        """
        if sampler is not None and sampler != self.manifest["sampler"]:
            raise ValueError(
                f"request field 'sampler' is {sampler!r}; this bundle was exported "
                f"with {self.manifest['sampler']!r}"
            )
        b = len(batch["text_tokens"])
        self._check_batch_size(b)
        given = dict(batch, **self.settings(steps, guidance), rng=self.key(seed))
        inputs = {}
        for name, spec in self.manifest["inputs"].items():
            if name not in given:
                raise ValueError(f"the batch lacks the field {name!r}")
            inputs[name] = np.asarray(given[name], spec["dtype"])
        self.compile([b])
        return np.asarray(self._compiled[b](self.params, inputs))

    def generate(
        self,
        text: str,
        context: Sequence[Mapping[str, Any]] = (),
        image: np.ndarray | None = None,
        num_images: int = 1,
        seed: int = 0,
        steps: int | None = None,
        guidance: Mapping[str, float] | None = None,
        sampler: str | None = None,
    ) -> np.ndarray:
        """A request (DESIGN §7, images as arrays) -> uint8 [num_images, R, R, 3]."""
        batch = self.batch(text, context, image, num_images)
        return to_uint8(self.sample(batch, seed, steps, guidance, sampler))


def load(path: str, verify: bool = True) -> Bundle:
    """Loads the bundle at `path`.

    Args:
      path: the bundle directory (`launch.export --out`).
      verify: check every file against the manifest's sha256 first.

    Raises:
      BundleError: no bundle there, a missing or damaged file, another
        format version.
    """
    path = os.fspath(path)
    manifest = _read_manifest(path)
    if verify:
        _check_files(path, manifest)
    return Bundle(
        path,
        manifest,
        _params(path, manifest),
        _tokenizer(path, manifest),
        _functions(path, manifest),
    )
