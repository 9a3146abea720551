"""`pixart-export run ENGINE_DIR`: draw with an engine folder through the torch-free runtime.

Validate an engine folder against its manifest and run it: prompt -> PNG. Uses only numpy, the
engine's backend and a tokenizer (no PyTorch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..manifest import Precision
from ..runtime.budget import DEFAULT_BUDGET_GIB
from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(sub, __doc__, "run", help="draw an image with an engine folder (torch-free runtime)")
    p.add_argument("engine", type=Path, help="engine folder (from build)")
    _options.add_image_options(p, "the engine's first bucket")
    p.add_argument(
        "--num-images",
        type=_options.int_range(1, _options.MAX_IMAGES),
        default=1,
        help=f"images per prompt, 1 to {_options.MAX_IMAGES} (out.png, out_1.png, ...); made in chunks that fit "
        "--memory-budget and written as each chunk finishes",
    )
    p.add_argument(
        "--precision",
        choices=[x.value for x in Precision],
        default=None,
        help="which of the folder's precisions to run (e.g. fp16 or int8 in a TensorRT bundle; "
        "default: the one it was built to run in)",
    )
    p.add_argument(
        "--threads",
        type=_options.int_range(1, _options.MAX_THREADS),
        default=None,
        help="CPU threads for CPU backends (default: all)",
    )
    p.add_argument(
        "--memory-budget",
        type=_options.float_range(0.01, 1024),
        default=None,
        metavar="GIB",
        help="activation memory one chunk of images may use, in GiB (default %g; larger batches are split)"
        % DEFAULT_BUDGET_GIB,
    )
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="hold one graph in memory at a time: the text encoder is released before the denoiser loads, the "
        "denoiser before the VAE decoder (the same images; lower peak memory, slower: graphs load on every call)",
    )
    p.add_argument(
        "--decoder",
        choices=("full", "preview"),
        default="full",
        help="full: the model's VAE decoder (default); preview: the folder's small AutoencoderTiny decoder "
        "(built with --preview-decoder), faster and softer",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _options.check_prompt(args.prompt)
    paths = [
        args.out if i == 0 else args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix}")
        for i in range(args.num_images)
    ]
    for path in paths:
        _options.check_png_out(path, engine=args.engine)
    from .. import runtime

    control = _options.read_checked_control(args, args.engine)  # build copies the ControlNet's convention
    options = {"threads": args.threads} if args.threads else {}
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
    pipe = runtime.load(
        args.engine,
        precision=args.precision,
        memory_budget=budget,
        low_memory=args.low_memory,
        decoder=args.decoder,
        **options,
    )
    # a bucket the engine has (else its own error, not a disk-space one), then room for it, before the inference
    _options.check_free_space(paths, *pipe.bucket(args.resolution))
    chunks = pipe.chunks(
        args.prompt,
        seed=args.seed,
        num_images=args.num_images,
        control_image=control,
        conditioning_scale=args.conditioning_scale,
        resolution=args.resolution,
    )
    written = 0
    for images in chunks:
        for image in images:
            _options.save_png(image, paths[written])
            print(f"wrote {paths[written]} ({image.width}x{image.height})")
            written += 1
    return 0
