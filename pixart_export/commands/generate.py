"""`pixart-export generate`: the reference pipeline in eager PyTorch, prompt -> PNG."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ._options import read_control_image
from ..progress import step_bar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="draw an image with the PyTorch reference (ground truth, eager fp32)",
        description="Run the reference pipeline: prompt -> T5 -> LCM (or the DDIM teacher) -> VAE -> PNG. "
                    "This is the ground truth every exported engine is compared with.")
    p.add_argument("--model", default="tiny", help="'tiny' (built in), a diffusers folder, or an official .pth")
    p.add_argument("--controlnet", default=None, help="ControlNet folder or official .pth ('tiny' for the built-in)")
    p.add_argument("--control-image", type=Path, default=None, help="condition image for the ControlNet")
    p.add_argument("--conditioning-scale", type=float, default=1.0, help="ControlNet residual scale (default 1)")
    p.add_argument("--prompt", required=True, help="text to draw")
    p.add_argument("--steps", type=int, default=4, help="sampler steps (LCM: 1-8, default 4)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; same seed, same image on every backend")
    p.add_argument("--resolution", type=int, nargs="+", default=None, metavar="PX",
                   help="image size: one value (square) or HEIGHT WIDTH; default: the model's native size")
    p.add_argument("--sampler", choices=["lcm", "ddim"], default="lcm",
                   help="lcm: PixArt-delta student (default); ddim: teacher with classifier-free guidance")
    p.add_argument("--guidance-scale", type=float, default=4.5, help="CFG scale for --sampler ddim (default 4.5)")
    p.add_argument("--lcm-spacing", choices=["diffusers", "pixart"], default=None,
                   help="LCM timestep spacing (default: diffusers for diffusers folders, pixart for .pth)")
    p.add_argument("--out", type=Path, default=Path("image.png"), help="output PNG path (default image.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UserError("empty prompt: give the text to draw with --prompt")
    if args.sampler == "lcm" and not 1 <= args.steps <= 8:
        raise UserError(f"--steps {args.steps}: LCM sampling takes 1 to 8 steps")
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.resolution is not None and len(args.resolution) not in (1, 2):
        raise UserError("--resolution takes one value (square) or two (HEIGHT WIDTH)")
    if args.control_image is not None and args.controlnet is None:
        raise UserError("--control-image needs --controlnet")
    if args.out.suffix.lower() != ".png":
        raise UserError(f"--out {args.out}: the output is a PNG, name it *.png")
    from reference.loading import load_model
    from reference.pipeline import ReferencePipeline

    control = read_control_image(args.control_image)
    model = load_model(args.model, controlnet=args.controlnet, lcm_spacing=args.lcm_spacing)
    resolution = None if args.resolution is None else (args.resolution * 2)[:2]
    with step_bar(args.steps, f"{args.sampler} sampling") as bar:
        image = ReferencePipeline(model)(args.prompt, steps=args.steps, seed=args.seed, resolution=resolution,
                                         sampler=args.sampler, guidance_scale=args.guidance_scale,
                                         control_image=control, conditioning_scale=args.conditioning_scale,
                                         progress=lambda i: bar.update(1))[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")
    return 0
