"""Shared fixtures: small configs and seeded inputs. Tests never touch the network, except
test_tensorrt_api.py: it downloads TensorRT binding wheels from PyPI once into a cache, and skips offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from reference.config import DiTConfig  # noqa: E402

#: 512-style (single aspect): sample_size 64 would be 512 px; a smaller grid keeps it fast.
SMALL_512 = DiTConfig(
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=3,
    cross_attention_dim=32,
    caption_channels=24,
    sample_size=8,
    patch_size=2,
    interpolation_scale=1,
    use_additional_conditions=False,
)
#: 1024 multi-aspect style: sample_size 128 turns on the resolution/aspect-ratio conditions as in
#: PixArt-XL-2-1024-MS; the width must divide by 3 for those embedders.
SMALL_1024_MS = DiTConfig(
    num_attention_heads=2,
    attention_head_dim=24,
    num_layers=3,
    cross_attention_dim=48,
    caption_channels=24,
    sample_size=128,
    patch_size=2,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_inputs(
    config: DiTConfig, batch: int = 2, hw: tuple[int, int] = (8, 8), text_len: int = 12, padded: bool = True
):
    """Latents, timesteps, caption embeddings and a mask (row i keeps the first text_len - 3 i tokens)."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, config.in_channels, *hw, generator=g)
    timestep = torch.tensor([999.0, 259.0, 10.0, 500.0][:batch])
    embeds = torch.randn(batch, text_len, config.caption_channels, generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    if padded:
        for i in range(batch):
            mask[i, text_len - 3 * (i + 1) :] = 0
    return latents, timestep, embeds, mask


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
