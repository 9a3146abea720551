"""reference.tiny: the built-in model is a diffusers-layout folder of safetensors, built deterministically."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from reference.loading import TINY_DIR
from reference.tiny import TINY_DIT, build_tiny


def test_shipped_folder_layout():
    for sub in ("transformer", "text_encoder", "tokenizer", "vae", "scheduler", "controlnet"):
        assert (TINY_DIR / sub).is_dir(), sub
    assert json.loads((TINY_DIR / "model_index.json").read_text())["_class_name"] == "PixArtAlphaPipeline"
    assert not list(TINY_DIR.rglob("*.bin")) and not list(TINY_DIR.rglob("*.pth"))  # safetensors only
    config = json.loads((TINY_DIR / "transformer" / "config.json").read_text())
    assert config["num_layers"] == TINY_DIT.num_layers and config["sample_size"] == TINY_DIT.sample_size


def test_build_is_deterministic(tmp_path):
    a, b = build_tiny(tmp_path / "a"), build_tiny(tmp_path / "b")
    for rel in (
        "transformer/diffusion_pytorch_model.safetensors",
        "controlnet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ):
        sa, sb = load_file(str(a / rel)), load_file(str(b / rel))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), rel
    assert not list(tmp_path.glob(".tiny-*"))  # the temporary build folder is gone
