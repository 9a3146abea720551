"""The ControlNet part of `python3 dev.py demo`: a control image for the demo prompt, and the picture
that shows it beside the images drawn without and with it.

    python -m pixart_export.demo control-image out/controlnet_control.png --prompt "a red circle above a blue square"
    python -m pixart_export.demo side-by-side out/controlnet_demo.png "control image=a.png" "no control=b.png" ...

The control image is what the tiny ControlNet is trained on (`reference.train.control`): the edge map
(black on white) of a scene of the miniature's generator whose caption is the prompt, so the
controlled image has a known right answer, the scene. Not part of the runtime (it imports the
reference's scene generator, which needs the `export` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The scene's random placement (sizes, positions) comes from this seed.
SCENE_SEED = 0
LABEL_HEIGHT = 16
GAP = 4


def scene_for(prompt: str, size: int = 128, seed: int = SCENE_SEED) -> np.ndarray:
    """The scene (uint8 [size, size, 3]) whose canonical caption is `prompt` ("a red circle", "a red
    circle above a blue square", "... to the left of ..."); ValueError when no scene has that caption."""
    import itertools

    from reference.train import data

    things = list(itertools.product(range(len(data.SHAPES)), range(len(data.COLOURS))))
    candidates = [data.Labels(0, s, c) for s, c in things] + [
        data.Labels(layout, *a, *b) for layout in (1, 2) for a, b in itertools.product(things, things)
    ]
    for labels in candidates:
        if data.caption(labels) == prompt.strip():
            return data.render_for(labels, seed, 0, size)
    raise ValueError(
        f"no scene of the miniature is captioned {prompt!r}; give one like 'a red circle above a blue square'"
    )


def control_image(prompt: str, size: int = 128) -> Image.Image:
    """The edge map of `scene_for(prompt)`: the demo's control image."""
    from reference.train.control import condition

    return Image.fromarray(condition(scene_for(prompt, size), "edge"))


def side_by_side(panels: list[tuple[str, Image.Image]], scale: int = 2) -> Image.Image:
    """One image of `panels` (label, image) in a row on white, each scaled to the tallest panel's height
    times `scale` (nearest neighbour: pixels stay visible) under a label strip of `LABEL_HEIGHT` px."""
    if not panels:
        raise ValueError("no panels")
    height = max(im.height for _, im in panels) * scale
    cells = [
        im.convert("RGB").resize((round(im.width * height / im.height), height), Image.NEAREST) for _, im in panels
    ]
    width = sum(c.width for c in cells) + GAP * (len(cells) + 1)
    out = Image.new("RGB", (width, height + LABEL_HEIGHT + 2 * GAP), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = GAP
    for (label, _), cell in zip(panels, cells):
        draw.text((x, GAP // 2), label, fill=(0, 0, 0))
        out.paste(cell, (x, LABEL_HEIGHT + GAP))
        x += cell.width + GAP
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixart_export.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    c = sub.add_parser("control-image", help="write the edge map of the scene captioned --prompt")
    c.add_argument("out", type=Path)
    c.add_argument("--prompt", required=True)
    c.add_argument("--size", type=int, default=128)
    s = sub.add_parser("side-by-side", help="write LABEL=PNG panels side by side with their labels")
    s.add_argument("out", type=Path)
    s.add_argument("panels", nargs="+", metavar="LABEL=PNG")
    args = parser.parse_args(argv)
    try:
        if args.task == "control-image":
            control_image(args.prompt, args.size).save(args.out)
        else:
            panels = []
            for item in args.panels:
                label, sep, path = item.partition("=")
                if not sep:
                    parser.error(f"{item!r}: give LABEL=PNG")
                with Image.open(path) as im:
                    panels.append((label, im.convert("RGB")))
            side_by_side(panels).save(args.out)
    except (ValueError, OSError) as exc:
        print(f"pixart_export.demo: error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
