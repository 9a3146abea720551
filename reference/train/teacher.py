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

Data: by default the on-the-fly scene stream (`common.SceneStream`: a sliding window of freshly
rendered scenes); `--num-images N` trains on a fixed cached set of N scenes instead.

`--text-encoder trained` (the default here) trains the miniature's T5 with the DiT
(`--t5-layers` / `--t5-ff` set its depth and feed-forward width; the width stays the DiT's
caption_channels, so the DiT is unchanged). PixArt
freezes T5-XXL because it has already learned language; the miniature's T5 is random, has never
read a word, and frozen it leaves the DiT's cross-attention to parse byte sequences alone. Training
it stands in for that pre-training; `frozen` is PixArt's recipe (embeddings computed once).

`--aux-role W` adds to the trained T5 what pre-training gives T5-XXL and the diffusion loss does not:
which object each word describes. A linear head on T5's output classifies each caption byte as part
of a colour/shape word of the top/left object, of the bottom/right one, or neither (`data.word_roles`;
"B below A" names the top object second), cross-entropy with weight W; the head is training-only. On
the CPU binding proxy (`binding_proxy`: the DiT's caption pathway without the image, a clean
classification signal) the plain trained T5 never bound in 1000 steps (seen pairs 0.04) and the same
run with `--aux-role 1` bound every seen and held-out pair by step 800
(benchmarks/results/quality_tiny_binding_probe.md); whether the teacher binds with it is for a GPU run.

    python -m reference.train.teacher --vae runs/vae/vae --out runs/teacher [--steps 3000] [--time-limit 600]
    torchrun --nproc_per_node 2 -m reference.train.teacher --vae ... --out ...
Writes `<out>/model/` (a full diffusers-layout model folder), `<out>/loss.csv`, `<out>/loss.png`.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..dit import PixArtDiT
from ..loading import load_model
from ..sampling import add_noise
from ..schedules import NUM_TRAIN_TIMESTEPS, alphas_cumprod
from ..text import MAX_TEXT_LEN, encode_prompts, tokenize
from ..tiny import TINY_T5, build_tiny
from . import common, data


class EpsObjective(torch.nn.Module):
    """The DiT's epsilon prediction with caption dropout to the null caption, inside one `forward`
    (so DDP sees every parameter used). With a `text_encoder`, `text` is token ids and the T5 runs
    (and trains) here; without, `text` is the cached T5 embeddings."""

    def __init__(
        self, dit: PixArtDiT, text_encoder: torch.nn.Module | None = None, role_head: torch.nn.Module | None = None
    ):
        super().__init__()
        self.dit = dit
        self.text_encoder = text_encoder
        self.role_head = role_head

    def forward(self, latents, timestep, text, mask, drop: torch.Tensor, roles: torch.Tensor | None = None):
        """The epsilon prediction; with a `role_head` and `roles` (int64 [B,L], `data.word_roles`), the pair
        (prediction, the role head's cross-entropy over the caption's tokens)."""
        embeds = text if self.text_encoder is None else self.text_encoder(input_ids=text, attention_mask=mask)[0]
        aux = None
        if self.role_head is not None and roles is not None:
            logits = self.role_head(embeds)
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), roles.flatten(), reduction="none")
            aux = (ce * mask.flatten()).sum() / mask.sum()
        null = self.dit.null_caption[None].to(embeds.dtype)
        embeds = torch.where(drop[:, None, None], null, embeds)
        mask = torch.where(drop[:, None], torch.ones_like(mask), mask)
        pred = self.dit.predict_noise(latents, timestep, embeds, mask)
        return pred if aux is None else (pred, aux)


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
    for linear in (
        emb.linear_1,
        emb.linear_2,
        dit.adaln_single.linear,
        dit.caption_projection.linear_1,
        dit.caption_projection.linear_2,
    ):
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
    common.add_stream_args(parser)
    parser.add_argument("--vae", type=Path, required=True, help="trained VAE folder (stage 1's <out>/vae)")
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="model folder giving the DiT config, T5, tokenizer, scheduler (default: the random "
        "`reference.tiny` build, written to <out>/base, so a rerun never starts from the "
        "shipped, trained tiny)",
    )
    parser.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where a fixed --num-images set is cached, keyed by a hash (default: --out)",
    )
    parser.add_argument("--cfg-drop", type=float, default=0.1, help="share of captions dropped to null (default 0.1)")
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.999,
        help="EMA of the weights written out, after its warm-up (default 0.999)",
    )
    parser.add_argument("--warmup", type=int, default=200, help="linear LR warm-up steps (default 200)")
    parser.add_argument(
        "--snr-gamma",
        type=float,
        default=5.0,
        help="min-SNR-gamma loss weighting, 0 for PixArt's plain MSE (default 5)",
    )
    parser.add_argument(
        "--init",
        choices=("pixart", "diffusers"),
        default="pixart",
        help="DiT initialisation: upstream PixArt's (default) or diffusers' module defaults",
    )
    parser.add_argument(
        "--text-encoder",
        choices=("trained", "frozen"),
        default="trained",
        help="train the miniature's random T5 with the DiT (default) or keep it frozen (PixArt's recipe)",
    )
    parser.add_argument(
        "--t5-layers",
        type=int,
        default=0,
        help="a fresh random T5 with this many layers instead of the base's (default 0: the base's)",
    )
    parser.add_argument(
        "--t5-ff", type=int, default=0, help="with --t5-layers: its feed-forward width (default: TINY_T5's)"
    )
    parser.add_argument(
        "--aux-role",
        type=float,
        default=0.0,
        help="weight of an auxiliary loss on the trained T5's output: a linear head tells, per caption byte, "
        "whether it is in a colour/shape word of the top/left object, of the bottom/right one, or neither "
        "(the caption parsing a pre-trained language model brings; default 0: none)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        help="start the DiT (and its EMA) from this model's DiT (`tiny-teacher`, a folder): fine-tuning a "
        "trained base on new data instead of training from scratch (default: a fresh --init)",
    )
    return parser.parse_args(argv)


