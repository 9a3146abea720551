"""`pixart-export compile BUNDLE`: build the TensorRT engines of a bundle on its target GPU host."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="build TensorRT engines from a bundle (on the target GPU host)",
                       description="Build the engines of a bundle made by `build --target trt-*` with the TensorRT "
                                   "Python API: strongly typed (precision from the graphs), one optimisation profile "
                                   "per engine from the manifest, timing cache keyed by content hash. Refuses a GPU "
                                   "or TensorRT version that does not match the bundle's target, and records "
                                   "device, driver and TensorRT version in the manifest.")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle folder")
    p.add_argument("--only", choices=["fp16", "int8"], action="append", default=None,
                   help="build only these precisions (repeatable; default all in the bundle)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compile_trt import compile_bundle

    compile_bundle(args.bundle, log=lambda m: print(m, file=sys.stderr, flush=True),
                   only=set(args.only) if args.only else None)
    print(args.bundle)
    return 0
