"""Captioned scenes of coloured shapes, generated deterministically: the miniature's training data.

A scene is one shape, or two shapes side by side or one above the other, on a white background
(two-shape scenes are three quarters of the stream: binding two objects' attributes is the hard part):

    "a red circle", "a blue square above a yellow triangle on a white background",
    "a green triangle to the right of a red circle"

Sample i of a data set is drawn from `numpy.random.default_rng([seed, i])`, so it does not depend on
how many samples are drawn or in which order: the data set is an unbounded seeded stream, and
training renders it on the fly (`reference.train.common.SceneStream`). Every scene has integer labels
(`Labels`) that the
evaluation classifier reads back from images; two-object combinations in `HELDOUT` never appear in
training and make up, with the single shapes, the fixed evaluation captions (`eval_captions`);
`eval_groups` adds a fixed set of two-shape combinations that ARE in training (`SEEN_PAIRS`), so
binding and generalisation are measured apart.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 225),
    "yellow": (240, 200, 30),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle")
LAYOUTS = ("single", "vertical", "horizontal")  # vertical: a above b; horizontal: a left of b
BACKGROUND = (255, 255, 255)
P_SINGLE = 0.25  # share of one-shape scenes
P_BACKGROUND_PHRASE = 0.5  # share of captions ending "on a white background"
SUPERSAMPLE = 4  # drawn at 4x and downsampled: anti-aliased edges
_THING = re.compile(r"a (\w+) (\w+)")  # "a <colour> <shape>" in a caption


@dataclass(frozen=True)
class Labels:
    """What a scene shows. For "single", object b is absent (-1)."""

    layout: int
    shape_a: int
    colour_a: int
    shape_b: int = -1
    colour_b: int = -1

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.layout, self.shape_a, self.colour_a, self.shape_b, self.colour_b)


def _thing(shape: int, colour: int) -> str:
    return f"a {COLOUR_NAMES[colour]} {SHAPES[shape]}"


def caption(labels: Labels, variant: int = 0, background: bool = False) -> str:
    """The caption of a scene. `variant` 1 states a two-object relation from object b's side."""
    a, b = _thing(labels.shape_a, labels.colour_a), _thing(labels.shape_b, labels.colour_b)
    layout = LAYOUTS[labels.layout]
    if layout == "single":
        text = a
    elif layout == "vertical":
        text = f"{a} above {b}" if variant == 0 else f"{b} below {a}"
    else:
        text = f"{a} to the left of {b}" if variant == 0 else f"{b} to the right of {a}"
    return text + (" on a white background" if background else "")


def _all_pairs() -> list[Labels]:
    things = list(itertools.product(range(len(SHAPES)), range(len(COLOURS))))
    return [
        Labels(layout, sa, ca, sb, cb) for layout in (1, 2) for (sa, ca), (sb, cb) in itertools.product(things, things)
    ]


#: Two-object scenes kept out of training (a fixed 24 of the 288), for evaluation.
HELDOUT: frozenset[Labels] = frozenset(
    _all_pairs()[i] for i in np.random.default_rng(5).choice(len(_all_pairs()), size=24, replace=False)
)


def sample_labels(rng: np.random.Generator, heldout: bool = False) -> Labels:
    """A training scene: never one of `HELDOUT` unless `heldout` (the evaluation probe's data)."""
    if rng.random() < P_SINGLE:
        return Labels(0, int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))))
    while True:
        labels = Labels(
            int(rng.integers(1, 3)),
            int(rng.integers(len(SHAPES))),
            int(rng.integers(len(COLOURS))),
            int(rng.integers(len(SHAPES))),
            int(rng.integers(len(COLOURS))),
        )
        if heldout or labels not in HELDOUT:
            return labels


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.88  # similar area to the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r * 1.05, cy + r * 0.8), (cx - r * 1.05, cy + r * 0.8)], fill=fill)


