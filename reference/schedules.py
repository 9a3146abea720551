"""Noise schedule and timestep spacings of PixArt-alpha (teacher) and PixArt-delta (LCM student).

PixArt trains with DDPM's linear betas 1e-4..0.02 over 1000 steps (arXiv 2310.00426, Sec. 3.1).
The LCM student samples on the 50-step "original" grid t_i = 20 i - 1 (arXiv 2310.04378, Sec. 4.3;
PixArt-delta arXiv 2401.05252, Sec. 3). Two spacings of K steps on that grid exist in the wild and
give different timesteps for K = 4, so the choice is a named option:

- "diffusers": diffusers' `LCMScheduler.set_timesteps` (floor of evenly spaced indices into the
  reversed grid): 999, 759, 499, 259.
- "pixart": the official PixArt-delta `diffusion/lcm_scheduler.py` (every (50 // K)-th grid point
  from the top): 999, 759, 519, 279.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
LCM_ORIGINAL_STEPS = 50
LCM_TIMESTEP_SCALING = 10.0  # c_skip/c_out are evaluated at 10 t, "almost a delta function at t=0"
LCM_SIGMA_DATA = 0.5

LcmSpacing = Literal["diffusers", "pixart"]
LCM_SPACINGS: tuple[str, ...] = ("diffusers", "pixart")


def alphas_cumprod(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """alpha-bar_t for t = 0..T-1, float32 computed as diffusers does (linspace, cumprod in float32)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def lcm_timesteps(
    num_steps: int,
    spacing: LcmSpacing = "diffusers",
    original_steps: int = LCM_ORIGINAL_STEPS,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> list[int]:
    """The K LCM timesteps, descending, on the `original_steps` grid."""
    if not 1 <= num_steps <= original_steps:
        raise ValueError(f"LCM steps must be in 1..{original_steps}, got {num_steps}")
    k = num_train_timesteps // original_steps
    grid = np.arange(1, original_steps + 1) * k - 1  # 19, 39, ..., 999
    if spacing == "diffusers":
        reversed_grid = grid[::-1]
        idx = np.floor(np.linspace(0, len(reversed_grid), num=num_steps, endpoint=False)).astype(np.int64)
        steps = reversed_grid[idx]
    elif spacing == "pixart":
        skip = len(grid) // num_steps
        steps = grid[::-skip][:num_steps]
    else:
        raise ValueError(f"unknown LCM spacing {spacing!r}; choose one of {', '.join(LCM_SPACINGS)}")
    return [int(t) for t in steps]


def ddim_timesteps(
    num_steps: int, spacing: Literal["leading", "trailing"] = "leading", num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> list[int]:
    """DDIM timesteps as diffusers' `DDIMScheduler` lays them out (steps_offset 0)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_train_timesteps}, got {num_steps}")
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        steps = (np.arange(0, num_steps) * ratio).round()[::-1]
    elif spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        steps = np.round(np.arange(num_train_timesteps, 0, -ratio)) - 1
    else:
        raise ValueError(f"unknown DDIM spacing {spacing!r}; choose 'leading' or 'trailing'")
    return [int(t) for t in steps]


def lcm_scalings(
    timestep: float, timestep_scaling: float = LCM_TIMESTEP_SCALING, sigma_data: float = LCM_SIGMA_DATA
) -> tuple[float, float]:
    """Consistency-model boundary scalings (c_skip, c_out) at discrete timestep t (LCM eq. 9)."""
    scaled = timestep * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def draw_noise(
    seed: int | Sequence[int], num_images: int, latent_shape: tuple[int, int, int], steps: int
) -> np.ndarray:
    """All the noise one LCM generation uses: [K, B, C, h, w] float32; [0] is x_T, [1:] the step noise.

    The project's noise contract: image i's noise is numpy's PCG64 `default_rng(seeds[i]).standard_normal(
    (K, C, h, w))`, drawn from its own seed alone, so the same seed gives the same image on every backend
    and in any batch (the torch-free runtime draws it the same way). `seed`: one per image, or one int
    for the batch, which means seeds seed, seed+1, ..., seed+B-1.
    """
    if isinstance(seed, (int, np.integer)):
        seeds = [int(seed) + i for i in range(num_images)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != num_images:
            raise ValueError(f"{len(seeds)} seeds for {num_images} images: give one seed per image")
    shape = (max(steps, 1), *latent_shape)
    return np.stack([np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds], axis=1)
