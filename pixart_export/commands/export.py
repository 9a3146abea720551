"""`pixart-export export`: the fp32 ONNX graphs of ARCHITECTURE.md, tokenizer and manifest, no parity.

The ort-cpu build without optimisation and verification (so it is fast and the graphs are exactly
what the exporter traced); `pixart-export parity DIR` verifies the folder later, and `build
--onnx-from DIR` turns it into any other target without exporting again.

Export text_encoder, transformer (one step), controlnet, the unrolled denoiser_lcm<K>, vae_decoder
and vae_encoder to fp32 ONNX (opset 17, TorchScript exporter), with tokenizer files and
manifest.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(sub, __doc__, "export", help="export every graph to fp32 ONNX (no optimisation, no parity)")
    _options.add_model_options(p)
    _options.add_graph_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    p.add_argument("--force", action="store_true", help="export again even if an identical folder exists")
    p.add_argument(
        "--preview-decoder",
        default=None,
        metavar="DIR",
        help="also export vae_decoder_preview from this diffusers AutoencoderTiny folder ('tiny' for the built-in's)",
    )
    _options.add_json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..build import BuildRequest, build
    from ..targets import get_target

    _options.check_steps(args.steps)
    target = get_target("ort-cpu")
    request = BuildRequest(
        target=target,
        model_spec=args.model,
        out=_options.check_out(args.out),
        controlnet_spec=args.controlnet,
        resolutions=list(dict.fromkeys(args.resolution)) if args.resolution else None,
        steps=args.steps,
        lcm_spacing=args.lcm_spacing,
        verify=False,
        force=args.force,
        options={"optimise": False},
        preview_decoder=args.preview_decoder,
    )
    out, manifest, reused = build(request)
    if args.json:
        _options.emit_json(
            {
                "folder": str(out),
                "reused": reused,
                "graphs": [{"file": r.file, "bytes": r.bytes} for r in manifest.graphs],
            }
        )
        return 0
    for rec in manifest.graphs:
        print(f"{rec.file:44} {rec.bytes / 2**20:9.2f} MiB")
    return 0
