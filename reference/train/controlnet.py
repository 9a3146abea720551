"""Stage 4: train a ControlNet on the miniature with the base frozen (PixArt-delta Sec. 3, Fig. 4).

The base DiT, its T5 and its VAE stay frozen; only the trainable copies and their zero-initialised
linear layers learn, so at step 0 the controlled model is exactly the base. The objective is the
base's own (epsilon MSE on the 4 latent channels, min-SNR weighted as the teacher was trained, with
10% of captions dropped to the null caption so guidance keeps its unconditional branch); the
condition is computed from each training scene (`control.condition`: an edge map like HED, or the
filled silhouette) and read through the VAE, as upstream PixArt-ControlNet reads its HED maps.

Designs (`--design`): `transformer`, PixArt-delta's ControlNet-Transformer with `--copies N`
(`reference.controlnet`), and `unet`, the ControlNet-UNet baseline of the paper's ablation
(`reference.controlnet_unet`, half the blocks copied, outputs into the mirrored "decoder" blocks).

Data: a fixed set of `--num-images` scenes of data set `--seed` (latents, condition latents, caption
ids); with `--free-layout P`, that share of them are free-layout scenes (`reference.train.layout`: one
to three objects anywhere in the frame, captions that mostly name the objects but not their places, so
only the control carries the layout; issue #24), the rest `data.py`'s captioned relations. Cached
under `--cache-dir` with a key over the VAE and T5 weights, this stage's data code and
the data arguments, so arms of an ablation train on exactly the same data. Batches are drawn from
`step_rng(seed, step)`, so every design sees the same scenes, timesteps and noise at every step.

Every `--eval-every` steps the main process measures control IoU (`control.control_iou`) on a fixed
set of `--eval-scenes` scenes of another data seed, and placement (`layout.placement`) on as many
held-out free-layout scenes, sampling the base with the teacher's sampler
(DDIM `--eval-steps`, trailing spacing, guidance `--eval-cfg`, conditioning scale 1), into
`<out>/eval.csv`: the curve the ablation plots. Data-parallel and resumable like the other stages:

    python -m reference.train.controlnet --base tiny-teacher --copies 3 --out runs/cn/t3
    torchrun --nproc_per_node 2 -m reference.train.controlnet --base tiny-teacher --design unet --out runs/cn/u3
Writes `<out>/controlnet/` (loadable with `reference.loading.load_controlnet` for the transformer
design), `<out>/loss.csv`, `<out>/eval.csv`, `<out>/summary.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from .. import vae as vae_io
from ..config import ControlNetConfig
from ..controlnet import ControlledDiT, PixArtControlNet
from ..controlnet_unet import ControlledDiTUNet
from ..loading import load_model, save_controlnet
from ..sampling import add_noise, ddim_sample, guided, lcm_sample
from ..schedules import NUM_TRAIN_TIMESTEPS, alphas_cumprod, ddim_timesteps, draw_noise, lcm_timesteps
from ..text import encode_prompts
from . import common, control, data, layout
from .teacher import snr_weight

DESIGNS = ("transformer", "unet")
EVAL_SEED = 900_001  # the eval scenes' data set: not the training one


def build(base_dit, design: str, copies: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(fused controlled model, its trainable part) for `design` on a frozen base DiT."""
    base_dit.eval().requires_grad_(False)
    if design == "transformer":
        net = PixArtControlNet(base_dit, ControlNetConfig(num_copies=copies))
        return ControlledDiT(base_dit, net), net
    if design == "unet":
        fused = ControlledDiTUNet(base_dit, copies)
        return fused, fused.controlnet
    raise SystemExit(f"unknown --design {design!r}; choose one of {', '.join(DESIGNS)}")


def code_digest() -> str:
    """What made the cached data besides the weights: the scene, condition and VAE-boundary code."""
    return common.source_digest(data, control, layout, vae_io)


@torch.no_grad()
def encode_images(vae, images: np.ndarray, chunk: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i : i + chunk]).permute(0, 3, 1, 2).float() / 255.0
        out.append(vae_io.encode(vae, x))
    return torch.cat(out)


