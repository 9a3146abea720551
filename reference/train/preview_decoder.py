"""Preview decoder: distil a small diffusers `AutoencoderTiny` (the TAESD architecture) from a model's
full VAE (`AutoencoderKL`), so it reads the same scaled latents at a fraction of the decoder's cost.

TAESD (github.com/madebyollin/taesd) is trained against SD's VAE; this stage does the same for the
miniature's VAE, by distillation only (no GAN or perceptual term): the student's image is pulled to
the full decoder's image of the same latents (MSE + L1, on [-1, 1]), and its encoder to the full
encoder's posterior mean (MSE), so the folder is a complete, trained `AutoencoderTiny`. The decoder is
what ships as the `vae_decoder_preview` graph.

Latents (cached once in `<out>/data.safetensors`): `--encoded` scene images of data set `--seed`
(`data.py`) through the full encoder, and `--generated` latents the reference pipeline draws for the
captions of the same data set (what the decoder reads at run time), the last `--eval` of those held
out for the loss log's evaluation. Steps train on random `--crop` x `--crop` latent windows (the
decoder is convolutional; crops keep CPU steps cheap); the evaluation decodes whole latents.

Like `AutoencoderTiny` for SD (TAESD, `scaling_factor` 1.0), the student reads the *scaled* latents
the DiT produces: `reference.vae.decode(student, latents)` is the graph contract for either decoder.

    nohup nice -n 5 .venv/bin/python -m reference.train.preview_decoder --out runs/preview > runs/preview.log 2>&1 &
One thread (`--threads`, default 1): on the shared 2-core VM two threads stepped ~3x slower than one
(measured, load average 10-20). Resumable (re-run the same command); writes `<out>/preview/` (diffusers
folder, safetensors), `<out>/loss.csv`, `<out>/eval.csv` (PSNR vs the full decoder on held-out
latents), `<out>/loss.png`, `<out>/summary.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .. import vae as vae_io
from . import common, data

#: The student's shape for tiny (128 px images, 16x16x4 latents): 16 channels at every level (the
#: class keeps one width throughout), 2 blocks at the three lower levels and 1 at full size, sized so
#: the distillation fits ~20 minutes of a shared 2-core CPU (parameters and multiply-adds against the
#: full decoder's: MODEL_CARD.md).
TINY_PREVIEW = {
    "encoder_block_out_channels": (16, 16, 16, 16),
    "num_encoder_blocks": (1, 1, 1, 1),
    "decoder_block_out_channels": (16, 16, 16, 16),
    "num_decoder_blocks": (2, 2, 2, 1),
    "latent_channels": 4,
    "scaling_factor": 1.0,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, steps=1200, batch_size=16, lr=2e-3)
    parser.add_argument("--model", default="tiny", help="the model whose VAE is distilled (default tiny)")
    parser.add_argument("--encoded", type=int, default=1536, help="scene images encoded by the VAE (default 1536)")
    parser.add_argument("--generated", type=int, default=320, help="latents drawn by the reference (default 320)")
    parser.add_argument("--eval", type=int, default=48, help="generated latents held out for eval.csv (default 48)")
    parser.add_argument("--crop", type=int, default=8, help="training window in latent pixels (default 8)")
    parser.add_argument("--eval-every", type=int, default=250, help="eval.csv interval in steps (default 250)")
    parser.add_argument("--data-seed", type=int, default=7_300_001, help="scene data set of the latents")
    parser.add_argument("--time-limit", type=float, default=0, help="stop (with a checkpoint) after S seconds")
    return parser.parse_args(argv)


def make_student(config: dict | None = None):
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(**(config or TINY_PREVIEW))


@torch.no_grad()
def build_data(model, args) -> dict[str, torch.Tensor]:
    """Latents, the full decoder's images of them, and the encoded scenes' images (module docstring)."""
    from ..pipeline import ReferencePipeline

    vae = model.vae
    size = model.default_resolution
    images, _, _ = data.dataset(args.data_seed, args.encoded, size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    encoded = torch.cat([vae_io.encode(vae, x[i : i + 64]) for i in range(0, len(x), 64)])
    pipe = ReferencePipeline(model)
    captions = data.captions(args.data_seed + 1, args.generated)
    generated = torch.cat(
        [pipe(captions[i : i + 32], seed=args.data_seed + i, output="latent") for i in range(0, len(captions), 32)]
    )
    latents = torch.cat([encoded, generated])
    targets = torch.cat([vae_io.decode(vae, latents[i : i + 64]) for i in range(0, len(latents), 64)])
    return {
        "latents": latents.contiguous(),
        "targets": targets.half().contiguous(),  # [0, 1]; fp16 keeps 2.5k images in ~250 MB
        "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # uint8, the encoded ones
    }


def load_data(model, args) -> dict[str, torch.Tensor]:
    path = args.out / "data.safetensors"
    if path.exists():
        return load_file(str(path))
    tensors = build_data(model, args)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.rename(path)
    return tensors


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-image PSNR in dB of images in [0, 1] after uint8 rounding (as `pixart_export.metrics`)."""
    qa, qb = ((t * 255).round().clamp(0, 255).double() for t in (a, b))
    mse = ((qa - qb) ** 2).flatten(1).mean(1)
    return [math.inf if m == 0 else 10 * math.log10(255.0**2 / float(m)) for m in mse]


