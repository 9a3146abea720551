"""Stage 1: train the tiny `AutoencoderKL` on the generated scenes and set its latent scaling factor.

Loss: L1 reconstruction of random crops (the VAE is convolutional; crops keep CPU steps cheap) plus a
small KL term per latent element, as Stable Diffusion's VAE minus its perceptual and GAN terms. At
the end, `scaling_factor` = 1 / std of the posterior means over `--scale-images` full images (as SD's
0.18215 was measured), so the DiT sees latents of unit variance.

    python -m reference.train.vae --out runs/vae [--steps 1500] [--crop 64]
    torchrun --nproc_per_node 2 -m reference.train.vae --out runs/vae
Writes `<out>/vae/` (diffusers folder), `<out>/loss.csv`, `<out>/loss.png` (with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ..tiny import TINY_VAE
from . import common, data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, steps=1500, batch_size=16, lr=5e-4)
    parser.add_argument("--crop", type=int, default=64, help="training crop size in px (default 64)")
    parser.add_argument("--size", type=int, default=128, help="image size in px (default 128, tiny's)")
    parser.add_argument("--num-images", type=int, default=4096, help="training images (default 4096)")
    parser.add_argument("--kl-weight", type=float, default=1e-4, help="KL weight per latent element (default 1e-4)")
    parser.add_argument("--scale-images", type=int, default=256, help="images to measure the latent std (default 256)")
    return parser.parse_args(argv)


class VaeObjective(torch.nn.Module):
    """encode -> sample -> decode in one `forward`, so DDP (accelerate) syncs its gradients."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(L1 reconstruction error, KL per latent element) for images x in [0, 1]."""
        posterior = self.vae.encode(x * 2 - 1).latent_dist
        recon = self.vae.decode(posterior.sample(generator=generator)).sample
        l1 = (recon - (x * 2 - 1)).abs().mean()
        return l1, posterior.kl().mean() / posterior.mean[0].numel()


def crops(images: np.ndarray, crop: int, rng: np.random.Generator) -> torch.Tensor:
    """Random crops (offsets on the 8-px latent grid) -> [B,3,crop,crop] in [0,1]."""
    size = images.shape[1]
    out = []
    for img in images:
        y, x = (int(v) * 8 for v in rng.integers(0, (size - crop) // 8 + 1, size=2))
        out.append(img[y : y + crop, x : x + crop])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def latent_std(vae, seed: int, count: int, size: int) -> float:
    from .. import vae as vae_io

    vae.register_to_config(scaling_factor=1.0)
    images, _, _ = data.dataset(seed, count, size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    z = torch.cat([vae_io.encode(vae, x[i : i + 32]) for i in range(0, count, 32)])
    return float(z.std())


def main(argv=None) -> None:
    args = parse_args(argv)
    from diffusers import AutoencoderKL

    acc = common.make_accelerator(args.threads)
    common.check_batch(args.batch_size, acc)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**{**TINY_VAE, "sample_size": args.size})
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    state = common.load_checkpoint(args.out, {"vae": vae}, optimizer)
    start = state["step"] if state else 0
    model, optimizer = acc.prepare(VaeObjective(vae), optimizer)
    log = common.LossLog(args.out, ["loss", "l1", "kl"], start, acc.is_main_process)
    images, _, _ = data.dataset(args.seed, args.num_images, args.size)
    t0, elapsed0 = time.time(), (state or {}).get("elapsed_s", 0.0)
    bar = common.progress(args.steps, start, "vae", acc.is_main_process and not args.no_progress)
    model.train()
    for step in range(start, args.steps):
        rng = common.step_rng(args.seed, step, 1)
        idx = common.shard(rng.integers(0, args.num_images, size=args.batch_size), acc)
        x = crops(images[idx], args.crop, rng).to(acc.device)
        l1, kl = model(x, torch.Generator().manual_seed(int(rng.integers(2**31))))
        loss = l1 + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        values = {k: float(acc.reduce(v.detach(), "mean")) for k, v in (("loss", loss), ("l1", l1), ("kl", kl))}
        log.log(step + 1, values)
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            if acc.is_main_process:
                common.save_checkpoint(
                    args.out, step + 1, {"vae": vae}, optimizer, {"elapsed_s": elapsed0 + time.time() - t0}
                )
            acc.wait_for_everyone()
    bar.close()
    common.check_replicas(args.out, vae, acc)
    if acc.is_main_process:
        vae.eval()
        std = latent_std(vae, args.seed + 1, args.scale_images, args.size)
        vae.register_to_config(scaling_factor=1.0 / std)
        vae.save_pretrained(str(args.out / "vae"), safe_serialization=True)
        log.plot("VAE (L1 + KL)")
        summary = {
            "steps": args.steps,
            "latent_std": std,
            "scaling_factor": 1.0 / std,
            "elapsed_s": elapsed0 + time.time() - t0,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: summary[k] for k in ("steps", "latent_std", "scaling_factor", "elapsed_s")}))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
