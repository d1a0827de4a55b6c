"""Retrieval at inference: a text -> its nearest database items as context.

A `Retriever` reads what `launch.build_index` left in a retrieval directory
(the embedder, the index and `build.json`, which names the dataset whose
`database` split the index holds). The text is embedded by the embedder's
text tower and searched against the database's image embeddings; the items
found become context exactly as stage 1 trained on them
(`mining.neighbour_instruction`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from imagen_jax.instructions import MultiModalInstruction
from imagen_jax.retrieval import embedder as embedder_lib
from imagen_jax.retrieval import index as index_lib
from imagen_jax.retrieval import mining


def _text(x: bytes | str) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class Retriever:
    """Nearest database items of texts (embedder + index + database records)."""

    def __init__(self, directory: str):
        """Loads the retrieval directory `directory` (`build.retrieval_dir`).

        Raises:
          ValueError: it holds no finished build (run `launch.build_index`).
        """
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
        if len(self.database) != len(self.index):
            raise ValueError(
                f"the index in {directory} holds {len(self.index)} vectors, the "
                f"database {len(self.database)} records: build the index again"
            )

    def search(self, texts: list[str], k: int) -> np.ndarray:
        """int64 [N, k] database ids nearest each text, best first (-1: none)."""
        ids, _ = self.index.search(self.embedder.embed_texts(list(texts)), k)
        return ids

    def instruction(self, text: str, ids: np.ndarray) -> MultiModalInstruction:
        """`text` with database items `ids` as context, as stage 1 trained."""
        found = [self.database[int(i)] for i in ids if i >= 0]
        return mining.neighbour_instruction(
            text, [(r["image"], _text(r["caption"])) for r in found]
        )
