"""reference.controlnet: zero-init gives the base output exactly; split path == fused upstream order."""

from __future__ import annotations

import pytest
import torch

from reference.config import ControlNetConfig
from reference.controlnet import ControlledDiT, PixArtControlNet
from reference.dit import PixArtDiT
from tests.conftest import SMALL_512, SMALL_1024_MS, random_inputs


def _randomise_projections(net: PixArtControlNet) -> None:
    with torch.no_grad():
        for block in net.controlnet:
            for proj in (block.before_proj, block.after_proj):
                if proj is not None:
                    proj.weight.normal_(0, 0.1)
                    proj.bias.normal_(0, 0.1)


def test_fresh_controlnet_is_exactly_zero():
    base = PixArtDiT(SMALL_512, text_len=12).eval()
    net = PixArtControlNet(base, ControlNetConfig(num_copies=2)).eval()
    latents, t, embeds, mask = random_inputs(SMALL_512)
    control = torch.randn_like(latents)
    with torch.no_grad():
        residuals = net(base, latents, t, embeds, mask, control)
        plain = base(latents, t, embeds, mask)
        fused = ControlledDiT(base, net)(latents, t, embeds, mask, control)
        with_zero = base(latents, t, embeds, mask, control_residuals=residuals)
    assert residuals.shape == (2, 2, 16, SMALL_512.inner_dim)  # [N,B,T,D]
    assert torch.count_nonzero(residuals) == 0
    assert torch.equal(fused, plain)  # exact: adding zeros changes no bit
    assert torch.equal(with_zero, plain)


def test_copies_start_as_base_blocks():
    base = PixArtDiT(SMALL_512, text_len=12)
    net = PixArtControlNet(base, ControlNetConfig(num_copies=2))
    for j, block in enumerate(net.controlnet):
        for (name, a), (_, b) in zip(
            block.copied_block.state_dict().items(), base.transformer_blocks[j].state_dict().items()
        ):
            assert torch.equal(a, b), name
        assert block.copied_block is not base.transformer_blocks[j]  # trainable copy, not shared
    assert net.controlnet[0].before_proj is not None and net.controlnet[1].before_proj is None


@pytest.mark.parametrize("config", [SMALL_512, SMALL_1024_MS], ids=["512", "1024-ms"])
def test_split_equals_fused(config):
    """Residuals computed by their own module and fed in == upstream's interleaved forward.
    Same fp32 ops in the same order, so equal to rounding: atol 1e-6 on O(1) outputs."""
    base = PixArtDiT(config, text_len=12).eval()
    net = PixArtControlNet(base, ControlNetConfig(num_copies=2)).eval()
    _randomise_projections(net)
    latents, t, embeds, mask = random_inputs(config)
    control = torch.randn_like(latents)
    kw = {}
    if config.resolved_additional_conditions:
        kw = {"resolution": torch.tensor([[64.0, 64.0]] * 2), "aspect_ratio": torch.tensor([[1.0]] * 2)}
    scale = 0.7
    with torch.no_grad():
        residuals = net(base, latents, t, embeds, mask, control, scale, **kw)
        split = base(latents, t, embeds, mask, control_residuals=residuals, **kw)
        fused = ControlledDiT(base, net)(latents, t, embeds, mask, control, scale, **kw)
        plain = base(latents, t, embeds, mask, **kw)
    torch.testing.assert_close(split, fused, rtol=0, atol=1e-6)
    assert (split - plain).abs().max() > 1e-3  # the control path really changed the output


def test_residual_j_enters_block_j_plus_1():
    """A residual only in slot j must leave blocks 0..j untouched: check via a hook on block j+1."""
    base = PixArtDiT(SMALL_512, text_len=12).eval()
    latents, t, embeds, mask = random_inputs(SMALL_512)
    seen = {}
    hooks = [
        blk.register_forward_pre_hook(lambda m, a, kw, i=i: seen.__setitem__(i, a[0].clone()), with_kwargs=True)
        for i, blk in enumerate(base.transformer_blocks)
    ]
    with torch.no_grad():
        base(latents, t, embeds, mask)
        clean = dict(seen)
        residuals = torch.zeros(2, 2, 16, SMALL_512.inner_dim)
        residuals[1] = 1.0
        base(latents, t, embeds, mask, control_residuals=residuals)
    for h in hooks:
        h.remove()
    assert torch.equal(seen[0], clean[0]) and torch.equal(seen[1], clean[1])
    torch.testing.assert_close(seen[2] - 1.0, clean[2], rtol=0, atol=1e-6)


def test_too_many_copies_rejected():
    base = PixArtDiT(SMALL_512, text_len=12)
    with pytest.raises(ValueError, match="num_copies"):
        PixArtControlNet(base, ControlNetConfig(num_copies=3))
