"""`pixart-export check --target TARGET DIR`: static proof that a bundle's graphs will build (onnx only)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..targets import TARGETS


def register(sub: argparse._SubParsersAction) -> None:
    trt = [name for name, t in TARGETS.items() if t.trt is not None]
    p = sub.add_parser("check", help="check a TensorRT bundle's graphs statically (no GPU, no TensorRT needed)",
                       description="Check every graph of a bundle (or every .onnx file of a folder) against the "
                                   "TensorRT ONNX parser's supported ops for the target's TensorRT versions, the "
                                   "dtypes it takes, the Q/DQ patterns explicit int8 needs (zero-point 0, positive "
                                   "scales, per-channel weights on the output-channel axis) and the target's "
                                   "optimisation profile. Needs only `onnx`.")
    p.add_argument("--target", required=True, choices=trt, metavar="TARGET", help=f"one of: {', '.join(trt)}")
    p.add_argument("folder", type=Path, metavar="DIR", help="a bundle from `build --target trt-*`, or a folder of .onnx")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..targets import get_target
    from ..trt_check import check_bundle, format_reports

    if not args.folder.is_dir():
        raise UserError(f"{args.folder}: no such folder (give a bundle from `pixart-export build --target trt-*`)")
    target = get_target(args.target)
    reports = check_bundle(args.folder, target, on_file=lambda n: print(f"checking {n}", file=sys.stderr, flush=True))
    if not reports:
        raise UserError(f"{args.folder}: no graphs found (no manifest.json and no .onnx files)")
    print(format_reports(reports, target))
    return 0 if all(r.ok for r in reports) else 1
