"""The long-tailed retrieval world of stage 1 (shapes_world.make_retrieval_example)."""

import collections
import re

import numpy as np
import pytest

from imagen_jax.data import shapes_world as sw


def _examples(split, n):
    return [sw.make_retrieval_example(split, i, 0) for i in range(n)]


@pytest.fixture(scope="module")
def train():
    return _examples("train", 700)


@pytest.fixture(scope="module")
def database():
    return _examples("database", sw.database_size(700))


def _words(caption):
    return set(re.findall(r"[a-z]+", caption))


def test_every_identity_has_at_most_one_name():
    only, tail = sw.RETRIEVAL_ONLY_SUBJECTS, sw.LONG_TAIL_SUBJECTS
    assert len(only) == sw.RETRIEVAL_ONLY_SIZE and len(tail) == sw.LONG_TAIL_SIZE
    names = [*sw.NAMED_SUBJECTS, *tail, *only]
    assert len(set(names)) == len(names) == len(sw.ALL_SUBJECTS)
    identities = [*sw.ALL_SUBJECTS.values(), *sw.UNNAMED_IDENTITIES]
    assert len(set(identities)) == len(identities) == 72  # every identity once
    for shape, colour, pattern in identities:
        sw.Obj(shape, colour, "small", "center", pattern)  # a valid identity
    weights = list(sw.TRAINING_SUBJECT_WEIGHTS.values())
    assert list(sw.TRAINING_SUBJECT_WEIGHTS) == [*sw.NAMED_SUBJECTS, *tail]
    weights += list(sw.RETRIEVAL_ONLY_WEIGHTS.values())
    assert weights == sorted(weights, reverse=True)  # one Zipf tail


def test_retrieval_only_names_never_reach_a_training_caption(train, database):
    retrieval_only = set(sw.RETRIEVAL_ONLY_SUBJECTS)
    assert not any(_words(e["caption"]) & retrieval_only for e in train)
    assert not any(e["name"] in retrieval_only for e in train)
    in_database = {e["name"] for e in database}
    assert retrieval_only <= in_database and set(sw.NAMED_SUBJECTS) <= in_database
    assert "" in in_database


def test_names_are_long_tailed(train):
    counts = collections.Counter(e["name"] for e in train)
    named = sum(v for k, v in counts.items() if k)
    assert 0.35 < named / len(train) < 0.65
    head = list(sw.NAMED_SUBJECTS)[0]
    tail = list(sw.LONG_TAIL_SUBJECTS)[-8:]
    assert counts[head] > 4 * sum(counts[t] for t in tail) / len(tail)


def test_named_objects_have_their_identity_and_are_called_by_name(train, database):
    named = set(sw.ALL_SUBJECTS.values())
    for e in train + database:
        scene = sw.Scene.from_json(e["scene"])
        (obj,) = scene.objects
        identity = (obj.shape, obj.colour, obj.pattern)
        np.testing.assert_array_equal(e["image"], sw.render(scene, 32))
        if e["name"]:
            assert identity == sw.ALL_SUBJECTS[e["name"]]
            assert e["name"] in _words(e["caption"])
            assert not {obj.colour, obj.shape} & _words(e["caption"])
        else:  # an unnamed object never looks like a named subject
            assert identity not in named
            assert {obj.colour, obj.shape} <= _words(e["caption"])
        assert (obj.shape, obj.colour, obj.position) not in sw.held_out_triples()


def test_a_caption_follows_the_plain_grammar():
    scene = sw.Scene(
        (sw.Obj("circle", "purple", "large", "top left", "dotted"),),
        sw.Background("plain", "grey"),
    )
    names = {"top left": "zorblat"}
    assert sw.describe(scene, names=names)[0] == (
        "a large zorblat at the top left on a plain grey background"
    )
    assert sw.caption(scene) == (
        "a large purple dotted circle at the top left on a plain grey background"
    )
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="plain grammar only"):
        sw.describe(scene, rng, "varied", names=names)


def test_renders_of_a_source_share_identity_and_background(train, database):
    by_source = collections.defaultdict(list)
    for e in train + database:
        by_source[e["source_id"]].append(e)
    shared = 0
    for renders in by_source.values():
        scenes = [sw.Scene.from_json(e["scene"]) for e in renders]
        looks = {
            (s.objects[0].shape, s.objects[0].colour, s.objects[0].pattern)
            for s in scenes
        }
        assert len(looks) == 1 and len({s.background for s in scenes}) == 1
        assert len({e["name"] for e in renders}) == 1
        shared += len(renders) > 1
    # A database of `database_size` holds every other render of the targets.
    assert all(len(by_source[e["source_id"]]) == sw.RENDERS_PER_SOURCE for e in train)
    assert shared == len(by_source)


def test_database_only_sources_show_retrieval_only_subjects(database):
    for e in database:
        only = sw.is_database_only(e["source_id"])
        assert only == (e["name"] in sw.RETRIEVAL_ONLY_SUBJECTS)


def test_test_split_names_retrieval_only_subjects():
    names = list(sw.RETRIEVAL_ONLY_SUBJECTS)
    for i, e in enumerate(_examples("test", 8)):
        assert e["name"] == names[i % len(names)] and e["source_id"] == -1
        (obj,) = sw.Scene.from_json(e["scene"]).objects
        assert (obj.shape, obj.colour, obj.pattern) == sw.ALL_SUBJECTS[e["name"]]
        assert e["caption"].startswith(f"a {obj.size} {e['name']} ")


def test_examples_are_pure_functions_of_their_arguments():
    a = sw.make_retrieval_example("database", 17, 3, 64)
    b = sw.make_retrieval_example("database", 17, 3, 64)
    assert a["caption"] == b["caption"] and a["image"].shape == (64, 64, 3)
    np.testing.assert_array_equal(a["image"], b["image"])
    other = sw.make_retrieval_example("database", 17, 4, 64)
    assert (a["scene"], a["caption"]) != (other["scene"], other["caption"])


@pytest.mark.parametrize(
    "split, index, match", [("validation", 0, "validation"), ("train", -1, "-1")]
)
def test_bad_arguments_are_clear_errors(split, index, match):
    with pytest.raises(ValueError, match=match):
        sw.make_retrieval_example(split, index, 0)
