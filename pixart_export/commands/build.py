"""`pixart-export build`: model -> engine folder for a target, in one command (see pixart_export.build)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..targets import TARGETS
from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="export, optimise, verify and write an engine folder for a target",
                       description="Build an engine folder: export the graphs, optimise where measured to help, "
                                   "verify every graph and the whole pipeline against the reference, write "
                                   "manifest.json; built in a temporary folder and renamed into place. An "
                                   "identical rebuild (same build key, files intact) is reused.")
    p.add_argument("--target", required=True, choices=list(TARGETS), metavar="TARGET",
                   help=f"one of: {', '.join(TARGETS)} (see `pixart-export targets`)")
    _options.add_model_options(p)
    p.add_argument("--out", type=Path, default=None, help="engine folder (default engines/<target>-<model>)")
    p.add_argument("--no-optimise", action="store_true", help="skip the measured offline optimisation")
    p.add_argument("--force", action="store_true", help="rebuild even if an identical engine exists")
    from ..build_ov import add_int8_options  # hook (issue #7): OpenVINO int8 options

    add_int8_options(p)
    p.add_argument("--trt-fp16-only", action="store_true",  # hook (issue #6)
                   help="TensorRT targets: ship fp16 graphs only, no int8 Q/DQ graphs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..build import build
    from ..build_ov import int8_options_from_args

    out = None if args.out is None else _options.check_out(args.out)
    out, manifest, reused = build(args.target, args.model, out, args.controlnet,
                                  _options.parse_resolutions(args.resolution), args.steps, args.lcm_spacing,
                                  optimise=not args.no_optimise, force=args.force,
                                  log=lambda m: print(m, file=sys.stderr, flush=True),
                                  ov_int8=int8_options_from_args(args),
                                  trt_int8=False if args.trt_fp16_only else None)
    print(out)
    return 0
