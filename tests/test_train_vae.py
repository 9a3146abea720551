"""reference/train/vae.py (smoke): a few steps of the VAE stage lower the loss, the scaling factor
makes the latents unit-variance, and the checkpoint holds plain tensors only."""

from __future__ import annotations

import json

import numpy as np
import torch

from reference import vae as vae_io
from reference.train import data, vae
from reference.train.common import LossLog


def test_vae_stage_learns_and_sets_scaling_factor(tmp_path):
    from diffusers import AutoencoderKL

    out = tmp_path / "vae"
    vae.main(
        [
            "--out",
            str(out),
            "--steps",
            "30",
            "--batch-size",
            "4",
            "--num-images",
            "32",
            "--crop",
            "32",
            "--lr",
            "1e-3",
            "--scale-images",
            "16",
            "--ckpt-every",
            "15",
            "--no-progress",
        ]
    )
    loss = LossLog(out, ["loss", "l1", "kl"], resume_step=30, enabled=False).read()["loss"]
    assert len(loss) == 30
    assert loss[-5:].mean() < 0.5 * loss[:5].mean(), loss

    model = AutoencoderKL.from_pretrained(str(out / "vae"), local_files_only=True).eval()
    summary = json.loads((out / "summary.json").read_text())
    assert abs(model.config.scaling_factor - 1 / summary["latent_std"]) < 1e-6
    images, _, _ = data.dataset(1, 16, 128)  # the images the std was measured on (seed + 1)
    with torch.no_grad():
        z = vae_io.encode(model, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert abs(float(z.std()) - 1.0) < 1e-3

    state = json.loads((out / "ckpt" / "state.json").read_text())
    assert state["step"] == 30
    opt = torch.load(out / "ckpt" / "optimizer.pt", weights_only=True)
    assert opt["state"] and np.isfinite(float(opt["param_groups"][0]["lr"]))
