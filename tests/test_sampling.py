"""reference.schedules / reference.sampling against diffusers' schedulers, step by step, same noise.

Tolerance: the same float32 formulas; our c_skip/c_out are computed in Python floats (float64) and
applied to float32 tensors, diffusers computes them as float32 tensors, so a result may differ by
float32 ulps. Measured here: bit-identical for LCM 1, 2, 4, 8 steps and DDIM 4/25 steps; 3.8e-6 for LCM 7 steps
and 1.9e-6 for DDPM, on values of magnitude up to ~10. So we allow rtol 2e-6 + atol 1e-6: a few
float32 ulps (eps 1.2e-7) accumulated over the steps, and nothing a real formula error would give.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

from reference.sampling import add_noise, ddim_sample, ddpm_step, lcm_sample
from reference.schedules import alphas_cumprod, ddim_timesteps, draw_noise, lcm_scalings, lcm_timesteps

LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
SHAPE = (2, 4, 8, 8)


def fake_eps(x: torch.Tensor, t: float) -> torch.Tensor:
    """A deterministic stand-in for the DiT that depends on both x and t."""
    return 0.3 * x + math.sin(t / 100.0) * torch.tanh(x.flip(-1))


def test_alphas_match_diffusers():
    assert torch.equal(alphas_cumprod(), DDIMScheduler(**LINEAR).alphas_cumprod)


@pytest.mark.parametrize("steps", range(1, 9))
def test_lcm_diffusers_spacing_and_steps(steps):
    sched = LCMScheduler(
        **LINEAR,
        original_inference_steps=50,
        timestep_scaling=10.0,
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="epsilon",
    )
    sched.set_timesteps(steps)
    assert lcm_timesteps(steps, "diffusers") == sched.timesteps.tolist()

    g = torch.Generator().manual_seed(steps)
    x_t = torch.randn(SHAPE, generator=g)
    x = x_t.clone()
    for t in sched.timesteps:  # the diffusers loop, noise drawn inside from `g`
        out = sched.step(fake_eps(x, float(t)), t, x, generator=g)
        x, denoised = out.prev_sample, out.denoised
    g2 = torch.Generator().manual_seed(steps)
    torch.randn(SHAPE, generator=g2)  # x_T, as above
    noises = [torch.randn(SHAPE, generator=g2) for _ in range(steps - 1)]
    ours = lcm_sample(fake_eps, x_t, lcm_timesteps(steps, "diffusers"), noises, alphas_cumprod())
    torch.testing.assert_close(ours, denoised, rtol=2e-6, atol=1e-6)


def test_lcm_pixart_spacing():
    """Official PixArt-delta lcm_scheduler.py: every (50 // K)-th point of 19, 39, ..., 999 from the top."""
    assert lcm_timesteps(4, "pixart") == [999, 759, 519, 279]
    assert lcm_timesteps(4, "diffusers") == [999, 759, 499, 259]
    assert lcm_timesteps(1, "pixart") == [999]
    assert lcm_timesteps(2, "pixart") == [999, 499]
    assert lcm_timesteps(8, "pixart") == [999, 879, 759, 639, 519, 399, 279, 159]
    with pytest.raises(ValueError):
        lcm_timesteps(4, "karras")


def test_lcm_scalings_match_diffusers():
    sched = LCMScheduler(**LINEAR, timestep_scaling=10.0)
    for t in (0, 19, 259, 999):
        c_skip, c_out = sched.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        ours = lcm_scalings(t)
        assert ours == pytest.approx((float(c_skip), float(c_out)), rel=1e-6, abs=1e-9)
    assert lcm_scalings(0) == (1.0, 0.0)  # boundary condition f(x, 0) = x


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [4, 25])
def test_ddim_matches_diffusers(spacing, steps):
    sched = DDIMScheduler(
        **LINEAR,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing=spacing,
        prediction_type="epsilon",
    )
    sched.set_timesteps(steps)
    assert ddim_timesteps(steps, spacing) == sched.timesteps.tolist()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    want = x.clone()
    for t in sched.timesteps:
        want = sched.step(fake_eps(want, float(t)), t, want, eta=0.0).prev_sample
    ours = ddim_sample(fake_eps, x, ddim_timesteps(steps, spacing), alphas_cumprod())
    torch.testing.assert_close(ours, want, rtol=2e-6, atol=1e-6)


def test_ddpm_step_matches_diffusers():
    sched = DDPMScheduler(**LINEAR, clip_sample=False, variance_type="fixed_small")
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=g)
    ours = x.clone()
    ts = sched.timesteps.tolist()
    for i, t in enumerate(ts):
        want_prev = sched.step(fake_eps(x, float(t)), t, x, generator=torch.Generator().manual_seed(100 + i))
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + i)) if t > 0 else None
        ours = ddpm_step(fake_eps(x, float(t)), x, t, ts[i + 1] if i + 1 < len(ts) else -1, alphas_cumprod(), noise)
        torch.testing.assert_close(ours, want_prev.prev_sample, rtol=2e-6, atol=1e-6)
        x = want_prev.prev_sample


def test_add_noise_matches_diffusers():
    sched = DDPMScheduler(**LINEAR)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([0, 999])
    torch.testing.assert_close(
        add_noise(x0, noise, t, alphas_cumprod()), sched.add_noise(x0, noise, t), rtol=2e-6, atol=1e-6
    )


def test_noise_contract_is_numpy_pcg64():
    import numpy as np

    noise = draw_noise(7, 2, (4, 8, 8), 4)
    assert noise.shape == (4, 2, 4, 8, 8) and noise.dtype == np.float32
    # image i from its own seed (7 + i) alone: [K, C, h, w] draws, stacked on the batch axis
    for i in range(2):
        own = np.random.default_rng(7 + i).standard_normal((4, 4, 8, 8), dtype=np.float32)
        assert np.array_equal(noise[:, i], own)
    assert np.array_equal(draw_noise([8, 7], 2, (4, 8, 8), 4), noise[:, ::-1])  # a list: one seed per image
    assert np.array_equal(draw_noise(8, 1, (4, 8, 8), 4)[:, 0], noise[:, 1])  # the same alone as in a batch
    with pytest.raises(ValueError, match="one seed per image"):
        draw_noise([1, 2, 3], 2, (4, 8, 8), 4)


def test_lcm_needs_step_noise():
    with pytest.raises(ValueError, match="step noises"):
        lcm_sample(fake_eps, torch.zeros(SHAPE), [999, 499], [], alphas_cumprod())
