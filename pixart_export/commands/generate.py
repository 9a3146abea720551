"""`pixart-export generate`: the reference pipeline in eager PyTorch, prompt -> PNG.

Run the reference pipeline: prompt -> T5 -> LCM (or the DDIM teacher) -> VAE -> PNG. This is the
ground truth every exported engine is compared with.
"""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..progress import LOGGER, step_bar
from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(
        sub, __doc__, "generate", help="draw an image with the PyTorch reference (ground truth, eager fp32)"
    )
    _options.add_model_options(p)
    _options.add_image_options(p, "the model's native size")
    p.add_argument(
        "--steps", type=_options.int_range(1, 1000), default=4, help="sampler steps (LCM: 1-8, DDIM: 1-1000; default 4)"
    )
    p.add_argument(
        "--sampler",
        choices=["lcm", "ddim"],
        default="lcm",
        help="lcm: the PixArt-delta student's 4-step sampler (default); ddim: DDIM with "
        "classifier-free guidance, the teacher's sampler (on `tiny` it runs the shipped teacher, "
        "`tiny-teacher`)",
    )
    p.add_argument(
        "--guidance-scale",
        type=_options.float_range(*_options.GUIDANCE_SCALE),
        default=4.5,
        help="CFG scale for --sampler ddim, %g to %g (default 4.5)" % _options.GUIDANCE_SCALE,
    )
    p.add_argument(
        "--decoder",
        choices=("full", "preview"),
        default="full",
        help="full: the model's VAE decoder (default); preview: a small AutoencoderTiny decoder (--preview-decoder)",
    )
    p.add_argument(
        "--preview-decoder",
        default=None,
        metavar="DIR",
        help="the diffusers AutoencoderTiny folder --decoder preview uses (default for --model tiny: the built-in's)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _options.check_prompt(args.prompt)
    _options.check_steps(args.steps, args.sampler)
    _options.check_png_out(args.out)
    if args.control_image is not None and args.controlnet is None:
        raise UserError("--control-image needs --controlnet")
    import torch

    from reference.loading import load_model, model_for_sampler, resolve_controlnet
    from reference.pipeline import ReferencePipeline
    from reference.vocab import tiny_prompt_warning

    if warning := tiny_prompt_warning(args.model, args.prompt):
        LOGGER.warning(warning)
    folder = resolve_controlnet(args.controlnet) if args.control_image is not None else None
    control = _options.read_checked_control(args, folder)
    # `tiny` with ddim: the guided teacher where it is shipped (the student's weights otherwise)
    model = load_model(
        model_for_sampler(args.model, args.sampler), controlnet=args.controlnet, lcm_spacing=args.lcm_spacing
    )
    preview = None
    if args.decoder == "preview":
        from .. import preview as preview_decoder

        spec = args.preview_decoder or ("tiny" if args.model == "tiny" else None)
        if spec is None:
            raise UserError("--decoder preview needs --preview-decoder DIR (a diffusers AutoencoderTiny folder)")
        preview = preview_decoder.load(preview_decoder.resolve(spec))
    with step_bar(args.steps, f"{args.sampler} sampling") as bar:
        image = ReferencePipeline(model)(
            args.prompt,
            steps=args.steps,
            seed=args.seed,
            resolution=args.resolution,
            sampler=args.sampler,
            guidance_scale=args.guidance_scale,
            control_image=control,
            conditioning_scale=args.conditioning_scale,
            progress=lambda i: bar.update(1),
            output="pil" if preview is None else "latent",
        )
    if preview is None:
        image = image[0]
    else:
        from reference import vae as vae_io
        from reference.pipeline import to_pil

        with torch.no_grad():
            image = to_pil(vae_io.decode(preview, image))[0]
    _options.save_png(image, args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")
    return 0
