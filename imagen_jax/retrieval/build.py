"""Stage 1's neighbour table, end to end (`launch.build_index`).

    embedder (trained on the database's image-caption pairs, or reloaded)
      -> embeddings of the database and of the training targets (.npy)
      -> ScaNN index of the database (saved, reloaded on a second run)
      -> top-`num_candidates` of every target -> mined neighbours
      -> <dataset dir>/neighbours/train.npy (+ .json), read by the stage-1
         pipeline; figures in <retrieval dir>/build.json.

Everything lands in the retrieval directory (`retrieval_dir`): the embedder,
the embeddings and the index, which inference reuses for `retrieve: k`.
Precomputed embeddings from any model (`retrieval.embeddings`) replace the
embedder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from imagen_jax.retrieval import embedder as embedder_lib
from imagen_jax.retrieval import index as index_lib
from imagen_jax.retrieval import mining


def default_config() -> ml_collections.ConfigDict:
    """The `retrieval` group of a stage-1 config."""
    c = ml_collections.ConfigDict()
    # Where the embedder, embeddings and index live; empty = <workdir>/retrieval.
    c.dir = ""
    # Precomputed embeddings from any model: a directory holding database.npy
    # and train.npy ([N, D] rows in the dataset's order); empty = the
    # in-project embedder, trained here unless already in `dir`.
    c.embeddings = ""
    c.embedder = embedder_lib.default_config()
    # The texts the embedder learns to match images with: "dataset" (the
    # records' captions) or, on ShapesWorld, a re-description of each
    # record's scene (`embedder.CAPTIONS`): "subject" names only the object's
    # identity, so images embed by what they show rather than where.
    c.embedder_captions = "dataset"
    c.index = index_lib.default_config()
    # Candidates per target taken from the index (the paper: top 10).
    c.num_candidates = mining.NUM_CANDIDATES
    # Candidates scoring above this cosine are near-duplicates, dropped.
    c.near_duplicate = mining.NEAR_DUPLICATE
    return c


def retrieval_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The directory of the embedder, embeddings and index of a run."""
    return config.retrieval.dir or os.path.join(workdir, "retrieval")


def _say(line: str) -> None:
    print(line, flush=True)


def _caption(record: dict, how: str, rng: np.random.Generator) -> str:
    """The text a record is paired with to train the embedder (`how`)."""
    if how == "dataset":
        return mining.as_text(record["caption"])
    from imagen_jax.data import shapes_world

    scene = shapes_world.Scene.from_json(mining.as_text(record["scene"]))
    return embedder_lib.CAPTIONS[how](scene, rng)


def _pairs(source, seed: int, how: str):
    """`embedder.train_embedder`'s pairs: shuffled batches of `source`."""
    if how != "dataset" and how not in embedder_lib.CAPTIONS:
        raise ValueError(
            f"config.retrieval.embedder_captions={how!r}; expected 'dataset' or "
            f"one of {sorted(embedder_lib.CAPTIONS)}"
        )
    rng = np.random.default_rng(seed)

    def pairs(batch_size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
        order = np.random.default_rng(seed).permutation(len(source))
        for begin in range(0, len(order) - batch_size + 1, batch_size):
            records = [source[int(i)] for i in order[begin : begin + batch_size]]
            yield (
                np.stack([r["image"] for r in records]),
                [_caption(r, how, rng) for r in records],
            )

    return pairs


def _images(source, batch_size: int = 256) -> Iterator[np.ndarray]:
    for begin in range(0, len(source), batch_size):
        stop = min(begin + batch_size, len(source))
        yield np.stack([source[i]["image"] for i in range(begin, stop)])


def _embedder(cfg: ml_collections.ConfigDict, directory: str, database):
    path = os.path.join(directory, "embedder")
    if not os.path.isdir(path):
        _say(f"training the embedder on {len(database)} database pairs")
        pairs = _pairs(database, cfg.embedder.seed, cfg.embedder_captions)
        embedder_lib.train_embedder(pairs, cfg.embedder, path)
    return embedder_lib.load_embedder(path)


def _embeddings(cfg, directory: str, sources: dict[str, Any]) -> dict[str, np.ndarray]:
    """split -> unit rows [N, D]: precomputed, saved earlier, or embedded now."""
    if cfg.embeddings:
        return {
            split: embedder_lib.PrecomputedEmbeddings(
                os.path.join(cfg.embeddings, f"{split}.npy")
            ).vectors
            for split in sources
        }
    out, model = {}, None
    for split, source in sources.items():
        path = os.path.join(directory, "embeddings", f"{split}.npy")
        if not os.path.exists(path):
            model = model or _embedder(cfg, directory, sources["database"])
            _say(f"embedding {len(source)} {split} images")
            vectors = model.embed_images(_images(source), total=len(source))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path + ".tmp.npy", vectors)
            os.replace(path + ".tmp.npy", path)
        out[split] = np.load(path, mmap_mode="r")
        if len(out[split]) != len(source):
            raise ValueError(
                f"{path} has {len(out[split])} rows; the {split} split has "
                f"{len(source)}: delete it to embed again"
            )
    return out


