"""PixArt-delta's ControlNet-Transformer (arXiv 2401.05252, Sec. 4 and Fig. 5).

Follows upstream `diffusion/model/nets/pixart_controlnet.py` (`ControlT2IDitBlockHalf`,
`ControlPixArtHalf`), restated so that the residuals are a separate output:

    x0 = base block 0 (frozen, shared) on the embedded latents
    c  = base patch embedding + positions of the condition's latents        [B,T,D]
    h0 = copy_0(x0 + before_proj(c))            before_proj zero-initialised
    hj = copy_j(h_{j-1})                        copy j initialised from base block j, j < N
    residual_j = after_proj_j(hj)               after_proj zero-initialised
    base block j+1 input += conditioning_scale * residual_j

Because copy 0 sees only block 0's output, the residuals do not depend on base blocks 1..27, so one
graph can compute them and the transformer graph consume them (`control_residuals` [N,B,T,D]).
A freshly initialised ControlNet returns exact zeros, which leave the base output unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import ControlNetConfig
from .dit import PixArtDiT


class ControlBlock(nn.Module):
    """One trainable copy with its zero projections; names follow upstream's state-dict layout."""

    def __init__(self, base_block: nn.Module, hidden: int, first: bool):
        super().__init__()
        self.copied_block = copy.deepcopy(base_block)
        self.before_proj = nn.Linear(hidden, hidden) if first else None
        self.after_proj = nn.Linear(hidden, hidden)
        for proj in (self.before_proj, self.after_proj):
            if proj is not None:
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    def forward(self, base: PixArtDiT, h: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(copy's output, its residual). Called as a module so traced node names carry the copy index
        (`/controlnet/controlnet.3/copied_block/...`)."""
        h = base.run_block(self.copied_block, h, cond)
        return h, self.after_proj(h)


class PixArtControlNet(nn.Module):
    """Produces the N control residuals; the base model is an argument, never owned or copied."""

    def __init__(self, base: PixArtDiT, config: ControlNetConfig):
        super().__init__()
        config.check_base(base.config)
        self.config = config
        hidden = base.config.inner_dim
        self.controlnet = nn.ModuleList(
            [ControlBlock(base.transformer_blocks[j], hidden, first=(j == 0)) for j in range(config.num_copies)]
        )

    def forward(
        self,
        base: PixArtDiT,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        control_latents: torch.Tensor,
        conditioning_scale: torch.Tensor | float = 1.0,
        resolution: torch.Tensor | None = None,
        aspect_ratio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Residuals [N,B,T,D] for `base`, already multiplied by `conditioning_scale`."""
        x, cond = base.embed(latents, timestep, prompt_embeds, prompt_attention_mask, resolution, aspect_ratio)
        x0 = base.run_block(base.transformer_blocks[0], x, cond)
        c = base.pos_embed(control_latents.to(x.dtype))
        h = x0 + self.controlnet[0].before_proj(c)
        residuals = []
        for block in self.controlnet:
            h, residual = block(base, h, cond)
            residuals.append(residual)
        return torch.stack(residuals) * conditioning_scale


class ControlledDiT(nn.Module):
    """Base DiT + ControlNet fused, in upstream's interleaved order (copy j, then base block j+1).

    This is the form training uses; the split form (`PixArtControlNet` then `PixArtDiT` with
    `control_residuals`) is what the graphs implement, and the tests hold the two equal.
    """

    def __init__(self, base: PixArtDiT, controlnet: PixArtControlNet):
        super().__init__()
        self.base = base
        self.controlnet = controlnet

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
        base, copies = self.base, self.controlnet.controlnet
        x, cond = base.embed(latents, timestep, prompt_embeds, prompt_attention_mask, resolution, aspect_ratio)
        x = base.run_block(base.transformer_blocks[0], x, cond)
        h = x + copies[0].before_proj(base.pos_embed(control_latents.to(x.dtype)))
        for index in range(1, len(base.transformer_blocks)):
            if index <= len(copies):
                h, residual = copies[index - 1](base, h, cond)
                x = x + conditioning_scale * residual
            x = base.run_block(base.transformer_blocks[index], x, cond)
        return base.final(x, cond)
