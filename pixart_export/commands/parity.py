"""`pixart-export parity ENGINE_DIR`: re-measure every graph and the end-to-end images against the
reference, print the table, store it in the manifest (atomically); exit 1 beyond tolerance."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="compare an engine folder with the PyTorch reference",
                       description="Compare every graph of an engine folder with the reference on fixed inputs "
                                   "(relative L2, max abs error) and the whole pipeline end to end (image PSNR, "
                                   "same seed); print a table, record it in manifest.json; exit 1 when a figure "
                                   "is beyond its tolerance.")
    p.add_argument("engine", type=Path, help="engine folder (from build or export)")
    p.add_argument("--model", default=None, help="the model it was built from (default: as recorded in the manifest)")
    p.add_argument("--controlnet", default=None, help="its ControlNet (default: as recorded)")
    p.add_argument("--no-write", action="store_true", help="print only; leave manifest.json as it is")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..manifest import read_manifest

    if (read_manifest(args.engine).get("backend") or {}).get("name") == "openvino":  # hook (issue #7)
        from ..build_ov import parity_command

        return parity_command(args)
    import onnxruntime

    from .. import identity as ident
    from ..manifest import verify_engine, write_json_atomic
    from ..parity import format_table, measure

    manifest = verify_engine(args.engine, "onnxruntime", onnxruntime.__version__)
    model, model_spec = ident.load_recorded_model(manifest, args.model, args.controlnet)
    print(f"parity of {args.engine} against {model_spec}", file=sys.stderr, flush=True)
    parity = measure(model, args.engine, manifest, on_item=lambda n: print(f"  {n}", file=sys.stderr, flush=True))
    print(format_table(parity))
    if not args.no_write:
        manifest["parity"] = parity
        write_json_atomic(args.engine / "manifest.json", manifest)
    return 0 if parity["ok"] else 1
