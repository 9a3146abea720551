"""The control-image convention a ControlNet was trained on, and a check of incoming control images.

A ControlNet folder may hold `control_convention.json` (the built-in tiny one does):

    {"condition": "edge", "polarity": "dark-on-light", "resolution": 128}

condition: `edge` (outlines, a few pixels wide) or `mask` (filled silhouettes); polarity: `dark-on-light`
(black lines on white, the miniature's) or `light-on-dark` (HED's white lines on black). `build` copies
the file into the engine folder, so `run` and the C++ runtime read the same record as `generate`.

`check` reads pixels only (numpy, no torch): an image is split into its background (the side of mid-grey
that covers most of the frame) and its marks; it warns when the background is the opposite of the
convention's (mean brightness), and, for `edge`, when the marks are filled areas rather than lines
(edge density: the share of mark pixels next to a background pixel). The warning is one line naming the
fix. The rule is one with `cpp/` (`check_control_image`); tests/test_control_check.py pins both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONVENTION_FILE = "control_convention.json"
CONDITIONS = ("edge", "mask")
POLARITIES = ("dark-on-light", "light-on-dark")
#: Below this share of mark pixels on the border of a mark, an `edge` control looks filled.
MIN_EDGE_DENSITY = 0.2
#: The least share of mark pixels for the edge-density check to speak (an empty control says nothing).
MIN_MARKS = 0.005


@dataclass(frozen=True)
class Convention:
    condition: str = "edge"
    polarity: str = "dark-on-light"
    resolution: int = 128

    def __post_init__(self):
        if self.condition not in CONDITIONS or self.polarity not in POLARITIES:
            raise ValueError(f"control convention {self}: condition one of {CONDITIONS}, polarity one of {POLARITIES}")

    def describe(self) -> str:
        lines = "edge outlines" if self.condition == "edge" else "filled silhouettes"
        colours = "black on white" if self.polarity == "dark-on-light" else "white on black"
        return f"{lines}, {colours}, {self.resolution} px"


def read_convention(folder: Path) -> Convention | None:
    """The convention recorded in a ControlNet or engine folder (None when none is recorded)."""
    path = Path(folder) / CONVENTION_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return Convention(str(raw["condition"]), str(raw["polarity"]), int(raw["resolution"]))


def write_convention(folder: Path, convention: Convention) -> Path:
    path = Path(folder) / CONVENTION_FILE
    record = {"condition": convention.condition, "polarity": convention.polarity, "resolution": convention.resolution}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def measure(image) -> tuple[float, float, float]:
    """(mean brightness 0..1, share of pixels darker than mid-grey, edge density of the marks) of a control
    image (PIL image or uint8 array [H, W] / [H, W, C]; grey: the mean of R, G, B). Marks: the minority side
    of mid-grey; edge density: the share of mark pixels with a 4-neighbour that is not a mark (the border
    repeats its pixels)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.int32)
    total = arr[..., :3].sum(axis=-1) if arr.ndim == 3 else arr * 3  # grey = total / 3, exact in integers
    brightness = float(total.mean() / (3 * 255.0))
    dark = total < 3 * 128
    dark_share = float(dark.mean())
    marks = dark if dark_share <= 0.5 else ~dark
    padded = np.pad(marks, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & marks
    count = int(marks.sum())
    density = float((count - interior.sum()) / count) if count else 1.0
    return brightness, dark_share, density


def check(image, convention: Convention | None, invert_flag: str = "--invert-control") -> str | None:
    """One warning line when `image` looks unlike `convention` (None when it fits or nothing is recorded)."""
    if convention is None:
        return None
    brightness, dark_share, density = measure(image)
    want_light = convention.polarity == "dark-on-light"
    if (dark_share > 0.5) == want_light:
        seen = "light on dark" if want_light else "dark on light"
        return (
            f"the control image looks inverted ({seen}: mean brightness {brightness:.2f}); this ControlNet was "
            f"trained on {convention.describe()}: pass {invert_flag} or invert the image"
        )
    marks = min(dark_share, 1 - dark_share)
    if convention.condition == "edge" and marks >= MIN_MARKS and density < MIN_EDGE_DENSITY:
        return (
            f"the control image looks like filled shapes, not outlines (edge density {density:.2f}); this "
            f"ControlNet was trained on {convention.describe()}: give an edge map"
        )
    return None


def invert(image):
    """The control image with its levels inverted (PIL in, PIL out; alpha dropped)."""
    from PIL import ImageOps

    return ImageOps.invert(image.convert("RGB"))
