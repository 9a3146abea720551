"""Free-layout scenes, where only the control image says where things go, and the placement metric.

`data.py` renders single shapes near the centre and pairs on two fixed lanes, and every pair's caption
states the relation, so a ControlNet trained on its edge maps never has to carry a layout the caption
does not already fix (issue #24). Here one to three objects are drawn at centres and sizes spread over
the whole frame (within `MARGIN`), never overlapping, and the caption names the objects but, for most
scenes, not their places:

    "a red circle", "a blue square and a yellow triangle",
    "a green circle, a red square and a blue triangle"

(a two-object scene whose objects are clearly one above the other, or side by side, gets `data.py`'s
relation caption half the time). Held-out layouts: an object's (column, row, size) cell in the grid of
`GRID` x `GRID` centre cells and `SIZE_BINS` radius bins is never in `HELDOUT_CELLS` in training;
`heldout_scene` draws every object in one of those cells, so evaluation places objects at positions and
sizes the training scenes never rendered together.

Placement (`placement`) reads pixels only: for each object of the control scene, the generated image
has a connected region of that object's colour (nearest palette colour, `COLOUR_DISTANCE`) whose
centroid lies inside the object's silhouette and whose area is within `AREA_RATIO` of the object's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from . import data

MARGIN = 0.06  # no part of an object closer than this share of the frame to its border
RADIUS = (0.09, 0.2)  # object radius, share of the frame
GRID = 4  # centre cells per side for the held-out layouts
SIZE_BINS = 2  # radius bins for the held-out layouts
GAP = 0.03  # least distance between two objects' bounding circles, share of the frame
P_RELATION = 0.5  # share of clearly stacked / side-by-side pairs captioned with their relation
COLOUR_DISTANCE = 90.0  # a pixel is of a palette colour within this RGB distance (and nearest to it)
AREA_RATIO = 2.0  # a generated object's area within [1/2, 2] x the control object's
_ALL_CELLS = [(cx, cy, s) for cx in range(GRID) for cy in range(GRID) for s in range(SIZE_BINS)]
#: (column, row, size bin) cells no training object is drawn in: a fixed 8 of the 32.
HELDOUT_CELLS: frozenset[tuple[int, int, int]] = frozenset(
    _ALL_CELLS[i] for i in np.random.default_rng(24).choice(len(_ALL_CELLS), size=8, replace=False)
)


@dataclass(frozen=True)
class Thing:
    """One object of a free-layout scene: shape and colour indices into `data.SHAPES` / `data.COLOURS`,
    centre and radius as shares of the frame."""

    shape: int
    colour: int
    cx: float
    cy: float
    r: float

    def cell(self) -> tuple[int, int, int]:
        lo, hi = RADIUS
        size = min(int((self.r - lo) / (hi - lo) * SIZE_BINS), SIZE_BINS - 1)
        return (min(int(self.cx * GRID), GRID - 1), min(int(self.cy * GRID), GRID - 1), size)


def _name(t: Thing) -> str:
    return f"a {data.COLOUR_NAMES[t.colour]} {data.SHAPES[t.shape]}"


def caption(things: list[Thing], rng: np.random.Generator | None = None) -> str:
    """Names the objects; a two-object scene that is clearly stacked or side by side states the relation
    with probability `P_RELATION` when `rng` is given (data.py's phrasing)."""
    if len(things) == 2 and rng is not None and rng.random() < P_RELATION:
        a, b = things
        dx, dy = b.cx - a.cx, b.cy - a.cy
        if abs(dy) > 2 * abs(dx) or abs(dx) > 2 * abs(dy):
            vertical = abs(dy) > abs(dx)
            first, second = (a, b) if (dy if vertical else dx) > 0 else (b, a)
            labels = data.Labels(1 if vertical else 2, first.shape, first.colour, second.shape, second.colour)
            return data.caption(labels)
    names = [_name(t) for t in things]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fits(t: Thing, others: list[Thing]) -> bool:
    return all(np.hypot(t.cx - o.cx, t.cy - o.cy) > t.r + o.r + GAP for o in others)


def _draw_things(rng: np.random.Generator, count: int, heldout: bool) -> list[Thing]:
    while True:
        things: list[Thing] = []
        for _ in range(200):
            r = rng.uniform(*RADIUS)
            lo, hi = MARGIN + r, 1 - MARGIN - r
            t = Thing(
                int(rng.integers(len(data.SHAPES))), int(rng.integers(len(data.COLOURS))), *rng.uniform(lo, hi, 2), r
            )
            if (t.cell() in HELDOUT_CELLS) == heldout and _fits(t, things):
                things.append(t)
                if len(things) == count:
                    return things
        # crowded: start again (the loop always ends, the first object fits in any cell)


def scene(seed: int, index: int, heldout: bool = False, max_objects: int = 3) -> list[Thing]:
    """The objects of free-layout scene `index` of data set `seed` (1..max_objects of them)."""
    rng = np.random.default_rng([seed, index, 24])
    return _draw_things(rng, int(rng.integers(1, max_objects + 1)), heldout)


def sample(seed: int, index: int, size: int = 128, heldout: bool = False) -> tuple[np.ndarray, str, list[Thing]]:
    """(image uint8 [size, size, 3], caption, objects) of free-layout scene `index` of data set `seed`."""
    things = scene(seed, index, heldout)
    return render(things, size), caption(things, np.random.default_rng([seed, index, 25])), things


def render(things: list[Thing], size: int = 128) -> np.ndarray:
    """The scene as uint8 [size, size, 3] on white, anti-aliased as `data.render`."""
    big = size * data.SUPERSAMPLE
    image = Image.new("RGB", (big, big), data.BACKGROUND)
    draw = ImageDraw.Draw(image)
    for t in things:
        fill = data.COLOURS[data.COLOUR_NAMES[t.colour]]
        data._draw_shape(draw, data.SHAPES[t.shape], t.cx * big, t.cy * big, t.r * big, fill)
    return np.asarray(image.resize((size, size), Image.BOX), dtype=np.uint8)


def silhouette(t: Thing, size: int = 128) -> np.ndarray:
    """bool [size, size]: where object `t` alone covers at least half a pixel."""
    return render([t], size).min(axis=-1) < 200


def colour_map(image: np.ndarray) -> np.ndarray:
    """int [H, W]: index of the nearest palette colour per pixel, -1 where none is within `COLOUR_DISTANCE`
    (white background, dark edges, muddy mixtures)."""
    palette = np.asarray([data.COLOURS[c] for c in data.COLOUR_NAMES], dtype=np.float32)
    dist = np.linalg.norm(image.astype(np.float32)[..., None, :] - palette, axis=-1)  # [H, W, colours]
    nearest = dist.argmin(axis=-1)
    return np.where(dist.min(axis=-1) < COLOUR_DISTANCE, nearest, -1)


def placed(image: np.ndarray, things: list[Thing]) -> np.ndarray:
    """bool [len(things)]: is each object drawn where the control scene has it (see the module doc)."""
    size = image.shape[0]
    colours = colour_map(image)
    out = np.zeros(len(things), dtype=bool)
    for k, t in enumerate(things):
        regions, n = ndimage.label(colours == t.colour)
        if n == 0:
            continue
        areas = ndimage.sum_labels(np.ones_like(regions), regions, index=np.arange(1, n + 1))
        centres = ndimage.center_of_mass(np.ones_like(regions), regions, index=np.arange(1, n + 1))
        sil = silhouette(t, size)
        want = sil.sum()
        for area, (y, x) in zip(areas, centres):
            inside = sil[min(int(round(y)), size - 1), min(int(round(x)), size - 1)]
            if inside and want / AREA_RATIO <= area <= want * AREA_RATIO:
                out[k] = True
                break
    return out


def placement(images: np.ndarray, scenes: list[list[Thing]]) -> np.ndarray:
    """float [N]: share of each scene's objects placed (`placed`) in generated uint8 images [N, H, W, 3]."""
    return np.asarray([placed(img, things).mean() for img, things in zip(images, scenes)])


def offcentre_circles(colour: int = 0, r: float = 0.14) -> list[list[Thing]]:
    """Issue #24's probe: one circle at the top, bottom, left and right of the frame."""
    at = [(0.5, 0.2), (0.5, 0.8), (0.2, 0.5), (0.8, 0.5)]
    return [[Thing(0, colour, x, y, r)] for x, y in at]


def shows_heldout_pair(things: list[Thing]) -> bool:
    """Whether two of the objects form one of `data.HELDOUT`'s combinations in either order and either
    relation: such a scene stays out of the base model's training, so the quality benchmark's held-out
    pairs stay unseen."""
    for a in things:
        for b in things:
            if a is not b and any(
                data.Labels(rel, a.shape, a.colour, b.shape, b.colour) in data.HELDOUT for rel in (1, 2)
            ):
                return True
    return False


def base_training_indices(seed: int, count: int) -> list[int]:
    """The first `count` free-layout scene indices of data set `seed` the base model trains on, in order
    (deterministic, so a cached set and its caption list agree): two or three objects, no held-out pair.

    One-object scenes stay out: their captions ("a red circle") are data.py's single-shape captions, whose
    scenes are large and centred, and a base fine-tuned on both drew that caption as a small shape anywhere
    or as nothing (teacher DDIM 25 single-shape adherence 0.552 [0.344, 0.750] after 1200 steps with them,
    against 1.000 before; runs/free). Two- and three-object scenes teach it to draw shapes anywhere; the
    ControlNet's own data keeps single objects."""
    out, i = [], 0
    while len(out) < count:
        things = scene(seed, i)
        if len(things) >= 2 and not shows_heldout_pair(things):
            out.append(i)
        i += 1
    return out
