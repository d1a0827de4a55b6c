"""What classification's answer can be read from, before any training.

    python docs/results/2026-12-02_s28_marginals.py [N] [OUT.json]

Draws N (6000) training examples of the CPU world's classification task and
prints P(present) given the image's object class alone, given the named
(queried) class alone, and given whether the object's colour is the named
colour. When the first two stay at the overall rate, the answer is a pure
interaction of text and image: no function of one of them alone beats
chance, so no single input's features get a first-order training signal.
"""

import collections
import json
import sys

from imagen_jax.data import tasks


def rates(groups: dict) -> list[float]:
    return [present / (present + absent) for absent, present in groups.values()]


def main(n: int, out: str | None) -> None:
    by_object = collections.defaultdict(lambda: [0, 0])
    by_query = collections.defaultdict(lambda: [0, 0])
    by_colour_match = collections.defaultdict(lambda: [0, 0])
    for i in range(n):
        meta = tasks.make_example("classification", i, 0, world="simple").meta
        (obj,) = meta["scene"].objects
        shape, colour = meta["query_class"]
        present = int(meta["present"])
        by_object[(obj.shape, obj.colour)][present] += 1
        by_query[(shape, colour)][present] += 1
        by_colour_match[obj.colour == colour][present] += 1
    record = {"examples": n, "present": sum(p for _, p in by_object.values()) / n}
    for name, groups in (("object_class", by_object), ("query_class", by_query)):
        r = rates(groups)
        record[name] = {"groups": len(groups), "min": min(r), "max": max(r)}
        print(f"P(present | {name}): {len(groups)} groups, {min(r):.2f}..{max(r):.2f}")
    for match in (True, False):
        absent, present = by_colour_match[match]
        record[f"colour_match_{match}".lower()] = {
            "examples": absent + present,
            "present": present / (absent + present),
        }
        print(
            f"P(present | object colour {'is' if match else 'is not'} the named one): "
            f"{present / (absent + present):.2f} of {absent + present}"
        )
    print(f"P(present): {record['present']:.2f} of {n}")
    if out:
        with open(out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6000, (sys.argv[2:] or [None])[0])