def load_training_set(args, acc, vae_dir: Path, base):
    """The cached latents and caption embeddings of a fixed set of `--num-images` scenes, keyed by the
    VAE and T5 weights and the data args."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).eval()
    key = common.content_digest(
        [
            *sorted(vae_dir.glob("*.safetensors")),
            vae_dir / "config.json",
            *sorted((base.source / "text_encoder").glob("*.safetensors")),
        ]
    )
    key = f"{key}-s{args.seed}-n{args.num_images}-px{args.size}"
    if args.free_layout:
        key += f"-free{args.free_layout:g}-{common.data_code_digest()}"

    def build():
        bar = common.progress(args.num_images, 0, "encode scenes", not args.no_progress)
        out = common.encode_dataset(
            vae,
            base.tokenizer,
            base.text_encoder,
            args.seed,
            args.num_images,
            args.size,
            free=args.free_layout,
            bar=bar,
        )
        bar.close()
        return out

    return vae, common.cached_dataset(args.cache_dir or args.out, key, acc, build)


class TrainingData:
    """Batches of (latents, caption ids) on the device, from the stream or a fixed cached set; `captions`
    lists the texts caption ids index."""

    def __init__(self, args, acc, vae_dir: Path, base):
        from diffusers import AutoencoderKL

        self.stream = None
        if args.num_images > 0:
            vae, train = load_training_set(args, acc, vae_dir, base)
            self.vae = vae
            self.latents = train["latents"].to(acc.device)
            self.caption_ids = train["caption_ids"].to(acc.device)
            self.captions = sorted(set(common.dataset_captions(args.seed, args.num_images, args.free_layout)))
            self.embeds, self.masks = train["embeds"], train["masks"]
            if len(self.captions) != len(self.embeds):
                raise SystemExit(
                    f"the cached set has {len(self.embeds)} captions, the data generator {len(self.captions)}"
                )
            self.rows = len(self.latents)
        else:
            if args.free_layout:
                raise SystemExit("--free-layout mixes scenes into a fixed set: give --num-images N too")
            self.vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).eval()
            self.stream = common.SceneStream(
                args.seed,
                args.size,
                self.vae.to(acc.device),
                acc.device,
                args.window,
                args.chunk,
                args.refresh,
                args.render_workers,
            )
            self.captions = data.training_captions()
            self.embeds = self.masks = None
            self.rows = self.stream.size_rows

    def batch(self, step: int, index) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stream is not None:
            return self.stream.batch(step, index)
        rows = torch.from_numpy(index).to(self.latents.device)
        return self.latents[rows], self.caption_ids[rows]

    def frozen_text(self, base, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen T5's embeddings of every caption (cached set: from the cache)."""
        if self.embeds is not None:
            return self.embeds.to(device), self.masks.to(device)
        embeds, masks = [], []
        for i in range(0, len(self.captions), 256):
            e, m = encode_prompts(base.tokenizer, base.text_encoder, self.captions[i : i + 256])
            embeds.append(e)
            masks.append(m)
        return torch.cat(embeds).to(device), torch.cat(masks).to(device)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def fresh_text_encoder(layers: int, ff: int, seed: int):
    """A random T5 encoder like `reference.tiny`'s with another depth / feed-forward width."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = {**TINY_T5, "num_layers": layers, **({"d_ff": ff} if ff else {})}
    return T5EncoderModel(T5Config(**config)).eval()


def main(argv=None) -> None:
    args = parse_args(argv)
    acc = common.start_run(args)
    base = load_model(args.base or random_tiny(args.out / "base", acc))
    if args.t5_layers:
        base.text_encoder = fresh_text_encoder(args.t5_layers, args.t5_ff, args.seed)
    dev = acc.device
    train = TrainingData(args, acc, args.vae, base)

    torch.manual_seed(args.seed)
    dit = PixArtDiT(base.dit.config, text_len=MAX_TEXT_LEN)
    if args.init_from:
        dit.load_state_dict(load_model(args.init_from).dit.state_dict())
    elif args.init == "pixart":
        initialize_like_pixart(dit)
    modules = {"dit": dit, "ema": copy.deepcopy(dit).requires_grad_(False)}
    if args.text_encoder == "trained":
        text, masks = tokenize(base.tokenizer, train.captions)
        text, masks = text.to(dev), masks.to(dev)
        modules["text_encoder"] = base.text_encoder.train().requires_grad_(True)
        modules["text_ema"] = copy.deepcopy(base.text_encoder).requires_grad_(False)
        if args.aux_role > 0:
            torch.manual_seed(args.seed + 1)
            modules["role_head"] = torch.nn.Linear(base.text_encoder.config.d_model, 3)
            roles = torch.from_numpy(data.word_roles(train.captions, text.shape[1])).to(dev)
    else:
        text, masks = train.frozen_text(base, dev)
    if text.shape[1] != MAX_TEXT_LEN:
        raise SystemExit(f"caption embeddings have {text.shape[1]} tokens, the DiT's null caption {MAX_TEXT_LEN}")
    if args.aux_role > 0 and "role_head" not in modules:
        raise SystemExit("--aux-role needs --text-encoder trained")
    objective = EpsObjective(dit, modules.get("text_encoder"), modules.get("role_head"))
    fused = {"fused": True} if dev.type == "cuda" else {}
    optimizer = torch.optim.AdamW(objective.parameters(), lr=args.lr, weight_decay=args.weight_decay, **fused)
    state = common.load_checkpoint(args.out, modules, optimizer)
    start = state["step"] if state else 0
    model, optimizer = acc.prepare(objective, optimizer)
    for name in ("ema", "text_ema"):
        if name in modules:
            modules[name].to(dev)
    ac = alphas_cumprod()
    log = common.LossLog(args.out, ["loss"], start, acc.is_main_process)
    t0, elapsed0 = time.time(), (state or {}).get("elapsed_s", 0.0)
    bar = common.progress(args.steps, start, "teacher", acc.is_main_process and not args.no_progress)
    record = common.StepRecorder(args, acc, log, bar, modules, optimizer, start, t0, elapsed0)
    model.train()
    step = start
    aux_log: list[torch.Tensor] = []  # the role loss per step (on the device; read at the end)
    while step < args.steps:
        if step > start and (step - start) % 25 == 0 and common.out_of_time(acc, t0, args.time_limit, args.stop_at):
            break
        rng = common.step_rng(args.seed, step, 2)
        idx = rng.integers(0, train.rows, size=args.batch_size)
        t = rng.integers(0, NUM_TRAIN_TIMESTEPS, size=args.batch_size)
        drop = rng.random(args.batch_size) < args.cfg_drop
        noise = torch.from_numpy(rng.standard_normal((args.batch_size, *base_latent_shape(base)), dtype="float32"))
        mine = common.shard(np.arange(args.batch_size), acc)
        x0, ids = train.batch(step, idx[mine])
        noise = noise[mine].to(dev)
        ts = torch.from_numpy(t[mine]).to(dev)
        xt = add_noise(x0, noise, ts, ac)
        drop_t = torch.from_numpy(drop[mine]).to(dev)
        if args.aux_role > 0:
            pred, aux = model(xt, ts.float(), text[ids], masks[ids], drop_t, roles[ids])
        else:
            pred, aux = model(xt, ts.float(), text[ids], masks[ids], drop_t), None
        weight = snr_weight(ac.to(dev)[ts], args.snr_gamma)
        loss = (weight * (pred - noise).square().mean(dim=(1, 2, 3))).mean()
        if aux is not None:
            aux_log.append(aux.detach())
            total = loss + args.aux_role * aux
        else:
            total = loss
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
        optimizer.zero_grad(set_to_none=True)
        acc.backward(total)
        acc.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        rate = ema_decay(args.ema_decay, step - args.warmup)
        common.ema_update(modules["ema"], dit, rate)
        if "text_ema" in modules:
            common.ema_update(modules["text_ema"], modules["text_encoder"], rate)
        step += 1
        record.after_step(step, loss)
    record.finish(step)
    train.close()
    common.check_replicas(args.out, objective, acc)
    if acc.is_main_process:
        text_ema = modules.get("text_ema")
        common.write_model_folder(
            args.out / "model",
            base.source,
            dit=modules["ema"].eval().cpu(),
            vae=train.vae.cpu(),
            text_encoder=None if text_ema is None else text_ema.cpu(),
        )
        log.plot("teacher (epsilon MSE)")
        summary = {
            "steps": step,
            "steps_asked": args.steps,
            "elapsed_s": record.elapsed(),
            "final_loss_mean_last_100": float(log.read()["loss"][-100:].mean()),
            "aux_role_loss_first_last_100": (
                [float(torch.stack(aux_log[:100]).mean()), float(torch.stack(aux_log[-100:]).mean())]
                if aux_log
                else None
            ),
            "scenes_rendered": train.stream.rendered if train.stream else args.num_images,
            "device": device_name(dev),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: summary[k] for k in ("steps", "elapsed_s", "final_loss_mean_last_100")}))
    acc.wait_for_everyone()


def base_latent_shape(base) -> tuple[int, int, int]:
    c = base.dit.config
    return (c.in_channels, c.sample_size, c.sample_size)


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
