"""Retrieval at inference: a text -> its nearest database items as context.

A `Retriever` reads what `launch.build_index` left in a retrieval directory
(the embedder, the index and `build.json`, which names the dataset whose
`database` split the index holds). A text finds database items in one of two
ways (`TEXT_SEARCH`):

- "lexical": its words against the database captions, each shared word
  weighted by its inverse document frequency (Re-Imagen's BM25 text-to-text
  retrieval, without length normalisation). A rare name ("a vorp") finds the
  items captioned with it, though no encoder has seen the word;
- "embedding": the embedder's text tower against the database's image
  embeddings (the index), for texts in the words the embedder was trained on.

The items found become context exactly as stage 1 trained on them
(`mining.neighbour_instruction`).
"""

from __future__ import annotations

import collections
import json
import math
import os
import re

import numpy as np

from imagen_jax.instructions import MultiModalInstruction
from imagen_jax.retrieval import embedder as embedder_lib
from imagen_jax.retrieval import index as index_lib
from imagen_jax.retrieval import mining

TEXT_SEARCH = ("lexical", "embedding")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


class LexicalIndex:
    """Captions searched by their shared words, weighted by rarity (IDF)."""

    def __init__(self, captions: list[str]):
        postings: dict[str, list[int]] = collections.defaultdict(list)
        for i, caption in enumerate(captions):
            for word in _words(caption):
                postings[word].append(i)
        self._size = len(captions)
        self._postings = {w: np.array(ids) for w, ids in postings.items()}
        self._idf = {
            w: math.log(self._size / len(ids)) for w, ids in self._postings.items()
        }

    def search(self, texts: list[str], k: int) -> np.ndarray:
        """int64 [N, k] caption ids, best first (ties: the lower id)."""
        out = np.full((len(texts), k), -1, np.int64)
        for row, text in enumerate(texts):
            scores = np.zeros(self._size)
            for word in _words(text) & self._postings.keys():
                scores[self._postings[word]] += self._idf[word]
            found = np.flatnonzero(scores > 0)
            best = found[np.argsort(-scores[found], kind="stable")][:k]
            out[row, : len(best)] = best
        return out


class Retriever:
    """Nearest database items of texts (embedder + index + database records)."""

    def __init__(self, directory: str, text_search: str = "lexical"):
        """Loads the retrieval directory `directory` (`build.retrieval_dir`).

        Raises:
          ValueError: it holds no finished build (run `launch.build_index`),
            or `text_search` is not one of `TEXT_SEARCH`.
        """
        if text_search not in TEXT_SEARCH:
            raise ValueError(
                f"text_search={text_search!r}; expected one of {TEXT_SEARCH}"
            )
        self.text_search = text_search
        from imagen_jax.data.tfds import shapes_world as shapes_world_tfds

        path = os.path.join(directory, "build.json")
        if not os.path.exists(path):
            raise ValueError(
                f"{path} not found: build the index first with "
                "`python -m launch.build_index --config ... --workdir ...`"
            )
        with open(path) as f:
            built = json.load(f)
        self.embedder = embedder_lib.load_embedder(os.path.join(directory, "embedder"))
        self.index = index_lib.load_index(os.path.join(directory, "index"))
        self.database = shapes_world_tfds.load_source(
            built["data_dir"], "database", built["resolution"], built["variant"]
        )
        self.names = shapes_world_tfds.load_columns(
            built["data_dir"], "database", built["resolution"], built["variant"]
        )["name"]
        self.lexical = None
        if text_search == "lexical":
            captions = shapes_world_tfds.load_columns(
                built["data_dir"],
                "database",
                built["resolution"],
                built["variant"],
                keys=("caption",),
            )["caption"]
            self.lexical = LexicalIndex([str(c) for c in captions])
        if len(self.database) != len(self.index):
            raise ValueError(
                f"the index in {directory} holds {len(self.index)} vectors, the "
                f"database {len(self.database)} records: build the index again"
            )

    def search(self, texts: list[str], k: int) -> np.ndarray:
        """int64 [N, k] database ids nearest each text, best first (-1: none)."""
        if self.lexical is not None:
            return self.lexical.search(list(texts), k)
        ids, _ = self.index.search(self.embedder.embed_texts(list(texts)), k)
        return ids

    def instruction(self, text: str, ids: np.ndarray) -> MultiModalInstruction:
        """`text` with database items `ids` as context, as stage 1 trained."""
        found = [self.database[int(i)] for i in ids if i >= 0]
        return mining.neighbour_instruction(
            text, [(r["image"], mining.as_text(r["caption"])) for r in found]
        )
