"""reference.pipeline end to end on `tiny`, against diffusers' PixArtAlphaPipeline with LCMScheduler.

Same weights (diffusers loads our tiny folder as it is), same x_T and same step noise (drawn from one
torch generator in diffusers' order), 4 LCM steps, no guidance. Both run identical fp32 modules, so
the images agree to float32 rounding: max |diff| <= 1e-5 on [0, 1] pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import PixArtAlphaPipeline

from reference import vae as vae_io
from reference.errors import ModelError
from reference.loading import TINY_DIR, load_model
from reference.pipeline import ReferencePipeline
from reference.sampling import lcm_sample
from reference.schedules import alphas_cumprod, lcm_timesteps
from tests._controlnet import controlnet_under_test

PROMPTS = ["a small red circle above a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", controlnet=controlnet_under_test())


def test_matches_diffusers_pixart_alpha_pipeline(tiny):
    pipe = PixArtAlphaPipeline.from_pretrained(str(TINY_DIR), local_files_only=True)
    shape = (len(PROMPTS), 4, 16, 16)
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = pipe(
        PROMPTS,
        num_inference_steps=4,
        guidance_scale=0.0,
        latents=x_t.clone(),
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
        clean_caption=False,
        use_resolution_binning=False,
        height=128,
        width=128,
    ).images

    ref = ReferencePipeline(tiny)
    embeds, mask = ref.encode(PROMPTS)
    g = torch.Generator().manual_seed(1)
    noises = [torch.randn(shape, generator=g) for _ in range(3)]
    eps = ref.eps_fn(embeds, mask, 128, 128)
    with torch.no_grad():
        latents = lcm_sample(eps, x_t, lcm_timesteps(4, "diffusers"), noises, alphas_cumprod())
        got = vae_io.decode(tiny.vae, latents)
    err = (got - want).abs().max().item()
    print(f"reference vs diffusers PixArtAlphaPipeline (tiny, LCM 4): max|diff| {err:.3e}")
    assert err <= 1e-5


def test_same_seed_same_image_and_seeds_differ(tiny):
    ref = ReferencePipeline(tiny)
    a = ref(PROMPTS[0], seed=3, output="pt")
    b = ref(PROMPTS[0], seed=3, output="pt")
    c = ref(PROMPTS[0], seed=4, output="pt")
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert a.shape == (1, 3, 128, 128) and 0 <= a.min() and a.max() <= 1


def test_noise_contract(tiny):
    """The pipeline's randomness is exactly draw_noise(seed): [0] is x_T, [1:] the LCM step noise.
    Every backend's runtime reproduces this, so the same seed gives the same image everywhere."""
    from reference.schedules import draw_noise

    ref = ReferencePipeline(tiny)
    got = ref(PROMPTS, seed=5, output="latent")
    noise = torch.from_numpy(draw_noise(5, 2, (4, 16, 16), 4))
    embeds, mask = ref.encode(PROMPTS)
    with torch.no_grad():
        want = lcm_sample(
            ref.eps_fn(embeds, mask, 128, 128),
            noise[0],
            lcm_timesteps(4, "diffusers"),
            list(noise[1:]),
            alphas_cumprod(),
        )
    assert torch.equal(got, want)


def test_control_image_changes_output(tiny):
    ref = ReferencePipeline(tiny)
    plain = ref(PROMPTS[0], seed=0, output="pt")
    from PIL import Image

    control = Image.fromarray((np.indices((128, 128)).sum(0) % 32 * 8).astype(np.uint8)).convert("RGB")
    controlled = ref(PROMPTS[0], seed=0, control_image=control, output="pt")
    zero = ref(PROMPTS[0], seed=0, control_image=control, conditioning_scale=0.0, output="pt")
    assert (plain - controlled).abs().max() > 1e-4
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)


def test_teacher_ddim_with_guidance_runs(tiny):
    images = ReferencePipeline(tiny)(PROMPTS[0], steps=3, sampler="ddim", guidance_scale=4.5)
    assert images[0].size == (128, 128)


def test_non_square_resolution(tiny):
    out = ReferencePipeline(tiny)(PROMPTS[0], resolution=(64, 128), output="pt")
    assert out.shape == (1, 3, 64, 128)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"resolution": 100}, "unsupported resolution"),
        ({"prompts": ""}, "empty prompt"),
        ({"sampler": "euler"}, "unknown sampler"),
    ],
)
def test_bad_input(tiny, kwargs, match):
    kwargs = {"prompts": PROMPTS[0], **kwargs}
    with pytest.raises(ModelError, match=match):
        ReferencePipeline(tiny)(**kwargs)
