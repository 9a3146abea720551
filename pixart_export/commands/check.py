"""`pixart-export check --target TARGET DIR`: static proof that a bundle's graphs will build (onnx only).

Exit codes: 0 every graph passes, 1 a graph fails a rule (the report names it), 2 bad input.

Check every graph of a bundle (or every .onnx file of a folder) against the TensorRT ONNX parser's
supported ops for the target's TensorRT versions, the dtypes it takes, the Q/DQ patterns explicit
int8 needs (zero-point 0, positive scales, per-channel weights on the output-channel axis) and the
target's optimisation profile. Needs only `onnx`.
"""

from __future__ import annotations

import argparse
import sys

from ..backends.tensorrt.options import add_check_arguments
from ..targets import TARGETS
from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(
        sub, __doc__, "check", help="check a TensorRT bundle's graphs statically (no GPU, no TensorRT needed)"
    )
    add_check_arguments(p, [name for name, t in TARGETS.items() if t.trt is not None])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backends.tensorrt.check import check_bundle, format_reports, reports_json
    from ..errors import UserError
    from ..manifest import MANIFEST
    from ..targets import get_target, read_engine

    if not args.folder.is_dir():
        raise UserError(f"{args.folder}: no such folder (give a bundle from `pixart-export build --target trt-*`)")
    target = get_target(args.target)
    manifest = read_engine(args.folder)[0] if (args.folder / MANIFEST).exists() else None
    from google.protobuf.message import DecodeError

    current: list[str] = []

    def on_file(name: str) -> None:
        current[:] = [name]
        print(f"checking {name}", file=sys.stderr, flush=True)

    try:
        reports = check_bundle(args.folder, target, manifest, on_file=on_file)
    except (DecodeError, OSError) as exc:
        name = current[0] if current else args.folder
        raise UserError(f"{name}: not a readable ONNX graph ({exc or type(exc).__name__}); export it again") from None
    if not reports:
        raise UserError(f"{args.folder}: no graphs found (no manifest.json and no .onnx files)")
    if args.json:
        _options.emit_json(reports_json(reports, target))
    else:
        print(format_reports(reports, target))
    return 0 if all(r.ok for r in reports) else 1
