"""The VAE at the pipeline's boundaries: images in [0, 1], latents in the DiT's scaled space.

diffusers' `AutoencoderKL` works on images in [-1, 1] and unscaled latents; PixArt (like Stable
Diffusion) multiplies latents by the config's `scaling_factor` so they have roughly unit variance.
These two functions are the `vae_encoder` / `vae_decoder` graph contracts of ARCHITECTURE.md.
"""

from __future__ import annotations

import torch


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B,4,h,w] -> image [B,3,8h,8w] in [0, 1]."""
    image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


def encode(vae, image: torch.Tensor) -> torch.Tensor:
    """Image [B,3,H,W] in [0, 1] -> scaled latents (the posterior's mean, no sampling: deterministic)."""
    posterior = vae.encode(image * 2 - 1).latent_dist
    return posterior.mean * vae.config.scaling_factor
