"""`pixart-export info`: what a model folder or checkpoint holds (layout, sizes, parameter counts), or
what an engine folder holds and how its build went (`pixart-export info ENGINE_DIR`).

Load a model (tiny, diffusers folder or official .pth) and report what was found. Given an engine
folder, read its manifest: target, graphs, and each build stage's wall time and peak RSS.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(sub, __doc__, "info", help="describe a model: layout, config, sizes, parameter counts")
    p.add_argument("engine", type=Path, nargs="?", default=None, help="an engine folder (instead of --model)")
    p.add_argument("--model", default=None, help="'tiny' (default), a diffusers folder, or an official .pth")
    p.add_argument("--controlnet", default=None, help="ControlNet folder or official .pth ('tiny' for the built-in)")
    _options.add_json_option(p)
    p.set_defaults(func=run)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _disk(path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args: argparse.Namespace) -> int:
    if args.engine is not None:
        return _engine_info(args)
    from reference.loading import load_model

    m = load_model(args.model or "tiny", controlnet=args.controlnet)
    cfg = m.dit.config
    report = {
        "source": str(m.source),
        "layout": m.layout,
        "bytes_on_disk": _disk(m.source),
        "transformer": {
            **cfg.to_dict(),
            "parameters": _params(m.dit),
            "hidden": cfg.inner_dim,
            "multi_aspect": cfg.resolved_additional_conditions,
            "learned_null_caption": m.dit.null_caption is not None,
        },
        "controlnet": None
        if m.controlnet is None
        else {"copies": m.controlnet.config.num_copies, "parameters": _params(m.controlnet)},
        "text_encoder": {
            "class": type(m.text_encoder).__name__,
            "layers": m.text_encoder.config.num_layers,
            "width": m.text_encoder.config.d_model,
            "parameters": _params(m.text_encoder),
            "tokenizer": type(m.tokenizer).__name__,
        },
        "vae": {"parameters": _params(m.vae), "scaling_factor": m.scaling_factor, "downsampling": m.vae_scale_factor},
        "default_resolution": m.default_resolution,
        "lcm_spacing": m.lcm_spacing,
    }
    if args.json:
        _options.emit_json(report)
        return 0
    t = report["transformer"]
    print(f"model        {report['source']} ({report['layout']} layout, {report['bytes_on_disk'] / 2**20:.1f} MiB)")
    print(
        f"transformer  {t['num_layers']} blocks, width {t['hidden']} ({t['num_attention_heads']} heads x "
        f"{t['attention_head_dim']}), patch {t['patch_size']}, {t['parameters'] / 1e6:.2f} M params"
        f"{', multi-aspect' if t['multi_aspect'] else ''}"
        f"{', learned null caption' if t['learned_null_caption'] else ''}"
    )
    if report["controlnet"]:
        c = report["controlnet"]
        print(f"controlnet   {c['copies']} copies, {c['parameters'] / 1e6:.2f} M params")
    te = report["text_encoder"]
    print(
        f"text encoder {te['class']} {te['layers']} layers, width {te['width']}, {te['parameters'] / 1e6:.2f} M "
        f"params, tokenizer {te['tokenizer']}"
    )
    v = report["vae"]
    print(
        f"vae          {v['parameters'] / 1e6:.2f} M params, {v['downsampling']}x downsampling, "
        f"scaling factor {v['scaling_factor']}"
    )
    print(f"resolution   {report['default_resolution']} px native; LCM spacing '{report['lcm_spacing']}'")
    return 0


def _engine_info(args: argparse.Namespace) -> int:
    """An engine folder's manifest: target, graphs, and the build's stages (wall time, peak RSS)."""
    from ..errors import UserError
    from ..manifest import read_manifest
    from ..resources import format_stage

    if args.model is not None or args.controlnet is not None:
        raise UserError("give an engine folder or --model/--controlnet, not both")
    m = read_manifest(args.engine)
    stages = m.build.get("stages", [])
    report = {
        "folder": str(args.engine),
        "target": m.target,
        "backend": {"name": m.backend.name, "version": m.backend.version},
        "status": m.status,
        "model": m.model.spec,
        "controlnet": m.model.controlnet_spec,
        "resolutions": [list(r) for r in m.resolutions],
        "graphs": [
            {
                "graph": r.graph,
                "file": r.file,
                "precision": str(r.precision),
                "bytes": sum(m.files[f].bytes for f in r.files if f in m.files),
            }
            for r in m.runnable
        ],
        "build_seconds": m.build.get("seconds"),
        "stages": stages,
    }
    if args.json:
        _options.emit_json(report)
        return 0
    print(f"engine       {report['folder']}: {m.target} ({m.backend.name} {m.backend.version}), status {m.status}")
    print(f"model        {m.model.spec}" + (f" + ControlNet {m.model.controlnet_spec}" if m.model.controlnet else ""))
    print(f"resolutions  {', '.join(f'{h}x{w}' for h, w in m.resolutions)}")
    for g in report["graphs"]:
        print(f"graph        {g['graph']:<28} {g['precision']:<12} {g['bytes'] / 2**20:9.1f} MiB  {g['file']}")
    if not stages:
        print("build stages not recorded (a folder built before pixart-export recorded them)")
    for i, rec in enumerate(stages, 1):
        print(f"stage {i:<6} {format_stage(rec)}  {rec['name']}")
    if report["build_seconds"] is not None:
        print(f"build        {report['build_seconds']} s in all")
    return 0
