"""`pixart-export export`: the fp32 ONNX graphs of ARCHITECTURE.md, tokenizer and manifest, no parity.

Same stages as `build --target ort-cpu` minus optimisation and verification (so it is fast and the
graphs are exactly what the exporter traced); `pixart-export parity DIR` verifies the folder later.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export every graph to fp32 ONNX (no optimisation, no parity)",
                       description="Export text_encoder, transformer (one step), controlnet, the unrolled "
                                   "denoiser_lcm<K>, vae_decoder and vae_encoder to fp32 ONNX (opset 17, "
                                   "TorchScript exporter), with tokenizer files and manifest.json.")
    _options.add_model_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..build import build

    out, manifest, reused = build("ort-cpu", args.model, _options.check_out(args.out), args.controlnet,
                                  _options.parse_resolutions(args.resolution), args.steps, args.lcm_spacing,
                                  optimise=False, verify=False, log=lambda m: print(m, file=sys.stderr, flush=True))
    for rec in manifest["graphs"]:
        print(f"{rec['file']:44} {rec['bytes'] / 2**20:9.2f} MiB")
    return 0
