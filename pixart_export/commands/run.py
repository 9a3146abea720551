"""`pixart-export run ENGINE_DIR`: draw with an engine folder through the torch-free runtime.

Validate an engine folder against its manifest and run it: prompt -> PNG. Uses only numpy, the
engine's backend and a tokenizer (no PyTorch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..manifest import Precision
from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(sub, __doc__, "run", help="draw an image with an engine folder (torch-free runtime)")
    p.add_argument("engine", type=Path, help="engine folder (from build)")
    _options.add_image_options(p, "the engine's first bucket")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (out.png, out_1.png, ...)")
    p.add_argument(
        "--precision",
        choices=[x.value for x in Precision],
        default=None,
        help="which of the folder's precisions to run (e.g. fp16 or int8 in a TensorRT bundle; "
        "default: the one it was built to run in)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for CPU backends (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _options.check_prompt(args.prompt)
    _options.check_png_out(args.out)
    if args.num_images < 1:
        raise UserError("--num-images must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    from .. import runtime

    control = _options.read_control_image(args.control_image)
    options = {"threads": args.threads} if args.threads else {}
    pipe = runtime.load(args.engine, precision=args.precision, **options)
    images = pipe(
        args.prompt,
        seed=args.seed,
        num_images=args.num_images,
        control_image=control,
        conditioning_scale=args.conditioning_scale,
        resolution=args.resolution,
    )
    for i, image in enumerate(images):
        path = args.out if i == 0 else args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix}")
        _options.save_png(image, path)
        print(f"wrote {path} ({image.width}x{image.height})")
    return 0