@torch.no_grad()
def evaluate(student, tensors: dict, held: slice) -> float:
    student.eval()
    got = vae_io.decode(student, tensors["latents"][held])
    student.train()
    return float(np.mean(psnr(got, tensors["targets"][held].float())))


def window(rng: np.random.Generator, latents: torch.Tensor, crop: int) -> tuple[int, int]:
    h, w = latents.shape[-2:]
    return int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))


def main(argv=None) -> None:
    args = parse_args(argv)
    from ..loading import load_model

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = load_model(args.model)
    t_data = time.time()
    tensors = load_data(model, args)
    print(f"data: {len(tensors['latents'])} latents ({time.time() - t_data:.0f} s)", flush=True)
    total = len(tensors["latents"])
    held = slice(total - args.eval, total)
    train_count, encoded = total - args.eval, len(tensors["images"])
    f = model.vae_scale_factor

    student = make_student()
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    state = common.load_checkpoint(args.out, {"student": student}, optimizer)
    start = state["step"] if state else 0
    log = common.LossLog(args.out, ["loss", "decoder", "encoder"], start)
    eval_path = args.out / "eval.csv"
    if start == 0 or not eval_path.exists():
        eval_path.write_text("step,psnr_db\n")
    t0, elapsed0 = time.time(), (state or {}).get("elapsed_s", 0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s + start, args.steps) / args.steps))
    )
    student.train()
    step = start
    for step in range(start + 1, args.steps + 1):
        rng = common.step_rng(args.seed, step, 7)
        idx = torch.from_numpy(rng.integers(0, train_count, size=args.batch_size))
        y, x = window(rng, tensors["latents"], args.crop)
        z = tensors["latents"][idx, :, y : y + args.crop, x : x + args.crop]
        want = tensors["targets"][idx, :, y * f : (y + args.crop) * f, x * f : (x + args.crop) * f].float() * 2 - 1
        got = student.decoder(z / student.config.scaling_factor)
        dec = torch.nn.functional.mse_loss(got, want) + 0.5 * (got - want).abs().mean()
        # the encoder: scene crops (window on the latent grid) -> the full encoder's scaled means
        eidx = torch.from_numpy(rng.integers(0, encoded, size=args.batch_size // 2))
        pixels = (
            tensors["images"][eidx, :, y * f : (y + args.crop) * f, x * f : (x + args.crop) * f].float() / 127.5 - 1
        )
        enc = torch.nn.functional.mse_loss(
            student.encoder(pixels), tensors["latents"][eidx, :, y : y + args.crop, x : x + args.crop]
        )
        loss = dec + enc
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), args.grad_clip)
        optimizer.step()
        schedule.step()
        log.log(step, {"loss": loss.item(), "decoder": dec.item(), "encoder": enc.item()})
        if step % args.eval_every == 0 or step == args.steps:
            value = evaluate(student, tensors, held)
            with eval_path.open("a") as fh:
                fh.write(f"{step},{value:.3f}\n")
            print(
                f"step {step}: loss {float(loss):.5f}, held-out PSNR {value:.2f} dB, {time.time() - t0:.0f} s",
                flush=True,
            )
        if step % args.ckpt_every == 0 or step == args.steps:
            common.save_checkpoint(
                args.out, step, {"student": student}, optimizer, {"elapsed_s": elapsed0 + time.time() - t0}
            )
        if args.time_limit and time.time() - t0 > args.time_limit:
            common.save_checkpoint(
                args.out, step, {"student": student}, optimizer, {"elapsed_s": elapsed0 + time.time() - t0}
            )
            print(f"stopped by --time-limit at step {step}; re-run to continue", flush=True)
            return
    student.eval()
    student.save_pretrained(str(args.out / "preview"), safe_serialization=True)
    log.plot("preview decoder (MSE + L1 vs the full decoder; encoder MSE)")
    rows = list(csv.reader(eval_path.open()))[1:]
    summary = {
        "steps": args.steps,
        "held_out_psnr_db": float(rows[-1][1]) if rows else None,
        "elapsed_s": elapsed0 + time.time() - t0,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_PREVIEW.items()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("steps", "held_out_psnr_db", "elapsed_s")}), flush=True)


if __name__ == "__main__":
    main()
