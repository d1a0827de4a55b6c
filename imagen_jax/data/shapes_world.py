"""ShapesWorld: a procedural world of coloured shapes on styled backgrounds.

A scene holds 1-9 objects on a 3x3 grid over a patterned background. Each
object has a shape, colour, size, grid position, fill pattern and z-order; the
background has a pattern and a two-colour palette, independent of content.
Scenes render to crisp uint8 images (no anti-aliasing, so an oracle can parse
them back exactly) and describe themselves in plain English.

The retrieval world (`make_retrieval_example`, stage 1) draws single objects
in sources of several renders, some of them named subjects of long-tailed
frequency, some names (`RETRIEVAL_ONLY_SUBJECTS`) only in its database.

Everything here is numpy only and deterministic given a seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

Triple = tuple[str, str, str]  # (shape, colour, position)

SHAPES = ("circle", "square", "triangle", "cross")

# Saturated object colours, far apart in RGB.
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 190),
    "orange": (250, 130, 20),
}
# Striped and dotted fills use this darker shade of the object's colour.
SHADE_FACTOR = 0.55
SHADES: Mapping[str, tuple[int, int, int]] = {
    name: tuple(int(round(SHADE_FACTOR * c)) for c in rgb)
    for name, rgb in COLOURS.items()
}

SIZES = ("small", "large")
# Object side as a fraction of a grid cell.
SIZE_FRACTIONS: Mapping[str, float] = {"small": 0.6, "large": 0.9}

POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
PATTERNS = ("solid", "striped", "dotted")
BG_PATTERNS = ("plain", "stripes", "checker", "dots")
# Background palettes: (main colour, pattern colour); light and low-saturation,
# far from every object colour and shade.
BG_PALETTES: Mapping[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "grey": ((205, 205, 205), (165, 165, 165)),
    "beige": ((240, 225, 195), (205, 185, 150)),
    "mint": ((200, 240, 220), (150, 205, 180)),
    "lavender": ((225, 215, 245), (185, 170, 220)),
}

# Made-up subject names -> (shape, colour, pattern) identity, most frequent
# first; NAMED_SUBJECT_WEIGHTS gives their long-tailed (Zipf) frequency.
NAMED_SUBJECTS: Mapping[str, tuple[str, str, str]] = {
    "zorblat": ("circle", "purple", "dotted"),
    "glim": ("triangle", "yellow", "striped"),
    "quiddle": ("cross", "green", "dotted"),
    "snorf": ("square", "orange", "striped"),
    "trindle": ("triangle", "blue", "dotted"),
    "wumpet": ("cross", "red", "striped"),
    "blick": ("circle", "green", "striped"),
    "fandoo": ("square", "purple", "dotted"),
}
NAMED_SUBJECT_WEIGHTS: Mapping[str, float] = {
    name: 1.0 / (rank + 1) for rank, name in enumerate(NAMED_SUBJECTS)
}


_ONSETS = "b d f g k l m n p r s t v w z br dr gl kr pl sn tr".split()
_CODAS = "kmnpstx"


def made_up_word(rng: np.random.Generator) -> str:
    """A made-up two-syllable name ("snorf"-like: onset vowel onset vowel
    coda), the form of every long-tail and retrieval-only name."""
    syllables = "".join(
        _ONSETS[rng.integers(len(_ONSETS))] + "aeiou"[rng.integers(5)] for _ in range(2)
    )
    return syllables + _CODAS[rng.integers(len(_CODAS))]


def _long_tail() -> tuple[dict[str, tuple[str, str, str]], ...]:
    """(tail names, retrieval-only names, unnamed identities), fixed forever.

    Every identity outside NAMED_SUBJECTS, in an order drawn once from a fixed
    seed: the first LONG_TAIL_SIZE get made-up training names, the next
    RETRIEVAL_ONLY_SIZE made-up names found only in the retrieval database,
    the rest stay unnamed (described in words).
    """
    rng = np.random.default_rng(20241129)
    taken = set(NAMED_SUBJECTS.values())
    free = [
        (s, c, p)
        for s in SHAPES
        for c in COLOURS
        for p in PATTERNS
        if (s, c, p) not in taken
    ]
    free = [free[i] for i in rng.permutation(len(free))]
    names: list[str] = []
    while len(names) < LONG_TAIL_SIZE + RETRIEVAL_ONLY_SIZE:
        word = made_up_word(rng)
        if word not in names and word not in NAMED_SUBJECTS:
            names.append(word)
    split = LONG_TAIL_SIZE + RETRIEVAL_ONLY_SIZE
    tail = dict(zip(names[:LONG_TAIL_SIZE], free[:LONG_TAIL_SIZE]))
    only = dict(zip(names[LONG_TAIL_SIZE:], free[LONG_TAIL_SIZE:split]))
    return tail, only, tuple(free[split:])


# The retrieval world's long tail (Re-Imagen's rare entities): training names
# past NAMED_SUBJECTS, each seen in few captions, so a model learns to draw a
# rare name from retrieved neighbours rather than by heart; and names found
# only in the retrieval database, never in a training caption, which a model
# can draw only from retrieved context.
LONG_TAIL_SIZE, RETRIEVAL_ONLY_SIZE = 44, 8
_TAIL, _ONLY, UNNAMED_IDENTITIES = _long_tail()
LONG_TAIL_SUBJECTS: Mapping[str, tuple[str, str, str]] = _TAIL
RETRIEVAL_ONLY_SUBJECTS: Mapping[str, tuple[str, str, str]] = _ONLY
# Zipf frequency over the training names, head (NAMED_SUBJECTS) first.
TRAINING_SUBJECT_WEIGHTS: Mapping[str, float] = {
    name: 1.0 / (rank + 1)
    for rank, name in enumerate([*NAMED_SUBJECTS, *LONG_TAIL_SUBJECTS])
}
# The Zipf tail continued past the training names.
RETRIEVAL_ONLY_WEIGHTS: Mapping[str, float] = {
    name: 1.0 / (len(TRAINING_SUBJECT_WEIGHTS) + rank + 1)
    for rank, name in enumerate(RETRIEVAL_ONLY_SUBJECTS)
}
ALL_SUBJECTS: Mapping[str, tuple[str, str, str]] = {
    **NAMED_SUBJECTS,
    **LONG_TAIL_SUBJECTS,
    **RETRIEVAL_ONLY_SUBJECTS,
}


def unused_name(rng: np.random.Generator) -> str:
    """A made-up name that no subject of the world has (stage 1's renaming,
    `pipeline.RetrievalSource`)."""
    while (word := made_up_word(rng)) in ALL_SUBJECTS:
        pass
    return word


_POSITION_PHRASES: Mapping[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "center": "in the center",
}
_BG_PHRASES: Mapping[str, str] = {
    "plain": "on {a} plain {p} background",
    "stripes": "on {a} {p} background with stripes",
    "checker": "on {a} {p} checkered background",
    "dots": "on {a} {p} background with dots",
}
_SPLIT_CODES: Mapping[str, int] = {"train": 0, "test": 1}
_SUPERSAMPLE = 4


def _check_choice(field: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {field} {value!r}; expected one of {allowed}.")


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object: what it is, where it is, and its drawing order `z`."""

    shape: str
    colour: str
    size: str
    position: str
    pattern: str = "solid"
    z: int = 0

    def __post_init__(self):
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, tuple(COLOURS))
        _check_choice("size", self.size, SIZES)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("pattern", self.pattern, PATTERNS)

    @property
    def triple(self) -> Triple:
        return (self.shape, self.colour, self.position)