def _index(cfg, directory: str, database: np.ndarray) -> index_lib.Index:
    path = os.path.join(directory, "index")
    if os.path.exists(os.path.join(path, index_lib.MANIFEST)):
        found = index_lib.load_index(path)
        if len(found) == len(database):
            _say(f"index reloaded from {path} ({len(found)} vectors)")
            return found
        raise ValueError(
            f"{path} indexes {len(found)} vectors; the database has "
            f"{len(database)}: delete it to build again"
        )
    start = time.perf_counter()
    built = index_lib.build_index(database, cfg.index, directory=path)
    _say(f"index of {len(built)} vectors built in {time.perf_counter() - start:.1f} s")
    return built


def build(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Mines the training split's neighbours; returns (and writes) the figures.

    Raises:
      FileNotFoundError: the retrieval dataset was not built.
      ValueError: a bad config, or stale embeddings / index in the workdir.
    """
    from imagen_jax.data.tfds import shapes_world as shapes_world_tfds

    cfg, d = config.retrieval, config.data
    data_dir, variant = d.data_dir, shapes_world_tfds.retrieval_variant(d.variant)
    directory = retrieval_dir(config, workdir)
    os.makedirs(directory, exist_ok=True)
    sources = {
        split: shapes_world_tfds.load_source(data_dir, split, d.resolution, variant)
        for split in ("database", "train")
    }
    columns = {
        split: shapes_world_tfds.load_columns(data_dir, split, d.resolution, variant)
        for split in sources
    }
    vectors = _embeddings(cfg, directory, sources)
    index = _index(cfg, directory, vectors["database"])
    start = time.perf_counter()
    ids, scores = index.search(np.asarray(vectors["train"]), cfg.num_candidates)
    search_s = time.perf_counter() - start
    args = (
        ids,
        scores,
        columns["database"]["source_id"],
        columns["train"]["source_id"],
    )
    kwargs = {"num_context": d.max_context, "near_duplicate": cfg.near_duplicate}
    table = mining.mine_neighbours(*args, **kwargs)
    figures = {
        "data_dir": os.path.abspath(data_dir),
        "resolution": d.resolution,
        "variant": variant,
        "num_database": len(sources["database"]),
        "num_train": len(sources["train"]),
        "candidates_per_target": cfg.num_candidates,
        **kwargs,
        "search_s": round(search_s, 2),
        "neighbour_precision": mining.neighbour_precision(
            table, columns["train"]["name"], columns["database"]["name"]
        ),
        **mining.mining_stats(*args, **kwargs).to_dict(),
    }
    dataset = shapes_world_tfds.dataset_dir(data_dir, d.resolution, variant)
    metadata = {**figures, "retrieval_dir": os.path.abspath(directory)}
    mining.save_table(mining.neighbours_dir(dataset), "train", table, metadata)
    with open(os.path.join(directory, "build.json"), "w") as f:
        json.dump(figures, f, indent=1)
    return figures
