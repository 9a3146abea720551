#!/usr/bin/env python3
"""An XL-size PixArt-delta model folder with random weights, for latency measurements (no download).

Transformer: PixArt-XL-2 at 512 px (28 blocks, 16 heads x 72 = 1152 wide, caption_channels 4096,
64x64 latents, `DiTConfig` defaults), random weights. Text encoder: a small 2-layer T5 of width 4096
stands in for T5-XXL (it only has to produce [B,120,4096] captions; its latency is *not* T5-XXL's,
the tables say so). VAE: Stable Diffusion's `AutoencoderKL` configuration (the real decoder cost),
random weights. Tokenizer: ByT5 (bytes, no vocabulary file). Scheduler: LCM. A diffusers-layout
folder, so `pixart-export build --model DIR` and `PixArtAlphaPipeline.from_pretrained(DIR)` load it.

    .venv/bin/python benchmarks/xl_model.py runs/xl-random
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reference.tiny import TINY_T5, TINY_VAE, write_pipeline_files  # noqa: E402

#: The tiny T5's configuration at T5-XXL's width (d_model 4096); only the widths change.
XL_T5_STANDIN = {**TINY_T5, "d_model": 4096, "d_kv": 64, "d_ff": 1024, "num_heads": 8}
#: The tiny VAE's configuration at Stable Diffusion's size (the real decoder cost).
SD_VAE = {
    **TINY_VAE,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512],
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


def make_xl(out: Path, seed: int = 0) -> Path:
    import shutil

    from transformers import T5Config, T5EncoderModel

    out = Path(out)
    if (out / "model_index.json").exists():
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_xl_dit(tmp / "transformer", seed)
    T5EncoderModel(T5Config(**XL_T5_STANDIN)).eval().save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
    write_tokenizer_vae_scheduler(tmp)
    tmp.rename(out)
    return out


def write_xl_dit(folder: Path, seed: int = 0, size: int = 512) -> int:
    """PixArt-XL-2's DiT with random weights (seeded), saved to `folder`; its parameter count. `size`
    512: PixArt-XL-2-512x512; 1024: PixArt-XL-2-1024-MS (sample size 128, with the resolution and
    aspect-ratio conditions)."""
    import torch

    from reference.config import DiTConfig
    from reference.dit import PixArtDiT
    from reference.loading import save_dit

    if size not in (512, 1024):
        raise ValueError(f"size {size}: 512 or 1024")
    torch.manual_seed(seed)
    dit = PixArtDiT(DiTConfig(sample_size=size // 8), text_len=None)
    with torch.no_grad():  # as if trained: no all-zero (zero-initialised) projections
        for p in dit.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.02)
    save_dit(dit, folder)
    return sum(p.numel() for p in dit.parameters())


def write_tokenizer_vae_scheduler(folder: Path) -> None:
    """ByT5's tokenizer, the SD VAE (random weights) and the LCM scheduler + model_index of a model folder."""
    from diffusers import AutoencoderKL
    from transformers import ByT5Tokenizer

    from reference.text import MAX_TEXT_LEN

    ByT5Tokenizer(model_max_length=MAX_TEXT_LEN).save_pretrained(str(folder / "tokenizer"))
    AutoencoderKL(**SD_VAE).save_pretrained(str(folder / "vae"), safe_serialization=True)
    write_pipeline_files(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    print(make_xl(parser.parse_args().out))


if __name__ == "__main__":
    main()