@dataclasses.dataclass(frozen=True)
class Background:
    """Background style: a pattern drawn in a two-colour palette."""

    pattern: str = "plain"
    palette: str = "grey"

    def __post_init__(self):
        _check_choice("background pattern", self.pattern, BG_PATTERNS)
        _check_choice("background palette", self.palette, tuple(BG_PALETTES))


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects (at distinct grid positions) on a background."""

    objects: tuple[Obj, ...]
    background: Background = Background()

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        positions = [o.position for o in self.objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"Objects must be at distinct positions, got {positions}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scene:
        return cls(
            objects=tuple(Obj(**o) for o in d["objects"]),
            background=Background(**d["background"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str | bytes) -> Scene:
        return cls.from_dict(json.loads(s))


def sample_scene(
    rng: np.random.Generator,
    *,
    min_objects: int = 1,
    max_objects: int = 3,
    patterns: Sequence[str] = PATTERNS,
    bg_patterns: Sequence[str] = BG_PATTERNS,
    exclude: frozenset[Triple] = frozenset(),
) -> Scene:
    """Samples a scene with objects at distinct positions and distinct z.

    Args:
      rng: numpy random generator.
      min_objects: fewest objects (at least 1).
      max_objects: most objects (at most 9, one per grid cell).
      patterns: object fill patterns to choose from.
      bg_patterns: background patterns to choose from.
      exclude: (shape, colour, position) triples no object may have.

    Returns:
      The sampled scene.

    Raises:
      ValueError: on an empty or impossible object-count range or unknown
        pattern names.
    """
    if not 1 <= min_objects <= max_objects <= len(POSITIONS):
        raise ValueError(
            f"Need 1 <= min_objects <= max_objects <= 9, got "
            f"min_objects={min_objects}, max_objects={max_objects}."
        )
    for p in patterns:
        _check_choice("pattern", p, PATTERNS)
    for p in bg_patterns:
        _check_choice("background pattern", p, BG_PATTERNS)
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    zs = rng.permutation(n)
    objects = []
    for cell, z in zip(cells, zs, strict=True):
        position = POSITIONS[int(cell)]
        shape, colour = _sample_identity(rng, position, exclude)
        objects.append(
            Obj(
                shape=shape,
                colour=colour,
                size=SIZES[int(rng.integers(len(SIZES)))],
                position=position,
                pattern=patterns[int(rng.integers(len(patterns)))],
                z=int(z),
            )
        )
    background = Background(
        pattern=bg_patterns[int(rng.integers(len(bg_patterns)))],
        palette=tuple(BG_PALETTES)[int(rng.integers(len(BG_PALETTES)))],
    )
    return Scene(objects=tuple(objects), background=background)


def _sample_identity(
    rng: np.random.Generator, position: str, exclude: frozenset[Triple]
) -> tuple[str, str]:
    """Uniform (shape, colour) among those not excluded at `position`."""
    allowed = [
        (s, c) for s in SHAPES for c in COLOURS if (s, c, position) not in exclude
    ]
    if not allowed:
        raise ValueError(f"Every (shape, colour) is excluded at {position!r}.")
    return allowed[int(rng.integers(len(allowed)))]


def _check_resolution(resolution: int) -> None:
    if resolution <= 0 or resolution % 16:
        raise ValueError(
            f"resolution must be a positive multiple of 16, got {resolution}."
        )


def object_side(resolution: int, size: str) -> int:
    """Side in pixels of the square box an object of `size` is drawn in."""
    _check_choice("size", size, SIZES)
    return max(2, int(SIZE_FRACTIONS[size] * resolution / 3))


def object_box(resolution: int, obj: Obj) -> tuple[int, int, int]:
    """(top, left, side) in pixels of the box `obj` is drawn in."""
    side = object_side(resolution, obj.size)
    row, col = divmod(POSITIONS.index(obj.position), 3)
    cell = resolution / 3
    top = math.floor((row + 0.5) * cell - side / 2 + 0.5)
    left = math.floor((col + 0.5) * cell - side / 2 + 0.5)
    return top, left, side


def pattern_unit(resolution: int) -> int:
    """Pixel unit of fill and background patterns (1 at 32 px, 2 at 64 px)."""
    return max(1, resolution // 32)


@functools.lru_cache(maxsize=4096)
def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """Boolean [height, width] mask of `shape` filling its box.

    A pixel is inside when at least half of it is covered (supersampled), so
    masks are crisp and identical wherever the same box size is drawn.
    """
    _check_choice("shape", shape, SHAPES)
    k = _SUPERSAMPLE
    v = (np.arange(height * k) + 0.5) / (height * k)
    u = (np.arange(width * k) + 0.5) / (width * k)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    if shape == "circle":
        inside = (uu - 0.5) ** 2 + (vv - 0.5) ** 2 <= 0.25
    elif shape == "square":
        inside = np.ones_like(uu, dtype=bool)
    elif shape == "triangle":  # apex at the top, base at the bottom
        inside = np.abs(uu - 0.5) <= vv / 2
    else:  # cross: a plus sign with arms a third of the box wide
        inside = (np.abs(uu - 0.5) <= 1 / 6) | (np.abs(vv - 0.5) <= 1 / 6)
    coverage = inside.reshape(height, k, width, k).mean(axis=(1, 3))
    mask = coverage >= 0.5
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=256)
def pattern_mask(pattern: str, height: int, width: int, unit: int) -> np.ndarray:
    """Read-only boolean [height, width] mask of a fill's darker-shade pixels."""
    _check_choice("pattern", pattern, PATTERNS)
    y, x = np.mgrid[:height, :width]
    if pattern == "striped":  # diagonal bands
        mask = ((x + y) // (2 * unit)) % 2 == 1
    elif pattern == "dotted":  # a dot lattice with one dot at the box centre
        period = 3 * unit
        dy, dx = (y - (height - unit) // 2) % period, (x - (width - unit) // 2) % period
        mask = (dy < unit) & (dx < unit)
    else:
        mask = np.zeros((height, width), dtype=bool)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=256)
def background_mask(pattern: str, resolution: int) -> np.ndarray:
    """Read-only boolean [R, R] mask of background pixels in the accent colour."""
    _check_choice("background pattern", pattern, BG_PATTERNS)
    unit = 4 * pattern_unit(resolution)
    y, x = np.mgrid[:resolution, :resolution]
    if pattern == "stripes":  # horizontal bands
        mask = (y // unit) % 2 == 1
    elif pattern == "checker":
        mask = (y // unit + x // unit) % 2 == 1
    elif pattern == "dots":  # square dots half a unit wide, two units apart
        mask = ((x % (2 * unit)) // (unit // 2) == 1) & (
            (y % (2 * unit)) // (unit // 2) == 1
        )
    else:
        mask = np.zeros((resolution, resolution), dtype=bool)
    mask.setflags(write=False)
    return mask


def render_background(background: Background, resolution: int = 32) -> np.ndarray:
    """The background alone, uint8 [R, R, 3]."""
    _check_resolution(resolution)
    main, accent = (np.array(c, np.uint8) for c in BG_PALETTES[background.palette])
    mask = background_mask(background.pattern, resolution)
    return np.where(mask[..., None], accent, main)


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """Renders `scene`: background, then objects in increasing z.

    Args:
      scene: the scene to draw.
      resolution: image side in pixels; a positive multiple of 16.

    Returns:
      uint8 [resolution, resolution, 3] image.
    """
    image = render_background(scene.background, resolution)
    unit = pattern_unit(resolution)
    for obj in sorted(scene.objects, key=lambda o: o.z):
        top, left, side = object_box(resolution, obj)
        mask = shape_mask(obj.shape, side, side)
        shade = pattern_mask(obj.pattern, side, side, unit)
        fill = np.where(shade[..., None], SHADES[obj.colour], COLOURS[obj.colour])
        window = image[top : top + side, left : left + side]
        window[mask] = fill[mask]
    return image


def position_mask(scene: Scene, resolution: int = 32) -> np.ndarray:
    """Boolean [R, R] mask of the boxes a large object at each of the scene's
    object positions would be drawn in: where its objects are, whatever their
    size, shape or fill."""
    _check_resolution(resolution)
    mask = np.zeros((resolution, resolution), dtype=bool)
    for obj in scene.objects:
        top, left, side = object_box(resolution, dataclasses.replace(obj, size="large"))
        mask[top : top + side, left : left + side] = True
    return mask


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(
    obj: Obj,
    *,
    with_size: bool,
    with_pattern: bool,
    name: str | None = None,
    positioned: bool = True,
) -> str:
    words = [obj.size] if with_size else []
    if name:  # the name stands for colour, fill and shape
        words.append(name)
    else:
        words.append(obj.colour)
        if with_pattern and obj.pattern != "solid":
            words.append(obj.pattern)
        words.append(obj.shape)
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if not positioned:
        return phrase
    return f"{phrase} {_POSITION_PHRASES.get(obj.position, f'at the {obj.position}')}"


def background_phrase(background: Background) -> str:
    """E.g. "on a grey checkered background"."""
    template = _BG_PHRASES[background.pattern]
    first = "plain" if background.pattern == "plain" else background.palette
    return template.format(a=_article(first), p=background.palette)


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """Plain-English description of `scene` (the "plain" grammar).

    Colour, shape and position of every object are always named. Without `rng`
    the caption is canonical: objects in reading order, all attributes, and the
    background. With `rng`, object order, size and pattern words and the
    background clause vary.

    Args:
      scene: the scene to describe.
      rng: optional generator for phrasing variation.

    Returns:
      The caption, e.g. "a large red striped circle at the top left and a small
      blue square in the center on a grey checkered background".
    """
    return describe(scene, rng)[0]


# Caption grammars. "plain": one construction, optional size and pattern words
# (the text-to-image demo). "varied": word order, synonyms, terse and wordy
# forms (what the task world trains on). "unseen": constructions kept out of
# training, made of the same words, to measure robustness to phrasing (a text
# encoder trained from scratch cannot know a word it never saw).
GRAMMARS = ("plain", "varied", "unseen")
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_PATTERN_WORDS = {"striped": ("striped", "stripy"), "dotted": ("dotted", "spotted")}
_PATTERN_NOUNS = {"striped": "stripes", "dotted": "dots"}
_BG_PREPOSITIONS = {"varied": ("on", "on", "with", "against"), "unseen": ("over",)}


def _where(position: str, rng: np.random.Generator | None, grammar: str) -> str:
    where = _POSITION_PHRASES.get(position, f"at the {position}")
    if grammar == "varied" and rng.random() < 0.3:
        if position == "center":
            return "in the middle"
        if " " in position:  # a corner
            return f"in the {position} corner"
    return where


def _object_words(obj: Obj, rng, grammar: str) -> dict[str, str]:
    """The words of one object, synonyms drawn in the varied grammars."""

    def pick(options):
        return options[0] if grammar == "plain" else _choose(rng, options)

    words = {
        "colour": obj.colour,
        "shape": obj.shape,
        "size": pick(_SIZE_WORDS[obj.size]),
    }
    if obj.pattern != "solid":
        words["pattern"] = pick(_PATTERN_WORDS[obj.pattern])
        words["pattern_noun"] = _PATTERN_NOUNS[obj.pattern]
    return words


def _choose(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _varied_object(
    obj: Obj, rng: np.random.Generator, grammar: str, positioned: bool = True
) -> str:
    """One object in a construction of `grammar` ("varied" or "unseen"),
    without its position if not `positioned`."""
    w = _object_words(obj, rng, grammar)
    with_size, with_pattern = rng.random() >= 0.25, rng.random() >= 0.25
    adjs = [w["size"]] if with_size else []
    adjs.append(w["colour"])
    if with_pattern and "pattern" in w:
        adjs.append(w["pattern"])
    noun = " ".join(adjs + [w["shape"]])
    a = _article(noun)
    where = _where(obj.position, rng, grammar)
    at = f" {where}" if positioned else ""
    if grammar == "unseen":
        form = int(rng.integers(3))
        if form == 0:  # "top left: a big red circle"
            return f"{obj.position}: {a} {noun}" if positioned else f"{a} {noun}"
        if form == 1:  # "a big circle in red at the top left"
            thing = f"{w['size']} {w['shape']}" if with_size else w["shape"]
            return f"{_article(thing)} {thing} in {w['colour']}{at}"
        return f"there is {a} {noun}{at}"
    form = int(rng.integers(5))
    if form == 1:  # where first
        return f"{where}, {a} {noun}" if positioned else f"{a} {noun}"
    if form == 2:  # terse
        return f"{noun}, {obj.position}" if positioned else noun
    if form == 3:  # wordy
        traits = " and ".join([w["colour"]] + ([w["size"]] if with_size else []))
        wordy = f"{_article(w['shape'])} {w['shape']} that is {traits}"
        return f"{wordy},{at}" if positioned else wordy
    if form == 4 and "pattern" in w and with_pattern:  # pattern as a noun
        plain = " ".join(([w["size"]] if with_size else []) + [w["colour"], w["shape"]])
        return f"{_article(plain)} {plain} with {w['pattern_noun']}{at}"
    return f"{a} {noun}{at}"


def _background_clause(
    background: Background, rng: np.random.Generator | None, grammar: str
) -> str:
    phrase = background_phrase(background)  # "on a grey checkered background"
    if grammar == "plain":
        return phrase
    return _choose(rng, _BG_PREPOSITIONS[grammar]) + phrase[len("on") :]


def describe(
    scene: Scene,
    rng: np.random.Generator | None = None,
    grammar: str = "plain",
    background: bool | None = None,
    names: Mapping[str, str] | None = None,
    positioned: bool = True,
) -> tuple[str, bool]:
    """A caption of `scene` in `grammar`, and whether it names the background.

    Args:
      scene: the scene to describe.
      rng: phrasing variation; None gives the canonical caption (plain only).
      grammar: one of `GRAMMARS`.
      background: name the background always (True), never (False) or 70% of
        the time (None; always without `rng`).
      names: position -> subject name of a named object there, which the
        caption calls by its name ("a zorblat at the top left"); plain grammar
        only. Without names the output is unchanged.
      positioned: say where each object is; False leaves that to something
        else (a control map gives the layout).

    Returns:
      (caption, names_background).
    """
    _check_choice("caption grammar", grammar, GRAMMARS)
    if rng is None and grammar != "plain":
        raise ValueError(f"the {grammar!r} grammar needs an rng")
    names = names or {}
    if names and grammar != "plain":
        raise ValueError(
            f"named subjects are phrased in the plain grammar only, got {grammar!r}"
        )
    objects = sorted(scene.objects, key=lambda o: POSITIONS.index(o.position))
    if rng is not None:
        objects = [objects[i] for i in rng.permutation(len(objects))]

    def keep(p_drop: float) -> bool:
        return rng is None or bool(rng.random() >= p_drop)

    if grammar == "plain":
        phrases = [
            _object_phrase(
                o,
                with_size=keep(0.25),
                with_pattern=keep(0.25),
                name=names.get(o.position),
                positioned=positioned,
            )
            for o in objects
        ]
    else:
        phrases = [_varied_object(o, rng, grammar, positioned) for o in objects]
    text = _join(phrases)
    named = keep(0.3) if background is None else background
    if named:
        text += " " + _background_clause(scene.background, rng, grammar)
    return text, named


@functools.lru_cache(maxsize=16)
def held_out_triples(seed: int = 0, fraction: float = 0.1) -> frozenset[Triple]:
    """(shape, colour, position) combinations kept out of training.

    Args:
      seed: selects which combinations; the same seed gives the same set.
      fraction: share of all 216 combinations held out, in [0, 1).

    Returns:
      The held-out triples.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}.")
    triples = [(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS]
    count = int(round(fraction * len(triples)))
    order = np.random.default_rng(seed).permutation(len(triples))
    return frozenset(triples[i] for i in order[:count])


def held_out_scene(
    index: int, rng: np.random.Generator, triples: frozenset[Triple]
) -> Scene:
    """Single solid object with held-out triple number `index` (cycled)."""
    if not triples:
        raise ValueError("No held-out triples to draw evaluation scenes from.")
    ordered = sorted(triples)
    shape, colour, position = ordered[index % len(ordered)]
    obj = Obj(
        shape=shape,
        colour=colour,
        size=SIZES[int(rng.integers(len(SIZES)))],
        position=position,
    )
    palette = tuple(BG_PALETTES)[int(rng.integers(len(BG_PALETTES)))]
    return Scene(objects=(obj,), background=Background("plain", palette))


def make_example(
    split: str,
    index: int,
    seed: int,
    resolution: int = 32,
    min_objects: int = 1,
    max_objects: int = 3,
    *,
    patterns: Sequence[str] = PATTERNS,
    bg_patterns: Sequence[str] = BG_PATTERNS,
) -> dict[str, Any]:
    """Example number `index` of `split`; a pure function of its arguments.

    Train examples are random scenes (object count, fill and background
    patterns as given) avoiding the held-out triples, with varied captions;
    test examples are single solid held-out objects on plain backgrounds with
    canonical captions.

    Returns:
      {"image": uint8 [R, R, 3], "caption": str, "scene": JSON str}.
    """
    _check_choice("split", split, tuple(_SPLIT_CODES))
    _check_resolution(resolution)
    rng = np.random.default_rng((seed, _SPLIT_CODES[split], index))
    if split == "train":
        scene = sample_scene(
            rng,
            min_objects=min_objects,
            max_objects=max_objects,
            patterns=patterns,
            bg_patterns=bg_patterns,
            exclude=held_out_triples(),
        )
        text = caption(scene, rng)
    else:
        scene = held_out_scene(index, rng, held_out_triples())
        text = caption(scene)
    return {
        "image": render(scene, resolution),
        "caption": text,
        "scene": scene.to_json(),
    }


def generate(
    split: str,
    num_examples: int,
    seed: int,
    resolution: int = 32,
    min_objects: int = 1,
    max_objects: int = 3,
    *,
    patterns: Sequence[str] = PATTERNS,
    bg_patterns: Sequence[str] = BG_PATTERNS,
) -> Iterator[dict[str, Any]]:
    """Yields `num_examples` examples of `split` ("train" or "test").

    Same arguments, same output; see `make_example`.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}.")
    for index in range(num_examples):
        yield make_example(
            split,
            index,
            seed,
            resolution,
            min_objects,
            max_objects,
            patterns=patterns,
            bg_patterns=bg_patterns,
        )


def eval_prompts(n: int, seed: int = 0, resolution: int = 32) -> list[dict[str, Any]]:
    """`n` held-out single-object evaluation prompts.

    Returns:
      Dicts with "scene" (Scene), "caption" (canonical str) and "image" (the
      ground-truth rendering, uint8 [R, R, 3]).
    """
    prompts = []
    for example in generate("test", n, seed, resolution):
        scene = Scene.from_json(example["scene"])
        prompts.append({**example, "scene": scene})
    return prompts


# --------------------------------------------------------------------------
# The retrieval world (DESIGN §4; stage 1 of the method): the CPU world (one
# object, any fill and background) in which some objects are named subjects of
# long-tailed frequency, grouped into *sources*.
#
# Source s is an underlying scene: one identity (a named subject, or an unnamed
# (shape, colour, fill) that no name has) on one background. Each of its
# renders places the object at a random size and position, with a caption of
# its own. Render 0 of a training source is a `train` example; renders 1.. of
# every source are `database` items carrying the source's id, so a training
# target's other renders are in the database and mining can exclude them. One
# source in DATABASE_ONLY_EVERY is database-only and shows a retrieval-only
# subject, so those names are never in a training caption.

RETRIEVAL_SPLITS = ("train", "database", "test")
# Share of training sources showing a named subject (Zipf-weighted).
RETRIEVAL_NAMED_FRACTION = 0.5
RENDERS_PER_SOURCE = 3
DATABASE_ONLY_EVERY = 8
_SOURCE_CODE, _RENDER_CODE, _RETRIEVAL_TEST_CODE = 10, 11, 12


def is_database_only(source_id: int) -> bool:
    """Whether source `source_id` shows a retrieval-only subject."""
    return source_id % DATABASE_ONLY_EVERY == DATABASE_ONLY_EVERY - 1


def train_source_id(index: int) -> int:
    """The source of training example `index`: the index-th training source."""
    per_block = DATABASE_ONLY_EVERY - 1
    return (index // per_block) * DATABASE_ONLY_EVERY + index % per_block


def database_source_render(index: int) -> tuple[int, int]:
    """(source id, render number) of database item `index`."""
    per_source = RENDERS_PER_SOURCE - 1
    return index // per_source, 1 + index % per_source


def database_size(num_train: int) -> int:
    """Database items holding the other renders of the first `num_train`
    training sources (and the database-only sources among them)."""
    if num_train <= 0:
        return 0
    return (train_source_id(num_train - 1) + 1) * (RENDERS_PER_SOURCE - 1)


def _zipf_pick(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _random_background(rng: np.random.Generator) -> Background:
    return Background(
        BG_PATTERNS[int(rng.integers(len(BG_PATTERNS)))],
        tuple(BG_PALETTES)[int(rng.integers(len(BG_PALETTES)))],
    )


def _source(seed: int, source_id: int) -> tuple[str, tuple[str, str, str], Background]:
    """(subject name or "", (shape, colour, pattern), background) of a source."""
    rng = np.random.default_rng((seed, _SOURCE_CODE, source_id))
    if is_database_only(source_id):
        name = _zipf_pick(rng, RETRIEVAL_ONLY_WEIGHTS)
    elif rng.random() < RETRIEVAL_NAMED_FRACTION:
        name = _zipf_pick(rng, TRAINING_SUBJECT_WEIGHTS)
    else:
        name = ""
    if name:
        identity = ALL_SUBJECTS[name]
    else:
        identity = UNNAMED_IDENTITIES[int(rng.integers(len(UNNAMED_IDENTITIES)))]
    return name, identity, _random_background(rng)


def _placed(
    rng: np.random.Generator,
    identity: tuple[str, str, str],
    background: Background,
) -> Scene:
    """One object of `identity`, random size, at a position not held out."""
    shape, colour, pattern = identity
    held_out = held_out_triples()
    positions = [p for p in POSITIONS if (shape, colour, p) not in held_out]
    obj = Obj(
        shape,
        colour,
        SIZES[int(rng.integers(len(SIZES)))],
        positions[int(rng.integers(len(positions)))],
        pattern,
    )
    return Scene((obj,), background)


def _retrieval_record(
    scene: Scene, text: str, name: str, source_id: int, resolution: int
) -> dict[str, Any]:
    return {
        "image": render(scene, resolution),
        "caption": text,
        "scene": scene.to_json(),
        "source_id": source_id,
        "name": name,
    }


def redraw_subject(
    rng: np.random.Generator, scenes: Sequence[str | bytes], resolution: int = 32
) -> tuple[list[str], list[np.ndarray]]:
    """The one-object `scenes` (a target and its neighbours, JSON) with their
    object given one identity, uniform over every (shape, colour, fill) not
    held out at their positions; (scenes as JSON, renders).

    Stage 1's renamed subjects (`pipeline.RetrievalSource`): a renamed subject
    keeps its training identity otherwise, and then a retrieval-only identity
    (a combination no training name has) is one whose fill the model never
    had to read from the references: it copies shape and colour and takes the
    fill of the nearest identity it knows (docs/retrieval.md, session 15).
    Redrawn, every combination is seen under made-up names, never under a
    retrieval-only one, which is Re-Imagen's setting (the name is rare, its
    appearance need not be).

    Raises:
      ValueError: if a scene does not hold exactly one object.
    """
    parsed = [Scene.from_json(s) for s in scenes]
    for scene in parsed:
        if len(scene.objects) != 1:
            raise ValueError(
                f"redraw_subject takes one-object scenes, got {len(scene.objects)}"
            )
    held_out = held_out_triples()
    positions = {scene.objects[0].position for scene in parsed}
    allowed = [
        (shape, colour, fill)
        for shape in SHAPES
        for colour in COLOURS
        for fill in PATTERNS
        if all((shape, colour, p) not in held_out for p in positions)
    ]
    shape, colour, fill = allowed[int(rng.integers(len(allowed)))]
    redrawn = [
        dataclasses.replace(
            scene,
            objects=(
                dataclasses.replace(
                    scene.objects[0], shape=shape, colour=colour, pattern=fill
                ),
            ),
        )
        for scene in parsed
    ]
    return [s.to_json() for s in redrawn], [render(s, resolution) for s in redrawn]


def make_retrieval_example(
    split: str, index: int, seed: int, resolution: int = 32
) -> dict[str, Any]:
    """Example `index` of a retrieval-world split; a pure function of its arguments.

    `train`: render 0 of the index-th training source (a training-named
    subject or an unnamed object); `database`: render 1.. of a source (every
    name, RETRIEVAL_ONLY_SUBJECTS included, and unnamed objects); both with
    plain captions varied by the render's rng, a named object called by its
    name ("a zorblat at the top left"). `test`: a retrieval-only subject (the
    names in turn) in a fresh scene, canonical caption, source id -1.

    Returns:
      {"image": uint8 [R, R, 3], "caption": str, "scene": JSON str,
      "source_id": int, "name": str ("" for an unnamed object)}.

    Raises:
      ValueError: on an unknown split, a bad resolution or a negative index.
    """
    _check_choice("retrieval split", split, RETRIEVAL_SPLITS)
    _check_resolution(resolution)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}.")
    if split == "test":
        name = tuple(RETRIEVAL_ONLY_SUBJECTS)[index % len(RETRIEVAL_ONLY_SUBJECTS)]
        rng = np.random.default_rng((seed, _RETRIEVAL_TEST_CODE, index))
        background = _random_background(rng)
        scene = _placed(rng, ALL_SUBJECTS[name], background)
        text = describe(scene, names={scene.objects[0].position: name})[0]
        return _retrieval_record(scene, text, name, -1, resolution)
    if split == "train":
        source_id, render_number = train_source_id(index), 0
    else:
        source_id, render_number = database_source_render(index)
    name, identity, background = _source(seed, source_id)
    rng = np.random.default_rng((seed, _RENDER_CODE, source_id, render_number))
    scene = _placed(rng, identity, background)
    names = {scene.objects[0].position: name} if name else None
    text = describe(scene, rng, names=names)[0]
    return _retrieval_record(scene, text, name, source_id, resolution)
