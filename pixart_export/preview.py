"""The preview decoder (issue 22, item 2): an optional `vae_decoder_preview` graph, a diffusers
`AutoencoderTiny` (TAESD's architecture) that reads the same scaled latents as the full VAE decoder at
a fraction of its cost. `build --preview-decoder DIR` adds it; `run --decoder preview` uses it; the full
decoder stays the default.

`DIR` is a diffusers `AutoencoderTiny` folder (`config.json` + weights; TAESD for the SD VAE that
PixArt-alpha uses), or `tiny` for the one distilled from the miniature's VAE
(`reference/assets/tiny/vae_preview`, `reference/train/preview_decoder.py`). Like the full decoder's graph
(`reference.vae.decode`), the preview graph divides the latents by its config's `scaling_factor` (1.0
for TAESD, which reads SD's scaled latents) and maps its [-1, 1] output to [0, 1].

The build checks that the folder reads *this* VAE's latents before anything is exported: the latents
the reference pipeline draws for the first `CHECK_PROMPTS` calibration prompts (seeds 0..), decoded by
both decoders, must agree within `MIN_PSNR_DB` mean PSNR (uint8 images). Measured on tiny: its distilled
preview decoder (MODEL_CARD.md) is well above, a randomly initialised `AutoencoderTiny` far below
(`tests/test_preview.py`). A preview decoder for another VAE's latent space decodes them into colour
noise; 20 dB is the usual floor of "the same picture, softer" (TAESD vs SD's VAE is reported around
25-30 dB; not measured here, no download). The figures go into the manifest (`build.preview_decoder`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import UserError

GRAPH = "vae_decoder_preview"
#: Calibration prompts whose reference latents the build's check decodes with both decoders.
CHECK_PROMPTS = 4
#: The check's threshold: mean PSNR (dB, uint8) of the preview's images against the full decoder's.
MIN_PSNR_DB = 20.0
#: The decoders `run --decoder` chooses between (the full one is the default).
DECODERS = ("full", "preview")


def resolve(spec: str | Path) -> Path:
    """The folder a `--preview-decoder` value names (`tiny`: the shipped one); UserError if it is not an
    `AutoencoderTiny` folder."""
    from reference.loading import TINY_DIR

    folder = TINY_DIR / "vae_preview" if str(spec) == "tiny" else Path(spec)
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"--preview-decoder {spec}: no config.json in {folder} (a diffusers AutoencoderTiny folder)")
    try:
        name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError) as exc:
        raise UserError(f"--preview-decoder {spec}: {config} is not readable JSON ({exc})") from None
    if name != "AutoencoderTiny":
        raise UserError(f"--preview-decoder {spec}: {config} describes a {name}, not a diffusers AutoencoderTiny")
    return folder


def load(folder: Path):
    """The `AutoencoderTiny` of a folder (safetensors weights), fp32, eval mode."""
    from diffusers import AutoencoderTiny

    try:
        return AutoencoderTiny.from_pretrained(str(folder), use_safetensors=True).float().eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"--preview-decoder {folder}: not loadable as an AutoencoderTiny ({exc})") from None


def digest(folder: Path) -> str:
    """Hash of the folder's config and weights (the build key changes with them)."""
    from reference.train.common import content_digest

    return content_digest(sorted(p for p in Path(folder).iterdir() if p.suffix in (".json", ".safetensors")))


def check(model, preview, resolution: tuple[int, int], steps: int, prompts: list[str]) -> dict:
    """The preview's images against the full decoder's on the reference latents of `prompts` (the
    calibration prompts, seed i for prompt i); UserError naming the figures where the mean PSNR is below
    `MIN_PSNR_DB`. Returns the figures for the manifest."""
    import torch

    from reference import vae as vae_io
    from reference.pipeline import ReferencePipeline

    from .metrics import psnr_uint8, ssim_uint8

    if preview.config.latent_channels != model.vae.config.latent_channels:
        raise UserError(
            f"--preview-decoder: it reads {preview.config.latent_channels}-channel latents; this model's VAE "
            f"makes {model.vae.config.latent_channels}"
        )
    pipe = ReferencePipeline(model)
    psnrs, ssims = [], []
    with torch.no_grad():
        for i, prompt in enumerate(prompts[:CHECK_PROMPTS]):
            latents = pipe([prompt], seed=i, steps=steps, resolution=resolution, output="latent")
            full = vae_io.decode(model.vae, latents)[0].numpy()
            got = vae_io.decode(preview, latents)[0].numpy()
            if got.shape != full.shape:
                raise UserError(
                    f"--preview-decoder: it decodes {tuple(latents.shape[-2:])} latents to {got.shape[-2:]} "
                    f"images; the full decoder to {full.shape[-2:]}"
                )
            psnrs.append(psnr_uint8(got, full))
            ssims.append(ssim_uint8(got, full))
    mean = float(sum(min(p, 100.0) for p in psnrs) / len(psnrs))
    figures = {
        "against": "the full VAE decoder, on the reference pipeline's latents of the first calibration prompts",
        "images": len(psnrs),
        "resolution": list(resolution),
        "mean_psnr_db": round(mean, 2),
        "min_psnr_db": round(min(psnrs), 2) if all(math.isfinite(p) for p in psnrs) else None,
        "mean_ssim": round(sum(ssims) / len(ssims), 4),
        "min_mean_psnr_db": MIN_PSNR_DB,
    }
    if mean < MIN_PSNR_DB:
        raise UserError(
            f"--preview-decoder: its images differ from this VAE's decoder on the calibration latents (mean "
            f"PSNR {mean:.1f} dB < {MIN_PSNR_DB:g} dB, SSIM {figures['mean_ssim']:.3f}): it was not trained "
            "for this VAE's latent space (give the AutoencoderTiny made for it, e.g. TAESD for the SD VAE)"
        )
    return figures
