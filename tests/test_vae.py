"""reference.vae: the [0,1]-image / scaled-latent boundary around diffusers' AutoencoderKL."""

from __future__ import annotations

import torch

from reference import vae as vae_io
from reference.loading import load_model


def test_boundaries_match_diffusers_conventions():
    vae = load_model("tiny").vae
    image = torch.rand(1, 3, 64, 64)
    latents = vae_io.encode(vae, image)
    with torch.no_grad():
        want = vae.encode(image * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        torch.testing.assert_close(latents, want, rtol=0, atol=0)
        decoded = vae_io.decode(vae, latents)
        raw = vae.decode(latents / vae.config.scaling_factor).sample
    assert latents.shape == (1, 4, 8, 8) and decoded.shape == (1, 3, 64, 64)
    torch.testing.assert_close(decoded, (raw / 2 + 0.5).clamp(0, 1), rtol=0, atol=0)
    assert decoded.min() >= 0 and decoded.max() <= 1
    assert torch.equal(vae_io.encode(vae, image), latents)  # the posterior mean: deterministic
