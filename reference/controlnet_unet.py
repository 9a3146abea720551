"""ControlNet-UNet on the PixArt DiT: the baseline design of PixArt-delta's ablation (arXiv 2401.05252
Sec. 3.2, Fig. 4b), kept for that comparison only; nothing exports it.

Following the original ControlNet, the first half of the L base blocks is the "encoder" and the
second half the "decoder". Trainable copies of the M = L/2 encoder blocks run on the embedded
latents plus the zero-initialised projection of the condition (the input the base encoder sees, as
ControlNet's copy of a UNet encoder does); the output of copy i goes through a zero-initialised
linear layer and is added into the "skip connection" of the mirrored decoder block, i.e. to the
input of base block L-1-i (the deepest copy feeds the first decoder block):

    h0 = copy_0(x + before_proj(c)),   hi = copy_i(h_{i-1}),   residual_i = after_proj_i(hi)
    input of base block L-1-i += conditioning_scale * residual_i

It has the parameters of a ControlNet-Transformer with N = M copies (`ControlBlock` is shared), so
the two designs are compared at equal size. Freshly initialised it adds exact zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from .controlnet import ControlBlock
from .dit import PixArtDiT


class ControlledDiTUNet(nn.Module):
    """Base DiT (frozen, not owned by the optimiser) + ControlNet-UNet copies, in one forward."""

    def __init__(self, base: PixArtDiT, num_copies: int | None = None):
        super().__init__()
        layers = base.config.num_layers
        self.num_copies = layers // 2 if num_copies is None else num_copies
        if not 1 <= self.num_copies <= layers // 2:
            raise ValueError(f"ControlNet-UNet copies {self.num_copies}: give 1..{layers // 2} (half of {layers})")
        hidden = base.config.inner_dim
        self.base = base
        self.controlnet = nn.ModuleList(
            [ControlBlock(base.transformer_blocks[j], hidden, first=(j == 0)) for j in range(self.num_copies)]
        )

    def trainable(self) -> nn.Module:
        return self.controlnet

    def forward(
        self,
        latents,
        timestep,
        prompt_embeds,
        prompt_attention_mask,
        control_latents,
        conditioning_scale=1.0,
        resolution=None,
        aspect_ratio=None,
    ) -> torch.Tensor:
        base, copies = self.base, self.controlnet
        layers = len(base.transformer_blocks)
        x, cond = base.embed(latents, timestep, prompt_embeds, prompt_attention_mask, resolution, aspect_ratio)
        h = x + copies[0].before_proj(base.pos_embed(control_latents.to(x.dtype)))
        into = {}  # base block index -> residual added to its input
        for i, copy in enumerate(copies):
            h, residual = copy(base, h, cond)
            into[layers - 1 - i] = residual
        for index, block in enumerate(base.transformer_blocks):
            if index in into:
                x = x + conditioning_scale * into[index]
            x = base.run_block(block, x, cond)
        return base.final(x, cond)