def render(labels: Labels, size: int, rng: np.random.Generator) -> np.ndarray:
    """The scene as uint8 [size, size, 3]; sizes and positions jitter with `rng`."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    layout = LAYOUTS[labels.layout]
    if layout == "single":
        r = big * rng.uniform(0.2, 0.3)
        centres = [(big / 2 + big * rng.uniform(-0.1, 0.1), big / 2 + big * rng.uniform(-0.1, 0.1), r)]
    else:
        centres = []
        for k in range(2):
            r = big * rng.uniform(0.13, 0.19)
            along = big * (0.27 + 0.46 * k + rng.uniform(-0.04, 0.04))  # first half, then second half
            across = big * (0.5 + rng.uniform(-0.12, 0.12))
            centres.append((across, along, r) if layout == "vertical" else (along, across, r))
    objects = [(labels.shape_a, labels.colour_a), (labels.shape_b, labels.colour_b)]
    for (cx, cy, r), (shape, colour) in zip(centres, objects):
        _draw_shape(draw, SHAPES[shape], cx, cy, r, COLOURS[COLOUR_NAMES[colour]])
    return np.asarray(image.resize((size, size), Image.BOX), dtype=np.uint8)


def sample(seed: int, index: int, size: int = 128, heldout: bool = False) -> tuple[np.ndarray, str, Labels]:
    """Training sample `index` of the data set `seed`: (image uint8 [size,size,3], caption, labels)."""
    rng = np.random.default_rng([seed, index])
    text, labels = _draw_caption(rng, heldout)
    return render(labels, size, rng), text, labels


def _draw_caption(rng: np.random.Generator, heldout: bool) -> tuple[str, Labels]:
    labels = sample_labels(rng, heldout)
    return caption(labels, variant=int(rng.integers(2)), background=bool(rng.random() < P_BACKGROUND_PHRASE)), labels


def captions(seed: int, count: int, start: int = 0) -> list[str]:
    """The captions of samples start..start+count-1 of data set `seed`, without rendering the images."""
    return [_draw_caption(np.random.default_rng([seed, i]), False)[0] for i in range(start, start + count)]


def dataset(seed: int, count: int, size: int = 128, start: int = 0, heldout: bool = False):
    """(images uint8 [count,size,size,3], captions, labels int64 [count,5]) for samples start..start+count-1."""
    images, captions, labels = [], [], []
    for i in range(start, start + count):
        image, text, lab = sample(seed, i, size, heldout)
        images.append(image)
        captions.append(text)
        labels.append(lab.as_tuple())
    return np.stack(images), captions, np.asarray(labels, dtype=np.int64)


def eval_captions() -> list[tuple[str, Labels]]:
    """The fixed evaluation set: the 12 single shapes and the 24 held-out pairs, canonical phrasing."""
    singles = [Labels(0, s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    pairs = sorted(HELDOUT, key=Labels.as_tuple)
    return [(caption(lab), lab) for lab in singles + pairs]


def render_for(labels: Labels, seed: int, index: int, size: int = 128) -> np.ndarray:
    """A real image of given labels (the reference set the Frechet distance compares against)."""
    return render(labels, size, np.random.default_rng([seed, index, *(v + 1 for v in labels.as_tuple())]))


#: Two-object scenes that training does see (a fixed 24 of the 264 not held out), for evaluation.
SEEN_PAIRS: tuple[Labels, ...] = tuple(
    sorted(
        [
            lab
            for lab in (_all_pairs()[i] for i in np.random.default_rng(6).permutation(len(_all_pairs())))
            if lab not in HELDOUT
        ][:24],
        key=Labels.as_tuple,
    )
)


def eval_groups() -> dict[str, list[tuple[str, Labels]]]:
    """The evaluation captions by group, canonical phrasing: "single" (12), "seen pair" (24 combinations
    in training), "held-out pair" (the 24 of `HELDOUT`)."""
    evals = eval_captions()
    return {"single": evals[:12], "seen pair": [(caption(lab), lab) for lab in SEEN_PAIRS], "held-out pair": evals[12:]}


def training_captions() -> list[str]:
    """Every caption the training stream can produce (sorted): the index space of caption ids."""
    singles = [Labels(0, s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    out = {caption(lab, variant, bg) for lab in singles for variant in (0,) for bg in (False, True)}
    out |= {
        caption(lab, variant, bg)
        for lab in _all_pairs()
        if lab not in HELDOUT
        for variant in (0, 1)
        for bg in (False, True)
    }
    return sorted(out)


#: The words of every training caption: anything else in a prompt is unknown to the miniature.
VOCABULARY: frozenset[str] = frozenset(
    {"a", "above", "below", "to", "the", "left", "right", "of", "on", "white", "background", *COLOUR_NAMES, *SHAPES}
)


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` (lower-cased, punctuation stripped) that no training caption uses, in order."""
    words = [w.strip(".,;:!?\"'()").lower() for w in prompt.split()]
    return [w for w in dict.fromkeys(words) if w and w not in VOCABULARY]


def word_roles(captions: list[str], length: int) -> np.ndarray:
    """Per byte token of each caption (the tiny model's ByT5: character i is token i): 1 if it is in a
    colour or shape word of object a (top / left), 2 of object b (bottom / right), 0 otherwise; int64
    [len(captions), length]. A single shape's words are object a's."""
    out = np.zeros((len(captions), length), dtype=np.int64)
    for i, text in enumerate(captions):
        first_is_a = " below " not in text and " to the right of " not in text
        things = [m for m in _THING.finditer(text) if m.group(1) in COLOURS]
        for order, m in enumerate(things[:2]):
            role = order if first_is_a else 1 - order
            for group in (1, 2):
                start, end = m.span(group)
                out[i, start : min(end, length)] = 1 + role
    return out
