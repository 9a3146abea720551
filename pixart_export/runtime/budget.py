"""How many images one call of the graphs may carry: a batch is split into chunks whose estimated
activation memory fits a budget, so `run --num-images 200` never asks a backend's arena for more
than the host has.

The estimate is deliberately simple and errs high: the largest live activations of the two graphs
that dominate, per image, in fp32 (what CPU backends hold; a GPU engine in fp16 holds less):

- the transformer: hidden states and the feed-forward's 4x expansion at every token, plus one
  attention score matrix (heads x tokens x tokens), times a factor for the tensors alive around it;
- the VAE decoder: its widest feature map at full resolution and the one before the last upsample.
"""

from __future__ import annotations

from ..manifest import Manifest

DEFAULT_BUDGET_GIB = 4.0
#: Live tensors around the largest activation (inputs, outputs, residuals and the backend's workspace).
LIVE_FACTOR = 4


def bytes_per_image(manifest: Manifest, height: int, width: int) -> int:
    """Estimated peak activation bytes one image adds to a chunk at `height` x `width`."""
    dit = manifest.model.configs.get("transformer", {})
    vae = manifest.model.configs.get("vae", {})
    f = manifest.vae_scale_factor
    patch = int(dit.get("patch_size", 2))
    tokens = (height // f // patch) * (width // f // patch)
    hidden = int(dit.get("num_attention_heads", 16)) * int(dit.get("attention_head_dim", 72))
    heads = int(dit.get("num_attention_heads", 16))
    transformer = tokens * hidden * 5 + heads * tokens * tokens
    widths = vae.get("block_out_channels") or [128, 256, 512, 512]
    decoder = height * width * int(widths[0]) * 2 + (height // 2) * (width // 2) * int(widths[min(1, len(widths) - 1)])
    return 4 * LIVE_FACTOR * max(transformer, decoder)


def chunk_size(manifest: Manifest, height: int, width: int, budget: int | None, runner_max: int | None = None) -> int:
    """Images per chunk: as many as fit `budget` bytes (at least one), never above the runner's maximum
    batch (a TensorRT profile's)."""
    budget = int(DEFAULT_BUDGET_GIB * 2**30) if budget is None else int(budget)
    n = max(1, budget // max(1, bytes_per_image(manifest, height, width)))
    return min(n, runner_max) if runner_max else n
