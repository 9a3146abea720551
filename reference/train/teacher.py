"""Stage 2: train the teacher DiT (PixArt-alpha objective) on VAE latents of the generated scenes.

Epsilon prediction with PixArt's schedule (linear betas 1e-4..0.02, 1000 steps, t uniform), MSE on
the first 4 output channels (the learned-sigma channels are not trained: samplers use epsilon only).
A share `--cfg-drop` (10%) of captions is replaced by the learned null caption `dit.null_caption`,
with every token attended, as upstream PixArt's `CaptionEmbedder` does, so the teacher supports
classifier-free guidance exactly as `ReferencePipeline.null_embeds` applies it. The weights written
out are an EMA of the trained ones (`ema_decay`).

The DiT starts from upstream PixArt's initialisation (`initialize_like_pixart`: xavier linears,
zero cross-attention outputs and zero final layer, so every block starts as the identity), not from
diffusers' module defaults (on the miniature the loss curves of the two were alike over 800 steps;
it is kept because it is upstream's). What made the miniature follow captions was the min-SNR
weighting with lr 1e-3 (`snr_weight`).

`--text-encoder trained` (the default here) trains the miniature's 2-layer T5 with the DiT. PixArt
freezes T5-XXL because it has already learned language; the miniature's T5 is random, has never
read a word, and frozen it leaves the DiT's cross-attention to parse byte sequences alone. Training
it stands in for that pre-training; `frozen` is PixArt's recipe (embeddings computed once).

    python -m reference.train.teacher --vae runs/vae/vae --out runs/teacher [--steps 3000]
    torchrun --nproc_per_node 2 -m reference.train.teacher --vae ... --out ...
Writes `<out>/model/` (a full diffusers-layout model folder), `<out>/loss.csv`, `<out>/loss.png`.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from ..dit import PixArtDiT
from ..loading import load_model
from ..sampling import add_noise
from ..schedules import NUM_TRAIN_TIMESTEPS, alphas_cumprod
from ..text import MAX_TEXT_LEN, tokenize
from ..tiny import build_tiny
from . import common, data


class EpsObjective(torch.nn.Module):
    """The DiT's epsilon prediction with caption dropout to the null caption, inside one `forward`
    (so DDP sees every parameter used). With a `text_encoder`, `text` is token ids and the T5 runs
    (and trains) here; without, `text` is the cached T5 embeddings."""

    def __init__(self, dit: PixArtDiT, text_encoder: torch.nn.Module | None = None):
        super().__init__()
        self.dit = dit
        self.text_encoder = text_encoder

    def forward(self, latents, timestep, text, mask, drop: torch.Tensor) -> torch.Tensor:
        embeds = text if self.text_encoder is None else self.text_encoder(input_ids=text, attention_mask=mask)[0]
        null = self.dit.null_caption[None].to(embeds.dtype)
        embeds = torch.where(drop[:, None, None], null, embeds)
        mask = torch.where(drop[:, None], torch.ones_like(mask), mask)
        return self.dit.predict_noise(latents, timestep, embeds, mask)


@torch.no_grad()
def initialize_like_pixart(dit: PixArtDiT) -> PixArtDiT:
    """Upstream PixArt's `initialize_weights`, on diffusers' parameter names: xavier-uniform linears
    with zero biases (the patch embedding's conv as a linear), N(0, 0.02) for the timestep MLP, the
    adaLN-single projection and the caption MLP, and zeros for each block's cross-attention output
    and for the final projection. Uses the global torch RNG (seed it first)."""
    for module in dit.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                module.bias.zero_()
    conv = dit.pos_embed.proj
    torch.nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
    conv.bias.zero_()
    emb = dit.adaln_single.emb.timestep_embedder
    for linear in (emb.linear_1, emb.linear_2, dit.adaln_single.linear,
                   dit.caption_projection.linear_1, dit.caption_projection.linear_2):
        torch.nn.init.normal_(linear.weight, std=0.02)
    for block in dit.transformer_blocks:
        block.attn2.to_out[0].weight.zero_()
        block.attn2.to_out[0].bias.zero_()
    dit.proj_out.weight.zero_()
    dit.proj_out.bias.zero_()
    return dit


def snr_weight(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al., arXiv 2303.09556):
    min(SNR, gamma) / SNR, SNR = a / (1 - a); gamma <= 0 gives 1 (the plain MSE of PixArt).

    The plain epsilon MSE is dominated by the nearly clean timesteps, whose errors are fine texture;
    what a caption decides (colour, shape, layout) is settled at mid-to-high noise, where the
    weight stays 1. Measured on the miniature over 800 steps (trained T5, lr 1e-3): the eps-MSE gap
    between true and shuffled captions at t in [200, 800] was 0.0006 with gamma 5 and 0.0001 without
    (a caption-blind teacher's gap), at a lower loss (0.021 vs 0.026)."""
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def ema_decay(decay: float, n: int) -> float:
    """EMA rate after n steps past the LR warm-up: 0 before it, then min(decay, (1 + n) / (10 + n)), the
    usual EMA warm-up, so a short run's EMA does not average in its first, poor weights."""
    return 0.0 if n < 0 else min(decay, (1 + n) / (10 + n))


def random_tiny(folder: Path, acc) -> Path:
    """The untrained `reference.tiny` model (deterministic from its seed), built once by the main process."""
    if acc.is_main_process and not (folder / "model_index.json").exists():
        build_tiny(folder)
    acc.wait_for_everyone()
    return folder


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, steps=3000, batch_size=32, lr=3e-4)
    parser.add_argument("--vae", type=Path, required=True, help="trained VAE folder (stage 1's <out>/vae)")
    parser.add_argument("--base", type=Path, default=None,
                        help="model folder giving the DiT config, T5, tokenizer, scheduler (default: the random "
                             "`reference.tiny` build, written to <out>/base, so a rerun never starts from the "
                             "shipped, trained tiny)")
    parser.add_argument("--num-images", type=int, default=4096, help="training images (default 4096)")
    parser.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the encoded training set is cached, keyed by a hash (default: --out)")
    parser.add_argument("--cfg-drop", type=float, default=0.1, help="share of captions dropped to null (default 0.1)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="EMA of the weights written out, after its warm-up (default 0.999)")
    parser.add_argument("--warmup", type=int, default=200, help="linear LR warm-up steps (default 200)")
    parser.add_argument("--snr-gamma", type=float, default=5.0,
                        help="min-SNR-gamma loss weighting, 0 for PixArt's plain MSE (default 5)")
    parser.add_argument("--init", choices=("pixart", "diffusers"), default="pixart",
                        help="DiT initialisation: upstream PixArt's (default) or diffusers' module defaults")
    parser.add_argument("--text-encoder", choices=("trained", "frozen"), default="trained",
                        help="train the miniature's random T5 with the DiT (default) or keep it frozen (PixArt's recipe)")
    return parser.parse_args(argv)


def load_training_set(args, acc, vae_dir: Path, base):
    """The cached latents and caption embeddings, keyed by the VAE and T5 weights and the data args."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).eval()
    key = common.content_digest([*sorted(vae_dir.glob("*.safetensors")), vae_dir / "config.json",
                                 *sorted((base.source / "text_encoder").glob("*.safetensors"))])
    key = f"{key}-s{args.seed}-n{args.num_images}-px{args.size}"
    return vae, common.cached_dataset(args.cache_dir or args.out, key, acc, lambda: common.encode_dataset(
        vae, base.tokenizer, base.text_encoder, args.seed, args.num_images, args.size))


def main(argv=None) -> None:
    args = parse_args(argv)
    acc = common.make_accelerator(args.threads)
    common.check_batch(args.batch_size, acc)
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_model(args.base or random_tiny(args.out / "base", acc))
    vae, train = load_training_set(args, acc, args.vae, base)
    latents, caption_ids, embeds, masks = train["latents"], train["caption_ids"], train["embeds"], train["masks"]
    if embeds.shape[1] != MAX_TEXT_LEN:
        raise SystemExit(f"caption embeddings have {embeds.shape[1]} tokens, the DiT's null caption {MAX_TEXT_LEN}")

    torch.manual_seed(args.seed)
    dit = PixArtDiT(base.dit.config, text_len=MAX_TEXT_LEN)
    if args.init == "pixart":
        initialize_like_pixart(dit)
    modules = {"dit": dit, "ema": copy.deepcopy(dit).requires_grad_(False)}
    text = embeds
    if args.text_encoder == "trained":
        unique = sorted(set(data.captions(args.seed, args.num_images)))
        if len(unique) != len(embeds):
            raise SystemExit(f"the cached set has {len(embeds)} captions, the data generator {len(unique)}")
        text, masks = tokenize(base.tokenizer, unique)
        modules["text_encoder"] = base.text_encoder.train().requires_grad_(True)
        modules["text_ema"] = copy.deepcopy(base.text_encoder).requires_grad_(False)
    objective = EpsObjective(dit, modules.get("text_encoder"))
    optimizer = torch.optim.AdamW(objective.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    state = common.load_checkpoint(args.out, modules, optimizer)
    start = state["step"] if state else 0
    model, optimizer = acc.prepare(objective, optimizer)
    ac = alphas_cumprod()
    log = common.LossLog(args.out, ["loss"], start, acc.is_main_process)
    t0, elapsed0 = time.time(), (state or {}).get("elapsed_s", 0.0)
    bar = common.progress(args.steps, start, "teacher", acc.is_main_process and not args.no_progress)
    model.train()
    for step in range(start, args.steps):
        rng = common.step_rng(args.seed, step, 2)
        idx = rng.integers(0, len(latents), size=args.batch_size)
        t = rng.integers(0, NUM_TRAIN_TIMESTEPS, size=args.batch_size)
        drop = rng.random(args.batch_size) < args.cfg_drop
        noise = torch.from_numpy(rng.standard_normal((args.batch_size, *latents.shape[1:]), dtype="float32"))
        mine = common.shard(torch.arange(args.batch_size).numpy(), acc)
        x0, noise = latents[idx[mine]], noise[mine]
        ts = torch.from_numpy(t[mine])
        xt = add_noise(x0, noise, ts, ac)
        ids = caption_ids[idx[mine]]
        dev = acc.device
        pred = model(xt.to(dev), ts.float().to(dev), text[ids].to(dev), masks[ids].to(dev),
                     torch.from_numpy(drop[mine]).to(dev))
        weight = snr_weight(ac[ts], args.snr_gamma).to(dev)
        loss = (weight * (pred - noise.to(dev)).square().mean(dim=(1, 2, 3))).mean()
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        rate = ema_decay(args.ema_decay, step - args.warmup)
        common.ema_update(modules["ema"], dit, rate)
        if "text_ema" in modules:
            common.ema_update(modules["text_ema"], modules["text_encoder"], rate)
        value = float(acc.reduce(loss.detach(), "mean"))
        log.log(step + 1, {"loss": value})
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            if acc.is_main_process:
                common.save_checkpoint(args.out, step + 1, modules, optimizer,
                                       {"elapsed_s": elapsed0 + time.time() - t0})
            acc.wait_for_everyone()
    bar.close()
    common.check_replicas(args.out, objective, acc)
    if acc.is_main_process:
        common.write_model_folder(args.out / "model", base.source, dit=modules["ema"].eval(), vae=vae,
                                  text_encoder=modules.get("text_ema"), controlnet_seed=args.seed)
        log.plot("teacher (epsilon MSE)")
        summary = {"steps": args.steps, "elapsed_s": elapsed0 + time.time() - t0,
                   "final_loss_mean_last_100": float(log.read()["loss"][-100:].mean()),
                   "args": {k: str(v) for k, v in vars(args).items()}}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: summary[k] for k in ("steps", "elapsed_s", "final_loss_mean_last_100")}))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
