"""The built-in `tiny` model: the PixArt-delta code paths at a size that runs in seconds on a CPU.

Same modules as XL with a small config: a 6-block DiT of width 128 on 16x16 latents (128 px), a
2-layer T5 encoder with transformers' `ByT5Tokenizer` (bytes, so no vocabulary file), a small
4-level `AutoencoderKL` (8x downsampling, like SD's VAE), LCM scheduler settings, and a 2-copy
ControlNet. `build_tiny` writes the *untrained* model, deterministic from a fixed seed, as a
diffusers-layout folder of safetensors (which `PixArtAlphaPipeline.from_pretrained` can also load):
the starting point of `reference/train/` (teacher `--base`). The shipped copy,
reference/assets/tiny, is the trained one that `reference.train.package` writes (MODEL_CARD.md).

    python -m reference.tiny OUT_DIR     # the random, untrained tiny
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from .config import ControlNetConfig, DiTConfig
from .controlnet import PixArtControlNet
from .dit import PixArtDiT
from .loading import save_controlnet, save_dit
from .schedules import BETA_END, BETA_START, LCM_ORIGINAL_STEPS, LCM_TIMESTEP_SCALING, NUM_TRAIN_TIMESTEPS
from .text import MAX_TEXT_LEN

SEED = 20240110
TINY_DIT = DiTConfig(
    num_attention_heads=4,
    attention_head_dim=32,
    num_layers=6,
    cross_attention_dim=128,
    caption_channels=64,
    sample_size=16,
    patch_size=2,
    in_channels=4,
    out_channels=8,
)
TINY_CONTROLNET = ControlNetConfig(num_copies=2)
TINY_T5 = dict(
    vocab_size=384,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    tie_word_embeddings=False,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=16,
    block_out_channels=[32, 32, 64, 64],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    sample_size=128,
    scaling_factor=1.0,
)


def write_pipeline_files(folder: Path) -> None:
    """The LCM scheduler config and `model_index.json` of a diffusers-layout PixArt folder (the tiny
    model's and the XL-size benchmark model's alike)."""
    from diffusers import LCMScheduler

    LCMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="linear",
        original_inference_steps=LCM_ORIGINAL_STEPS,
        timestep_scaling=LCM_TIMESTEP_SCALING,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
    ).save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "PixArtAlphaPipeline",
                "scheduler": ["diffusers", "LCMScheduler"],
                "text_encoder": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "ByT5Tokenizer"],
                "transformer": ["diffusers", "PixArtTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            indent=2,
        )
        + "\n"
    )


def build_tiny(out: Path, seed: int = SEED) -> Path:
    """Write the tiny model folder to `out` (replaced atomically)."""
    from diffusers import AutoencoderKL
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent if out.parent.exists() else None))
    try:
        torch.manual_seed(seed)
        dit = PixArtDiT(TINY_DIT, text_len=MAX_TEXT_LEN)
        save_dit(dit, tmp / "transformer")
        net = PixArtControlNet(dit, TINY_CONTROLNET)
        with torch.no_grad():  # shipped as if trained: non-zero projections so the path is exercised
            for p in net.parameters():
                if p.ndim == 2 and p.abs().sum() == 0:
                    p.normal_(0.0, 0.02)
        save_controlnet(net, tmp / "controlnet", dit)
        text_encoder = T5EncoderModel(T5Config(**TINY_T5)).eval()
        text_encoder.save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
        ByT5Tokenizer(model_max_length=MAX_TEXT_LEN).save_pretrained(str(tmp / "tokenizer"))
        AutoencoderKL(**TINY_VAE).save_pretrained(str(tmp / "vae"), safe_serialization=True)
        write_pipeline_files(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is ordinary data
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    print(build_tiny(args.out, args.seed))


if __name__ == "__main__":
    main()
