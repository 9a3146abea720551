"""`pixart-export run ENGINE_DIR`: draw with an engine folder through the torch-free runtime."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ._options import read_control_image


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="draw an image with an engine folder (torch-free runtime)",
                       description="Validate an engine folder against its manifest and run it: prompt -> PNG. "
                                   "Uses only numpy, the engine's backend and a tokenizer (no PyTorch).")
    p.add_argument("engine", type=Path, help="engine folder (from build)")
    p.add_argument("--prompt", required=True, help="text to draw")
    p.add_argument("--seed", type=int, default=0, help="noise seed; same seed as `generate` gives the same image")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (out.png, out_1.png, ...)")
    p.add_argument("--resolution", type=int, nargs="+", default=None, metavar="PX",
                   help="one of the engine's buckets: PX or HEIGHT WIDTH (default: its first)")
    p.add_argument("--control-image", type=Path, default=None, help="condition image (engine with ControlNet)")
    p.add_argument("--conditioning-scale", type=float, default=1.0, help="ControlNet residual scale (default 1)")
    p.add_argument("--out", type=Path, default=Path("image.png"), help="output PNG path (default image.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UserError("empty prompt: give the text to draw with --prompt")
    if args.out.suffix.lower() != ".png":
        raise UserError(f"--out {args.out}: the output is a PNG, name it *.png")
    if args.num_images < 1:
        raise UserError("--num-images must be at least 1")
    if args.resolution is not None and len(args.resolution) not in (1, 2):
        raise UserError("--resolution takes one value (square) or two (HEIGHT WIDTH)")
    from .. import runtime

    control = read_control_image(args.control_image)
    pipe = runtime.load(args.engine)
    resolution = None if args.resolution is None else (args.resolution * 2)[:2]
    images = pipe(args.prompt, seed=args.seed, num_images=args.num_images, control_image=control,
                  conditioning_scale=args.conditioning_scale, resolution=resolution)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = args.out if i == 0 else args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix}")
        tmp = path.with_name(f".{path.name}.tmp")
        image.save(tmp, format="PNG")
        tmp.replace(path)
        print(f"wrote {path} ({image.width}x{image.height})")
    return 0
