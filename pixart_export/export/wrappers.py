"""What each graph computes, as a small torch module over the reference's own modules.

The wrappers add no arithmetic of their own: they call `reference` (the DiT, the ControlNet, the
VAE boundary functions and the very same `reference.sampling.lcm_sample`) with the graph's input
names as arguments, so an exported graph is the reference by construction and parity only measures
the backend.

Submodule names decide ONNX node names (the TorchScript exporter scopes nodes by module path), so
they are chosen to read well in patterns: `/transformer/transformer_blocks.3/attn1/...` for one step,
`/step.2/transformer/...` and `/step.2/controlnet/...` inside the unrolled denoiser. Each `step.i`
holds *the same* DiT (and ControlNet) object, so the exporter stores their weights once. ControlNet
copy j appears under `/step.i/controlnet/controlnet.j/copied_block/...` (its zero projection under
`.../controlnet.j/after_proj`); base block 0 as run by the ControlNet is
`/controlnet/transformer_blocks.0/`.
"""

from __future__ import annotations

import torch
from torch import nn

from reference import vae as vae_io
from reference.controlnet import PixArtControlNet
from reference.dit import PixArtDiT
from reference.sampling import lcm_sample
from reference.schedules import alphas_cumprod, lcm_scalings


def _broadcast_t(x: torch.Tensor, t: float) -> torch.Tensor:
    """[B] filled with t, batch taken from x at run time (traces to a dynamic-batch expression)."""
    return torch.ones_like(x[:, 0, 0, 0]) * t


class TextEncoderGraph(nn.Module):
    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids, attention_mask):
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)[0]


class TransformerGraph(nn.Module):
    """One step: the epsilon prediction (first 4 channels; the learned sigma is unused by LCM). Inputs in
    the order of `graphs.TRANSFORMER`: latents, timestep, prompt_embeds, prompt_attention_mask,
    control_residuals (then resolution, aspect_ratio for a multi-aspect model)."""

    def __init__(self, dit: PixArtDiT):
        super().__init__()
        self.transformer = dit

    def forward(self, *inputs):
        return self.transformer.predict_noise(*inputs)


class ControlNetGraph(nn.Module):
    """The control residuals of one step. Inputs in the order of `graphs.CONTROLNET`: latents, timestep,
    prompt_embeds, prompt_attention_mask, control_latents, conditioning_scale (then the size conditions)."""

    def __init__(self, dit: PixArtDiT, controlnet: PixArtControlNet):
        super().__init__()
        self.transformer = dit
        self.controlnet = controlnet

    def forward(self, *inputs):
        return self.controlnet(self.transformer, *inputs)


class LcmStep(nn.Module):
    """eps(x, t) of one unrolled step; `transformer`/`controlnet` are shared with every other step.

    `text` = (prompt_embeds, prompt_attention_mask); `control` = (control_latents, conditioning_scale),
    used when there is a ControlNet; `size` = (resolution, aspect_ratio), None for single-aspect models.
    """

    def __init__(self, dit: PixArtDiT, controlnet: PixArtControlNet | None):
        super().__init__()
        self.transformer = dit
        self.controlnet = controlnet

    def forward(self, x, t: float, text: tuple, control: tuple, size: tuple):
        ts = _broadcast_t(x, t)
        residuals = None
        if self.controlnet is not None:
            residuals = self.controlnet(self.transformer, x, ts, *text, *control, *size)
        return self.transformer.predict_noise(x, ts, *text, residuals, *size)


class DenoiserGraph(nn.Module):
    """The K-step LCM loop unrolled: `reference.sampling.lcm_sample` with step i calling `step[i]`.

    Timesteps, c_skip/c_out and alpha-bars are Python numbers at trace time, so they become graph
    constants; `constants()` lists them for the manifest.
    """

    def __init__(self, dit: PixArtDiT, controlnet: PixArtControlNet | None, timesteps: list[int]):
        super().__init__()
        self.timesteps = [int(t) for t in timesteps]
        self.step = nn.ModuleList([LcmStep(dit, controlnet) for _ in self.timesteps])
        self.alphas_cumprod = alphas_cumprod()  # plain attribute: indexed by Python ints -> constants

    def constants(self) -> dict:
        ac = self.alphas_cumprod
        return {
            "timesteps": self.timesteps,
            "c_skip": [lcm_scalings(float(t))[0] for t in self.timesteps],
            "c_out": [lcm_scalings(float(t))[1] for t in self.timesteps],
            "alphas_cumprod": [float(ac[t]) for t in self.timesteps],
        }

    def forward(self, latents, step_noise, prompt_embeds, prompt_attention_mask, *extra):
        """`extra`, in the graph's input order: (control_latents, conditioning_scale) with a ControlNet,
        then (resolution, aspect_ratio) for a multi-aspect model (see `graphs.graph_specs`)."""
        control_latents = conditioning_scale = resolution = aspect_ratio = None
        if self.step[0].controlnet is not None:
            control_latents, conditioning_scale, *extra = extra
        if extra:
            resolution, aspect_ratio = extra
        calls = iter(self.step)

        def eps(x, t):
            text = (prompt_embeds, prompt_attention_mask)
            return next(calls)(x, t, text, (control_latents, conditioning_scale), (resolution, aspect_ratio))

        noises = [step_noise[i] for i in range(len(self.timesteps) - 1)]
        return lcm_sample(eps, latents, self.timesteps, noises, self.alphas_cumprod)


class VaeGraph(nn.Module):
    """`vae_decoder` / `vae_encoder`: a boundary function of `reference.vae` over the VAE (scaling and
    the [0, 1] image range live there, so the graph is the reference by construction)."""

    boundary = None  # vae_io.decode or vae_io.encode

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        return type(self).boundary(self.vae, x)


class VaeDecoderGraph(VaeGraph):
    boundary = staticmethod(vae_io.decode)


class VaeEncoderGraph(VaeGraph):
    boundary = staticmethod(vae_io.encode)
