"""The reference text-to-image pipeline: prompt -> T5 -> sampler over the DiT -> VAE decode -> images.

The ground truth every exported backend is compared with. Randomness is one call to
`schedules.draw_noise(seed, ...)` made up front; the sampler functions draw nothing.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import vae as vae_io
from .errors import ModelError
from .loading import PixArtModel
from .sampling import ddim_sample, guided, lcm_sample
from .schedules import alphas_cumprod, ddim_timesteps, draw_noise, lcm_timesteps
from .text import encode_prompts


def parse_resolution(resolution: int | Sequence[int] | None, model: PixArtModel) -> tuple[int, int]:
    """(height, width) in pixels, checked against the VAE factor times the patch size."""
    if resolution is None:
        h = w = model.default_resolution
    elif isinstance(resolution, int):
        h = w = resolution
    else:
        h, w = (int(v) for v in resolution)
    if error := model.resolution_error(h, w):
        raise ModelError(error)
    return h, w


def size_conditions(height: int, width: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-aspect models' extra conditions, as diffusers' PixArtAlphaPipeline builds them."""
    resolution = torch.tensor([[float(height), float(width)]]).repeat(batch, 1)
    aspect = torch.tensor([[float(height / width)]]).repeat(batch, 1)
    return resolution, aspect


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B,3,H,W] in [0,1] -> PIL, rounding as diffusers' image processor does."""
    arr = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def image_to_tensor(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """PIL -> [1,3,H,W] in [0,1], resized to the generation size."""
    image = image.convert("RGB").resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


class ReferencePipeline:
    """Eager PyTorch, fp32: the numbers every backend must reproduce."""

    def __init__(self, model: PixArtModel):
        self.model = model
        self.alphas_cumprod = alphas_cumprod()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for p in prompts:
            if not p or not p.strip():
                raise ModelError("empty prompt: give the text to draw")
        return encode_prompts(self.model.tokenizer, self.model.text_encoder, prompts)

    @torch.no_grad()
    def null_embeds(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional branch of guidance: the learned null caption (all tokens attended), or,
        for models without one (diffusers folders), T5 on the empty prompt as diffusers does."""
        null = self.model.dit.null_caption
        if null is not None and null.shape[0] == length:
            return null[None].expand(batch, -1, -1), torch.ones(batch, length, dtype=torch.int64, device=null.device)
        return encode_prompts(self.model.tokenizer, self.model.text_encoder, [""] * batch, length)

    def eps_fn(
        self,
        embeds,
        mask,
        height,
        width,
        residuals_fn: Callable | None = None,
        uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
        guidance_scale: float = 1.0,
    ):
        """eps(x, t) for the samplers; with `uncond`, classifier-free guidance over one batched call."""
        dit = self.model.dit
        batch = embeds.shape[0]
        res, ar = (v.to(embeds.device) for v in size_conditions(height, width, batch))

        def eps(x: torch.Tensor, t: float) -> torch.Tensor:
            ts = torch.full((batch,), t, dtype=torch.float32, device=x.device)
            if uncond is None:
                residuals = residuals_fn(x, ts, embeds, mask) if residuals_fn else None
                return dit.predict_noise(x, ts, embeds, mask, residuals, res, ar)
            x2, ts2 = torch.cat([x, x]), torch.cat([ts, ts])
            e2, m2 = torch.cat([uncond[0], embeds]), torch.cat([uncond[1], mask])
            residuals = residuals_fn(x2, ts2, e2, m2) if residuals_fn else None  # control on both branches
            both = dit.predict_noise(x2, ts2, e2, m2, residuals, torch.cat([res, res]), torch.cat([ar, ar]))
            e_u, e_c = both.chunk(2)
            return guided(e_c, e_u, guidance_scale)

        return eps

    @torch.no_grad()
    def __call__(
        self,
        prompts: str | list[str],
        steps: int = 4,
        seed: int = 0,
        resolution: int | Sequence[int] | None = None,
        sampler: str = "lcm",
        guidance_scale: float = 4.5,
        control_image: Image.Image | Sequence[Image.Image] | None = None,
        conditioning_scale: float = 1.0,
        progress: Callable[[int], None] | None = None,
        output: str = "pil",
        ddim_spacing: str = "leading",
        seeds: Sequence[int] | None = None,
    ):
        """Images for `prompts`. `sampler`: "lcm" (PixArt-delta, no guidance) or "ddim" (teacher, CFG; a
        ControlNet's residuals are added on both branches of guidance, as ControlNet does);
        `control_image`: one for every prompt, or a list of one per prompt;
        `ddim_spacing`: "leading" (diffusers' DDIMScheduler default) or "trailing" (starts at t=999,
        the fair choice for few steps); `seeds`: one per prompt (default: seed, seed+1, ...), each image's
        noise from its own seed alone (`schedules.draw_noise`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ModelError("no prompt given")
        height, width = parse_resolution(resolution, self.model)
        f = self.model.vae_scale_factor
        latent_shape = (self.model.dit.config.in_channels, height // f, width // f)
        embeds, mask = self.encode(prompts)
        seeds = seed if seeds is None else seeds
        noise = torch.from_numpy(draw_noise(seeds, len(prompts), latent_shape, steps if sampler == "lcm" else 1))
        noise = noise.to(self.model.dit.proj_out.weight.device)  # CPU unless the caller moved the model

        residuals_fn = None
        if control_image is not None:
            if self.model.controlnet is None:
                raise ModelError("a control image needs a model with a ControlNet (--controlnet)")
            controls = control_image if isinstance(control_image, (list, tuple)) else [control_image]
            if len(controls) not in (1, len(prompts)):
                raise ModelError(f"{len(controls)} control images for {len(prompts)} prompts: give one, or one each")
            pixels = torch.cat([image_to_tensor(c, height, width) for c in controls])
            control = vae_io.encode(self.model.vae, pixels.to(noise.device)).expand(len(prompts), -1, -1, -1)

            def residuals_fn(x, ts, e, m):
                """Residuals for a batch of n copies of the prompts (guidance: unconditional, then conditional)."""
                n = x.shape[0] // len(prompts)
                res, ar = (v.to(x.device) for v in size_conditions(height, width, x.shape[0]))
                c = control.repeat(n, 1, 1, 1)
                return self.model.controlnet(self.model.dit, x, ts, e, m, c, conditioning_scale, res, ar)

        if sampler == "lcm":
            timesteps = lcm_timesteps(steps, self.model.lcm_spacing)
            eps = self.eps_fn(embeds, mask, height, width, residuals_fn)
            latents = lcm_sample(eps, noise[0], timesteps, list(noise[1:]), self.alphas_cumprod, progress)
        elif sampler == "ddim":
            uncond = self.null_embeds(len(prompts), embeds.shape[1]) if guidance_scale != 1.0 else None
            eps = self.eps_fn(embeds, mask, height, width, residuals_fn, uncond, guidance_scale)
            latents = ddim_sample(eps, noise[0], ddim_timesteps(steps, ddim_spacing), self.alphas_cumprod, progress)
        else:
            raise ModelError(f"unknown sampler {sampler!r}; choose 'lcm' or 'ddim'")
        if output == "latent":
            return latents
        images = vae_io.decode(self.model.vae, latents)
        return images if output == "pt" else to_pil(images)
