"""The PixArt-alpha/delta diffusion transformer, assembled from diffusers' modules.

Follows PixArt-alpha (arXiv 2310.00426, Sec. 2.3 and Fig. 4) as implemented upstream in
`diffusion/model/nets/PixArt.py` / `PixArtMS.py` and in diffusers' `PixArtTransformer2DModel`:

    latents [B,4,h,w] --PatchEmbed (conv p x p + 2-D sin-cos positions)--> x [B,T,D], T=(h/p)(w/p)
    timestep [B] --sinusoid--> MLP --> t [B,D]  (+ resolution / aspect-ratio embeddings, 1024-MS)
    t --SiLU, Linear (adaLN-single, `t_block`)--> t_mod [B,6D], shared by every block
    caption [B,L,C_text] --MLP (caption projection)--> y [B,L,D]
    28 x block(x, y, t_mod): self-attn, cross-attn to y (text mask as an additive bias), MLP,
                             each modulated by the block's scale-shift table + t_mod
    final layer: LayerNorm, scale/shift from (table + t), Linear --> unpatchify --> [B,2*4,h,w]

Differences from diffusers' class, all deliberate:
- `control_residuals` [N,B,T,D] (PixArt-delta, arXiv 2401.05252 Sec. 4): residual j is added to the
  input of block j+1, exactly where upstream `ControlPixArtHalf.forward` adds `c_skip`.
- the forward is split into `embed` / `run_block` / `final` so the ControlNet can reuse the frozen
  base embedding and block 0 without copying them, and the export can trace each piece.
- `null_caption` [L,C_text]: the learned null caption embedding (upstream `y_embedder.y_embedding`)
  used for classifier-free guidance; diffusers drops it. It is `None` when a model folder has none.
The text mask is always a dense additive bias (no xformers, no sequence packing), so the forward
traces to a static graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from .config import DiTConfig

#: Additive bias for masked-out text tokens, as diffusers uses (finite, so fp16 graphs keep it).
MASK_BIAS = -10000.0


@dataclass
class Conditioning:
    """Everything the blocks need besides the token stream; computed once per step."""

    t_mod: torch.Tensor  # [B, 6D] adaLN-single modulation shared by all blocks
    t_emb: torch.Tensor  # [B, D]  timestep embedding, modulates the final layer
    captions: torch.Tensor  # [B, L, D] projected text tokens
    caption_bias: torch.Tensor  # [B, 1, L] 0 for kept tokens, MASK_BIAS for padding
    grid: tuple[int, int]  # (h/p, w/p) token grid


def mask_to_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B,L] 1/0 mask -> [B,1,L] additive bias, the form diffusers' attention consumes."""
    return ((1 - mask.to(dtype)) * MASK_BIAS).unsqueeze(1)


class PixArtDiT(nn.Module):
    """PixArt DiT. Parameter names equal diffusers' `PixArtTransformer2DModel`, so its state dicts load 1:1."""

    def __init__(self, config: DiTConfig, text_len: int | None = 120):
        super().__init__()
        self.config = config
        d = config.inner_dim
        self.pos_embed = PatchEmbed(
            height=config.sample_size,
            width=config.sample_size,
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            embed_dim=d,
            interpolation_scale=config.resolved_interpolation_scale,
        )
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    d,
                    config.num_attention_heads,
                    config.attention_head_dim,
                    cross_attention_dim=config.cross_attention_dim,
                    activation_fn="gelu-approximate",
                    num_embeds_ada_norm=1000,
                    attention_bias=True,
                    norm_type="ada_norm_single",
                    norm_elementwise_affine=False,
                    norm_eps=config.norm_eps,
                )
                for _ in range(config.num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.proj_out = nn.Linear(d, config.patch_size**2 * config.out_channels)
        self.adaln_single = AdaLayerNormSingle(d, use_additional_conditions=config.resolved_additional_conditions)
        self.caption_projection = PixArtAlphaTextProjection(in_features=config.caption_channels, hidden_size=d)
        # Learned null caption in T5 space (upstream: randn / sqrt(C_text)).
        self.null_caption = (
            nn.Parameter(torch.randn(text_len, config.caption_channels) / config.caption_channels**0.5)
            if text_len
            else None
        )

    # -- pieces -------------------------------------------------------------------------------
    def embed(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        resolution: torch.Tensor | None = None,
        aspect_ratio: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Conditioning]:
        """Patch-embed the latents and build the shared conditioning. Returns (tokens [B,T,D], cond)."""
        batch = latents.shape[0]
        p = self.config.patch_size
        grid = (latents.shape[-2] // p, latents.shape[-1] // p)
        x = self.pos_embed(latents)
        added = None
        if self.config.resolved_additional_conditions:
            if resolution is None or aspect_ratio is None:
                raise ValueError("this multi-aspect model needs `resolution` [B,2] and `aspect_ratio` [B,1]")
            added = {"resolution": resolution.to(x.dtype), "aspect_ratio": aspect_ratio.to(x.dtype)}
        t_mod, t_emb = self.adaln_single(timestep, added, batch_size=batch, hidden_dtype=x.dtype)
        captions = self.caption_projection(prompt_embeds)
        bias = mask_to_bias(prompt_attention_mask, x.dtype)
        return x, Conditioning(t_mod=t_mod, t_emb=t_emb, captions=captions, caption_bias=bias, grid=grid)

    def run_block(self, block: nn.Module, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One PixArt block (works for the base blocks and the ControlNet's copies)."""
        return block(
            x, encoder_hidden_states=cond.captions, encoder_attention_mask=cond.caption_bias, timestep=cond.t_mod
        )

    def final(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Final adaLN layer and unpatchify: [B,T,D] -> [B,out_channels,h,w]."""
        shift, scale = (self.scale_shift_table[None] + cond.t_emb[:, None]).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale) + shift
        x = self.proj_out(x)
        gh, gw = cond.grid
        p, c = self.config.patch_size, self.config.out_channels
        x = x.reshape(-1, gh, gw, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(-1, c, gh * p, gw * p)

    # -- whole model --------------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        control_residuals: torch.Tensor | None = None,
        resolution: torch.Tensor | None = None,
        aspect_ratio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model output [B,out_channels,h,w]; `control_residuals` [N,B,T,D] or None."""
        x, cond = self.embed(latents, timestep, prompt_embeds, prompt_attention_mask, resolution, aspect_ratio)
        n_res = 0 if control_residuals is None else control_residuals.shape[0]
        if n_res >= len(self.transformer_blocks):
            raise ValueError(f"{n_res} control residuals for {len(self.transformer_blocks)} blocks")
        for index, block in enumerate(self.transformer_blocks):
            if 1 <= index <= n_res:
                x = x + control_residuals[index - 1]
            x = self.run_block(block, x, cond)
        return self.final(x, cond)

    def predict_noise(self, *args, **kwargs) -> torch.Tensor:
        """The epsilon prediction: the first `in_channels` of the output (the rest is learned sigma)."""
        return self(*args, **kwargs)[:, : self.config.in_channels]

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without `null_caption`: exactly diffusers' `PixArtTransformer2DModel` keys."""
        return {k: v for k, v in self.state_dict().items() if k != "null_caption"}
