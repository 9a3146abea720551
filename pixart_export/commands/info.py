"""`pixart-export info`: what a model folder or checkpoint holds (layout, sizes, parameter counts).

Load a model (tiny, diffusers folder or official .pth) and report what was found.
"""

from __future__ import annotations

import argparse

from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(sub, __doc__, "info", help="describe a model: layout, config, sizes, parameter counts")
    p.add_argument("--model", default="tiny", help="'tiny', a diffusers folder, or an official .pth")
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
    from reference.loading import load_model

    m = load_model(args.model, controlnet=args.controlnet)
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
