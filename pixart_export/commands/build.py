"""`pixart-export build`: model -> engine folder for a target, in one command (see pixart_export.build).

Build an engine folder: export the graphs, prepare them for the target's backend (optimise,
quantise, convert, compile), verify every graph and the whole pipeline against the reference, write
manifest.json; built in a temporary folder and renamed into place. An identical rebuild (same build
key, files intact) is reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..targets import TARGETS, backends
from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(
        sub, __doc__, "build", help="export, prepare, verify and write an engine folder for a target"
    )
    p.add_argument(
        "--target",
        required=True,
        choices=list(TARGETS),
        metavar="TARGET",
        help=f"one of: {', '.join(TARGETS)} (see `pixart-export targets`)",
    )
    _options.add_model_options(p)
    _options.add_graph_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None, help="engine folder (default engines/<target>-<model>)")
    g.add_argument("--force", action="store_true", help="rebuild even if an identical engine exists")
    g.add_argument(
        "--onnx-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="take the fp32 graphs from this `export` folder of the same model instead of exporting "
        "again (XL exports take long); its files are checked against its manifest",
    )
    g.add_argument(
        "--preview-decoder",
        default=None,
        metavar="DIR",
        help="add the vae_decoder_preview graph: a diffusers AutoencoderTiny folder made for this VAE (TAESD for "
        "the SD VAE; 'tiny' for the built-in's); the build checks that it reads this VAE's latents",
    )
    _options.add_json_option(g)
    seen = set()
    for backend in backends():  # one option group per backend, listed under its name
        if backend.name not in seen:
            seen.add(backend.name)
            backend.add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..build import BuildRequest, build
    from ..targets import get_target

    target = get_target(args.target)
    _options.check_steps(args.steps)
    out = None if args.out is None else _options.check_out(args.out)
    request = BuildRequest(
        target=target,
        model_spec=args.model,
        out=out,
        controlnet_spec=args.controlnet,
        resolutions=list(dict.fromkeys(args.resolution)) if args.resolution else None,
        steps=args.steps,
        lcm_spacing=args.lcm_spacing,
        force=args.force,
        options=target.backend.options(target, args),
        onnx_from=args.onnx_from,
        preview_decoder=args.preview_decoder,
    )
    out, manifest, reused = build(request)
    if args.json:
        _options.emit_json(
            {
                "folder": str(out),
                "reused": reused,
                "target": manifest.target,
                "status": manifest.status,
                "precisions": [str(p) for p in manifest.precisions],
                "parity_ok": None if manifest.parity is None else manifest.parity.ok,
                "build_key": manifest.build_key,
            }
        )
    else:
        print(out)
    return 0
