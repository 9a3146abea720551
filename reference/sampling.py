"""Samplers as pure functions: the model is a callable, the noise is an argument, nothing is drawn inside.

    eps_fn(x [B,C,h,w], t: float) -> eps [B,C,h,w]

- `lcm_sample`: LCM multistep sampling (Luo et al., arXiv 2310.04378, Algorithm 3), the PixArt-delta
  sampler; numerically the step of diffusers' `LCMScheduler` (epsilon prediction, final alpha 1).
- `ddim_sample` / `ddim_step`: DDIM, eta = 0 (Song et al., arXiv 2010.02502, eq. 12); also the ODE
  solver Psi of Latent Consistency Distillation (PixArt-delta Algorithm 1).
- `ddpm_step`: ancestral DDPM step (Ho et al., arXiv 2006.11239, Algorithm 2).
- `guided`: classifier-free guidance (Ho & Salimans, arXiv 2207.12598) around any eps_fn pair.
The same `lcm_sample` runs in the reference pipeline and inside the exported unrolled graph.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .schedules import lcm_scalings

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]


def _alpha(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """alpha-bar_t, with alpha-bar_{-1} = 1 (diffusers' `set_alpha_to_one`)."""
    return alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=alphas_cumprod.dtype)


def predict_x0(eps: torch.Tensor, x: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = _alpha(alphas_cumprod, t)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0) for a batch of integer timesteps t [B]."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def lcm_step(
    eps: torch.Tensor,
    x: torch.Tensor,
    t: int,
    t_prev: int | None,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LCM step: (x for the next step, denoised x0 estimate). Last step: t_prev None, no noise."""
    c_skip, c_out = lcm_scalings(float(t))
    denoised = c_out * predict_x0(eps, x, t, alphas_cumprod) + c_skip * x
    if t_prev is None:
        return denoised, denoised
    if noise is None:
        raise ValueError("a non-final LCM step needs its noise")
    a_prev = _alpha(alphas_cumprod, t_prev)
    return a_prev.sqrt() * denoised + (1 - a_prev).sqrt() * noise, denoised


def lcm_sample(
    eps_fn: EpsFn,
    x: torch.Tensor,
    timesteps: Sequence[int],
    noises: Sequence[torch.Tensor],
    alphas_cumprod: torch.Tensor,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """K-step LCM sampling from x_T = `x`; `noises` holds the K-1 fresh noises of steps 2..K."""
    if len(noises) < len(timesteps) - 1:
        raise ValueError(f"{len(timesteps)} LCM steps need {len(timesteps) - 1} step noises, got {len(noises)}")
    denoised = x
    for i, t in enumerate(timesteps):
        last = i == len(timesteps) - 1
        eps = eps_fn(x, float(t))
        x, denoised = lcm_step(
            eps, x, int(t), None if last else int(timesteps[i + 1]), alphas_cumprod, None if last else noises[i]
        )
        if callback:
            callback(i)
    return denoised


def ddim_step(eps: torch.Tensor, x: torch.Tensor, t: int, t_prev: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update x_t -> x_{t_prev} (t_prev < 0 means the clean end, alpha-bar 1)."""
    a_prev = _alpha(alphas_cumprod, t_prev)
    return a_prev.sqrt() * predict_x0(eps, x, t, alphas_cumprod) + (1 - a_prev).sqrt() * eps


def ddim_sample(
    eps_fn: EpsFn,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """DDIM, eta 0, from x_T = `x` over descending `timesteps`; the step after the last lands at t = -1."""
    for i, t in enumerate(timesteps):
        t_prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
        x = ddim_step(eps_fn(x, float(t)), x, int(t), t_prev, alphas_cumprod)
        if callback:
            callback(i)
    return x


def ddpm_step(
    eps: torch.Tensor, x: torch.Tensor, t: int, t_prev: int, alphas_cumprod: torch.Tensor, noise: torch.Tensor | None
) -> torch.Tensor:
    """Ancestral step x_t -> x_{t_prev} with the posterior's "small" variance (no noise at the end)."""
    a_t, a_prev = _alpha(alphas_cumprod, t), _alpha(alphas_cumprod, t_prev)
    beta = 1 - a_t / a_prev
    x0 = predict_x0(eps, x, t, alphas_cumprod)
    mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
    if t_prev < 0 or noise is None:
        return mean
    var = (1 - a_prev) / (1 - a_t) * beta
    return mean + var.clamp(min=1e-20).sqrt() * noise


def guided(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_u + w (eps_c - eps_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)
