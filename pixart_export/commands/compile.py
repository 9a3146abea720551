"""`pixart-export compile BUNDLE`: build the TensorRT engines of a bundle on its target GPU host.

Build the engines of a bundle made by `build --target trt-*` with the TensorRT Python API: strongly
typed (precision from the graphs), one optimisation profile per engine from the manifest, timing
cache keyed by content hash. Refuses a GPU or TensorRT version that does not match the bundle's
target, and records device, driver and TensorRT version in the manifest.
"""

from __future__ import annotations

import argparse
import sys

from ..backends.tensorrt.options import add_compile_arguments
from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(
        sub, __doc__, "compile", help="build TensorRT engines from a bundle (on the target GPU host)"
    )
    add_compile_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backends.tensorrt.compile import compile_bundle
    from ..errors import UserError
    from ..targets import read_engine

    if not args.bundle.is_dir():
        raise UserError(f"{args.bundle}: no such folder (give a bundle from `pixart-export build --target trt-*`)")
    _, target = read_engine(args.bundle)  # the registry row the manifest names, checked against it
    compile_bundle(
        args.bundle,
        target,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        only=set(args.only) if args.only else None,
        both_plans=bool(getattr(args, "both_plans", False)),
    )
    print(args.bundle)
    return 0