@torch.no_grad()
def encode_captions(model, captions: list[str], chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, masks = [], []
    for i in range(0, len(captions), chunk):
        e, m = encode_prompts(model.tokenizer, model.text_encoder, captions[i : i + chunk])
        embeds.append(e)
        masks.append(m)
    return torch.cat(embeds), torch.cat(masks)


def training_set(args, acc, model) -> dict[str, torch.Tensor]:
    """Cached (latents, control latents, caption ids, caption embeds/masks) of the fixed scene set."""
    key = common.content_digest(
        [
            *sorted((model.source / "vae").glob("*.safetensors")),
            *sorted((model.source / "text_encoder").glob("*.safetensors")),
        ]
    )
    key = f"control-{key}-{code_digest()}-{args.condition}-s{args.seed}-n{args.num_images}"
    if args.free_layout:
        key += f"-free{args.free_layout:g}"

    def make():
        latents, controls, ids = [], [], []
        texts = data.training_captions()
        index = {c: i for i, c in enumerate(texts)}
        free = int(round(args.num_images * args.free_layout))
        bar = common.progress(args.num_images, 0, "encode scenes", not args.no_progress)
        for start in range(0, args.num_images - free, 256):
            count = min(256, args.num_images - free - start)
            cond, scenes, captions, _ = control.control_set(args.seed, count, args.condition, start=start)
            latents.append(encode_images(model.vae, scenes))
            controls.append(encode_images(model.vae, cond))
            ids += [index[c] for c in captions]
            bar.update(count)
        for start in range(0, free, 256):
            count = min(256, free - start)
            samples = [layout.sample(args.seed, i) for i in range(start, start + count)]
            scenes = np.stack([s[0] for s in samples])
            latents.append(encode_images(model.vae, scenes))
            controls.append(encode_images(model.vae, np.stack([control.condition(s, args.condition) for s in scenes])))
            for _, text, _ in samples:
                if text not in index:  # free-layout captions ("a red circle and a blue square") after data.py's
                    index[text] = len(texts)
                    texts.append(text)
                ids.append(index[text])
            bar.update(count)
        bar.close()
        embeds, masks = encode_captions(model, texts)
        return torch.cat(latents), torch.cat(controls), torch.tensor(ids), embeds, masks

    names = ("latents", "controls", "caption_ids", "embeds", "masks")
    return common.cached_dataset(args.cache_dir or args.out, key, acc, make, names)


class EvalSet:
    """Fixed scenes of `EVAL_SEED` with their conditions, caption embeddings and labels."""

    def __init__(self, model, condition: str, count: int, start: int = 0, heldout: bool = False):
        self.controls, self.scenes, self.captions, self.labels = control.control_set(
            EVAL_SEED, count, condition, start=start, heldout=heldout
        )
        self.control_latents = encode_images(model.vae, self.controls)
        self.embeds, self.masks = encode_captions(model, self.captions)


class LayoutEvalSet:
    """Held-out free-layout scenes of `EVAL_SEED` (every object in `layout.HELDOUT_CELLS`): objects, controls,
    captions."""

    def __init__(self, model, condition: str, count: int, start: int = 0):
        samples = [layout.sample(EVAL_SEED, i, heldout=True) for i in range(start, start + count)]
        self.scenes = np.stack([s[0] for s in samples])
        self.captions = [s[1] for s in samples]
        self.things = [s[2] for s in samples]
        self.controls = np.stack([control.condition(s, condition) for s in self.scenes])
        self.control_latents = encode_images(model.vae, self.controls)
        self.embeds, self.masks = encode_captions(model, self.captions)


@torch.no_grad()
def sample(
    fused,
    vae,
    embeds,
    masks,
    control_latents,
    scale: float,
    sampler: str,
    steps: int,
    seed: int,
    guidance: float = 5.5,
    null: torch.Tensor | None = None,
    lcm_spacing: str = "pixart",
    chunk: int = 64,
) -> np.ndarray:
    """uint8 images [N,H,W,3] of the controlled model `fused` (ControlledDiT / ControlledDiTUNet), one
    control per caption. "ddim": the teacher's sampler (trailing spacing) with classifier-free guidance
    over the null caption, the control applied to both branches as ControlNet does; "lcm": the
    student's sampler, no guidance. Noise from `draw_noise(seed, ...)` as the reference pipeline."""
    ac = alphas_cumprod()
    n = len(embeds)
    shape = tuple(control_latents.shape[1:])
    noise = torch.from_numpy(draw_noise(seed, n, shape, steps if sampler == "lcm" else 1))
    out = []
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        e, m, c = embeds[sl], masks[sl], control_latents[sl]
        b = len(e)

        def eps(x, t, e=e, m=m, c=c, b=b):
            ts = torch.full((x.shape[0],), float(t))
            if sampler == "lcm":
                return fused(x, ts, e, m, c, scale)[:, : x.shape[1]]
            ne, nm = null[None].expand(b, -1, -1), torch.ones(b, null.shape[0], dtype=m.dtype)
            both = fused(
                torch.cat([x, x]), torch.cat([ts, ts]), torch.cat([ne, e]), torch.cat([nm, m]), torch.cat([c, c]), scale
            )[:, : x.shape[1]]
            e_u, e_c = both.chunk(2)
            return guided(e_c, e_u, guidance)

        if sampler == "lcm":
            latents = lcm_sample(eps, noise[0, sl], lcm_timesteps(steps, lcm_spacing), [z[sl] for z in noise[1:]], ac)
        elif sampler == "ddim":
            latents = ddim_sample(eps, noise[0, sl], ddim_timesteps(steps, "trailing"), ac)
        else:
            raise ValueError(f"unknown sampler {sampler!r}")
        out.append(control.to_uint8(vae_io.decode(vae, latents)))
    return np.concatenate(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, steps=1200, batch_size=32, lr=5e-4)
    parser.add_argument("--base", default="tiny-teacher", help="the frozen base model (default tiny-teacher)")
    parser.add_argument(
        "--design", choices=DESIGNS, default="transformer", help="ControlNet design (default transformer)"
    )
    parser.add_argument(
        "--copies", type=int, default=3, help="copied base blocks N (default 3; unet: at most half the blocks)"
    )
    parser.add_argument("--condition", choices=control.CONDITIONS, default="edge", help="condition (default edge)")
    parser.add_argument("--num-images", type=int, default=8192, help="scenes in the fixed training set (default 8192)")
    parser.add_argument(
        "--free-layout", type=float, default=0.0, help="share of free-layout scenes (layout.py; default 0)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the encoded set is cached (default --out)")
    parser.add_argument("--cfg-drop", type=float, default=0.1, help="share of captions dropped to null (default 0.1)")
    parser.add_argument(
        "--snr-gamma", type=float, default=5.0, help="min-SNR-gamma weighting (default 5, as the teacher)"
    )
    parser.add_argument("--warmup", type=int, default=50, help="linear LR warm-up steps (default 50)")
    parser.add_argument("--eval-every", type=int, default=100, help="control IoU every K steps (default 100; 0: off)")
    parser.add_argument("--eval-scenes", type=int, default=32, help="scenes of the control-IoU curve (default 32)")
    parser.add_argument("--eval-steps", type=int, default=10, help="DDIM steps of the curve's samples (default 10)")
    parser.add_argument("--eval-cfg", type=float, default=5.5, help="guidance of the curve's samples (default 5.5)")
    parser.add_argument("--time-limit", type=float, default=0.0, help="stop after this many seconds (0: none)")
    return parser.parse_args(argv)


class EvalLog:
    """`<out>/eval.csv`: step, mean control IoU and placement (the training curves), truncated to the
    resumed step."""

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = out / "eval.csv", enabled
        if not enabled:
            return
        rows = []
        if self.path.exists() and resume_step > 0:
            with self.path.open() as f:
                rows = [r for r in list(csv.reader(f))[1:] if int(r[0]) <= resume_step]
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerows([["step", "control_iou", "placement"], *rows])

    def log(self, step: int, iou: float, placement: float = float("nan")) -> None:
        if self.enabled:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerow([step, f"{iou:.6g}", f"{placement:.6g}"])


def main(argv=None) -> None:
    args = parse_args(argv)
    acc = common.start_run(args)
    model = load_model(args.base)
    dev = acc.device
    train = training_set(args, acc, model)
    latents, controls, ids = (train[k].to(dev) for k in ("latents", "controls", "caption_ids"))
    embeds, masks = train["embeds"].to(dev), train["masks"].to(dev)
    base = model.dit.to(dev)
    null = base.null_caption.detach()

    torch.manual_seed(args.seed)
    fused, net = build(base, args.design, args.copies)
    modules = {"controlnet": net}
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    state = common.load_checkpoint(args.out, modules, optimizer)
    start = state["step"] if state else 0
    model_dp, optimizer = acc.prepare(fused, optimizer)
    ac = alphas_cumprod().to(dev)
    log = common.LossLog(args.out, ["loss"], start, acc.is_main_process)
    evals = EvalLog(args.out, start, acc.is_main_process)
    eval_set = EvalSet(model, args.condition, args.eval_scenes) if acc.is_main_process and args.eval_every else None
    eval_layout = (
        LayoutEvalSet(model, args.condition, args.eval_scenes) if acc.is_main_process and args.eval_every else None
    )

    def evaluate(step: int) -> None:
        if eval_set is None:
            return
        fused.eval()
        images, placed = (
            sample(
                fused,
                model.vae,
                s.embeds,
                s.masks,
                s.control_latents,
                1.0,
                "ddim",
                args.eval_steps,
                seed=0,
                guidance=args.eval_cfg,
                null=null,
            )
            for s in (eval_set, eval_layout)
        )
        iou = float(control.control_iou(images, eval_set.scenes).mean())
        evals.log(step, iou, float(layout.placement(placed, eval_layout.things).mean()))
        fused.train()
        base.eval()

    if start == 0:
        evaluate(0)
    t0, elapsed0 = time.time(), (state or {}).get("elapsed_s", 0.0)
    bar = common.progress(args.steps, start, f"controlnet {args.design}", acc.is_main_process and not args.no_progress)
    record = common.StepRecorder(args, acc, log, bar, modules, optimizer, start, t0, elapsed0)
    fused.train()
    base.eval()  # frozen base: no dropout, never in train mode
    shape = tuple(latents.shape[1:])
    step = start
    while step < args.steps:
        if step > start and (step - start) % 25 == 0 and common.out_of_time(acc, t0, args.time_limit):
            break
        rng = common.step_rng(args.seed, step, 4)
        idx = rng.integers(0, len(latents), size=args.batch_size)
        t = rng.integers(0, NUM_TRAIN_TIMESTEPS, size=args.batch_size)
        drop = rng.random(args.batch_size) < args.cfg_drop
        noise = torch.from_numpy(rng.standard_normal((args.batch_size, *shape), dtype="float32"))
        mine = common.shard(np.arange(args.batch_size), acc)
        rows = torch.from_numpy(idx[mine]).to(dev)
        ts = torch.from_numpy(t[mine]).to(dev)
        x0, c, cap = latents[rows], controls[rows], ids[rows]
        noise = noise[mine].to(dev)
        drop_t = torch.from_numpy(drop[mine]).to(dev)
        e = torch.where(drop_t[:, None, None], null[None].to(dev), embeds[cap])
        m = torch.where(drop_t[:, None], torch.ones_like(masks[cap]), masks[cap])
        pred = model_dp(add_noise(x0, noise, ts, ac), ts.float(), e, m, c)[:, : shape[0]]
        weight = snr_weight(ac[ts], args.snr_gamma)
        loss = (weight * (pred - noise).square().mean(dim=(1, 2, 3))).mean()
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(net.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        if args.eval_every and step % args.eval_every == 0:
            evaluate(step)
        record.after_step(step, loss)
    record.finish(step)
    common.check_replicas(args.out, net, acc)
    if acc.is_main_process:
        if args.design == "transformer":
            save_controlnet(net.cpu().eval(), args.out / "controlnet", base.cpu())
        else:
            from safetensors.torch import save_file

            (args.out / "controlnet").mkdir(exist_ok=True)
            save_file(
                {k: v.contiguous() for k, v in net.state_dict().items()},
                str(args.out / "controlnet" / "unet.safetensors"),
            )
        log.plot(f"ControlNet {args.design} (epsilon MSE)")
        summary = {
            "steps": step,
            "steps_asked": args.steps,
            "design": args.design,
            "copies": len(net) if args.design == "unet" else args.copies,
            "trainable_parameters": sum(p.numel() for p in net.parameters()),
            "elapsed_s": record.elapsed(),
            "final_loss_mean_last_100": float(log.read()["loss"][-100:].mean()),
            "processes": acc.num_processes,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(
            json.dumps({k: summary[k] for k in ("steps", "design", "copies", "elapsed_s", "final_loss_mean_last_100")})
        )
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
