"""Tokenizers for the T5 text encoder: byte-level (default) and sentencepiece.

Both follow the T5 id convention (pad 0, eos 1) and support *extra tokens*:
strings such as `[ref#1]` that always map to one dedicated id placed after the
base vocabulary, so each instruction marker gets its own embedding.

    tok = get_tokenizer("byte", extra_tokens=["[ref#1]", "[ref#2]"])
    ids, mask = tok.encode_batch(["draw [ref#1]"], max_len=32)  # [1, 32] each

sentencepiece: `SentencePieceTokenizer(path, extra_tokens)` loads a trained
`.model` file (e.g. the `spiece.model` of t5-v1_1: 32000 pieces, pad 0, eos 1,
unk 2) and appends the extra tokens to it as user-defined pieces. A model of
one's own can be trained offline with

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix="/dir/spm", vocab_size=8000,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1)

which writes `/dir/spm.model`. The `sentencepiece` package is imported only
when a `SentencePieceTokenizer` is built.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from imagen_jax.instructions import MARKERS

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


def _extra_token_pattern(extra_tokens: Sequence[str]) -> re.Pattern[str] | None:
    """A regex matching any extra token, longest first (so `[a]b` beats `[a]`)."""
    if not extra_tokens:
        return None
    ordered = sorted(extra_tokens, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in ordered))


def _validate_extra_tokens(extra_tokens: Sequence[str]) -> tuple[str, ...]:
    """Returns the extra tokens as a tuple; rejects non-strings, empties, duplicates."""
    if isinstance(extra_tokens, str):
        raise ValueError(
            f"extra_tokens must be a sequence of strings, not the str {extra_tokens!r}"
        )
    tokens = tuple(extra_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"extra tokens must be non-empty strings, got {token!r}")
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
    if duplicates:
        raise ValueError(f"duplicate extra tokens: {duplicates}")
    return tokens


class Tokenizer(abc.ABC):
    """Text <-> ids with T5 conventions (pad 0, eos 1) and extra-token ids.

    Subclasses implement `encode`, `_decode_ids` and `vocab_size`; padding,
    EOS and truncation are shared.
    """

    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    extra_tokens: tuple[str, ...] = ()

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Total number of ids, extra tokens included."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text` without EOS; each extra-token occurrence is one id."""

    @abc.abstractmethod
    def _decode_ids(self, ids: list[int]) -> str:
        """Text of ids that hold no EOS and no padding."""

    def extra_token_id(self, token: str) -> int:
        """The single id of an extra token (they follow the base vocabulary)."""
        if token not in self.extra_tokens:
            raise ValueError(
                f"{token!r} is not an extra token; known: {self.extra_tokens}"
            )
        return self.vocab_size - len(self.extra_tokens) + self.extra_tokens.index(token)

    def encode_batch(
        self, texts: Sequence[str], max_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes, appends EOS, truncates (keeping EOS last) and pads with `pad_id`.

        Args:
          texts: The strings to encode.
          max_len: Length of every row, EOS included.

        Returns:
          (ids int32 [B, max_len], mask bool [B, max_len]); mask is True on the
          text and EOS positions.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if isinstance(texts, str):
            raise ValueError(
                f"encode_batch expects a sequence of strings, got {texts!r}"
            )
        ids = np.full((len(texts), max_len), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(texts), max_len), dtype=np.bool_)
        for row, text in enumerate(texts):
            tokens = self.encode(text)[: max_len - 1] + [self.eos_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = True
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, stopping at the first EOS and skipping padding."""
        kept: list[int] = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
            if i != self.pad_id:
                kept.append(i)
        return self._decode_ids(kept)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids, ByT5 convention: pad 0, eos 1, unk 2, byte b -> b + 3.

    Needs no vocabulary file. Extra tokens take the ids 259, 260, ..., so
    `vocab_size` is 259 + len(extra_tokens).
    """

    _OFFSET = 3
    _NUM_BYTE_IDS = 256 + _OFFSET

    def __init__(self, extra_tokens: Sequence[str] = ()):
        self.extra_tokens = _validate_extra_tokens(extra_tokens)
        self._pattern = _extra_token_pattern(self.extra_tokens)

    @property
    def vocab_size(self) -> int:
        return self._NUM_BYTE_IDS + len(self.extra_tokens)

    def _encode_bytes(self, text: str) -> list[int]:
        return [b + self._OFFSET for b in text.encode("utf-8")]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if self._pattern is None:
            return self._encode_bytes(text)
        ids: list[int] = []
        start = 0
        for match in self._pattern.finditer(text):
            ids += self._encode_bytes(text[start : match.start()])
            ids.append(self.extra_token_id(match.group()))
            start = match.end()
        return ids + self._encode_bytes(text[start:])

    def _decode_ids(self, ids: list[int]) -> str:
        pieces: list[str] = []
        data = bytearray()
        for i in ids:
            if i >= self._NUM_BYTE_IDS:
                pieces.append(self._bytes_to_text(data))
                pieces.append(self.extra_tokens[i - self._NUM_BYTE_IDS])
                data = bytearray()
            elif i >= self._OFFSET:  # Skips unk, which stands for no byte.
                data.append(i - self._OFFSET)
        pieces.append(self._bytes_to_text(data))
        return "".join(pieces)

    @staticmethod
    def _bytes_to_text(data: bytearray) -> str:
        # Truncation may cut a multi-byte character; show it rather than fail.
        return bytes(data).decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
    """A trained sentencepiece model (T5 convention: pad 0, eos 1).

    Extra tokens are appended to the model as user-defined pieces, so they take
    the ids `piece_size`, `piece_size + 1`, ... and are never split; spacing
    round-trips (the space before a marker becomes its own `▁` piece).
    """

    def __init__(self, model_path: str, extra_tokens: Sequence[str] = ()):
        import sentencepiece  # Optional dependency, only needed here.

        self.model_path = str(model_path)
        self.extra_tokens = _validate_extra_tokens(extra_tokens)
        if not os.path.exists(self.model_path):
            raise FileNotFoundError(
                f"sentencepiece model {self.model_path} not found (a task "
                "world's is built by `python -m launch.build_data --dataset "
                "vocabulary`)"
            )
        with open(self.model_path, "rb") as f:
            proto = _add_user_pieces(f.read(), self.extra_tokens, self.model_path)
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        if (self._sp.pad_id(), self._sp.eos_id()) != (PAD_ID, EOS_ID):
            raise ValueError(
                f"sentencepiece model {self.model_path} has pad id {self._sp.pad_id()}"
                f" and eos id {self._sp.eos_id()}; expected pad {PAD_ID}, eos {EOS_ID}"
            )

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return list(self._sp.encode(text, out_type=int))

    def _decode_ids(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def model_proto(self) -> bytes:
        """The serialized model with the extra tokens appended (what a
        `sentencepiece.SentencePieceProcessor` of a serving bundle loads)."""
        return self._sp.serialized_model_proto()


def _add_user_pieces(model: bytes, pieces: Sequence[str], model_path: str) -> bytes:
    """Returns the serialized sentencepiece model with `pieces` appended."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    existing = {p.piece for p in proto.pieces}
    clashes = sorted(set(pieces) & existing)
    if clashes:
        raise ValueError(f"extra tokens {clashes} are already pieces of {model_path}")
    for piece in pieces:
        new = proto.pieces.add()
        new.piece = piece
        new.score = 0.0
        new.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    return proto.SerializeToString()


_TOKENIZERS: dict[str, Callable[..., Tokenizer]] = {
    "byte": ByteTokenizer,
    "sentencepiece": SentencePieceTokenizer,
}


def get_tokenizer_names() -> tuple[str, ...]:
    """Names accepted by `get_tokenizer`."""
    return tuple(sorted(_TOKENIZERS))


def get_tokenizer(name: str, **kwargs) -> Tokenizer:
    """Builds a tokenizer by registry name ("byte" or "sentencepiece").

    Args:
      name: Registry name.
      **kwargs: Constructor arguments, e.g. `extra_tokens`, `model_path`.

    Raises:
      ValueError: If `name` is unknown.
    """
    if name not in _TOKENIZERS:
        raise ValueError(f"Unknown tokenizer {name!r}; known: {sorted(_TOKENIZERS)}")
    return _TOKENIZERS[name](**kwargs)


def make_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    """The config's tokenizer; every `[ref#k]` marker is one special token.

    Text-to-image models get the markers too, so that their embedding table
    has the shape an instruction-tuned model initialised from them needs.
    """
    kwargs = {"model_path": config.text.vocab_path} if config.text.vocab_path else {}
    return get_tokenizer(config.text.tokenizer, extra_tokens=MARKERS, **kwargs)
