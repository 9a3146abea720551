"""`pixart-export parity ENGINE_DIR`: re-measure every graph and the end-to-end images against the
reference, print the table, record it in the manifest (through its one writer); exit 1 beyond tolerance.

Compare every graph of an engine folder with the reference on fixed inputs (relative L2, max abs
error) and the whole pipeline end to end (image PSNR, same seed; the int8 quality gate for int8
folders); print a table, record it in manifest.json; exit 1 when a figure is beyond its tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(sub, __doc__, "parity", help="compare an engine folder with the PyTorch reference")
    p.add_argument("engine", type=Path, help="engine folder (from build or export)")
    p.add_argument("--model", default=None, help="the model it was built from (default: as recorded in the manifest)")
    p.add_argument("--controlnet", default=None, help="its ControlNet (default: as recorded)")
    p.add_argument("--no-write", action="store_true", help="print only; leave manifest.json as it is")
    _options.add_json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.identity import load_recorded_model
    from ..manifest import check_files, to_json, write_manifest
    from ..progress import log
    from ..targets import read_engine
    from ..verify import format_table

    manifest, target = read_engine(args.engine)
    backend = target.backend
    backend.check_host(args.engine, manifest)
    check_files(args.engine, manifest, hashes=True)
    model, model_spec = load_recorded_model(manifest, args.model, args.controlnet)
    log(f"parity of {args.engine} against {model_spec}")
    parity = backend.remeasure(args.engine, manifest, model, log)
    if args.json:
        _options.emit_json(to_json(parity))
    else:
        print(format_table(parity))
    if not args.no_write:
        write_manifest(args.engine, dataclasses.replace(manifest, parity=parity))
    return 0 if parity.ok else 1
