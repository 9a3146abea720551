"""What every training stage shares: accelerate setup, sharded batches, checkpoints, loss logs,
EMA, the cached training set (VAE latents + frozen-T5 embeddings) and the model folder written out.

Data parallelism: every process draws the same global batch from `rng(seed, step)` and takes its
slice `[rank::world]`; accelerate's DDP averages the gradients, so a run with N processes takes the
same steps as one process with the same global batch, and resuming at step s draws the same batches.
Checkpoints: `<out>/ckpt/` holds the trained modules as safetensors, the optimizer state through
`torch.save` (tensors and plain containers only, read back with `weights_only=True`) and `state.json`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_module, save_model as save_module

from ..config import ControlNetConfig
from ..controlnet import PixArtControlNet
from ..dit import PixArtDiT
from ..loading import save_controlnet, save_dit
from ..text import encode_prompts
from .. import vae as vae_io
from . import data

CKPT = "ckpt"


def add_common_args(parser, steps: int, batch_size: int, lr: float) -> None:
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, model)")
    parser.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"global batch, split over processes (default {batch_size})")
    parser.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr:g})")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data set, init and batches (default 0)")
    parser.add_argument("--ckpt-every", type=int, default=200, help="checkpoint interval in steps (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def make_accelerator(threads: int):
    """An `Accelerator` (CPU unless a GPU is there; `accelerate launch` sets the processes)."""
    from accelerate import Accelerator

    torch.set_num_threads(threads)
    return Accelerator(cpu=not torch.cuda.is_available())


def shard(indices: np.ndarray, accelerator) -> np.ndarray:
    return indices[accelerator.process_index::accelerator.num_processes]


def step_rng(seed: int, step: int, salt: int) -> np.random.Generator:
    """The randomness of one step, the same on every process and on resume."""
    return np.random.default_rng([seed, step, salt])


def check_batch(batch_size: int, accelerator) -> None:
    if batch_size % accelerator.num_processes:
        raise SystemExit(f"--batch-size {batch_size} must divide by the {accelerator.num_processes} processes")


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, rate: float) -> None:
    """target <- rate * target + (1 - rate) * online, over parameters (buffers copied)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), 1.0 - rate)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def check_replicas(out: Path, module: torch.nn.Module, accelerator) -> list[str]:
    """Each process hashes its own copy of the weights; the main process writes the digests to
    `<out>/replicas.json` and every process fails if they differ (data-parallel replicas must agree)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    mine = torch.tensor(list(h.digest()), dtype=torch.int64, device=accelerator.device)[None]
    digests = [bytes(row.tolist()).hex() for row in accelerator.gather(mine).cpu()]
    if accelerator.is_main_process:
        (out / "replicas.json").write_text(json.dumps({"processes": accelerator.num_processes,
                                                       "sha256": digests}, indent=2) + "\n")
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel replicas diverged: {digests}")
    return digests


# -- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(out: Path, step: int, modules: dict[str, torch.nn.Module], optimizer, extra: dict) -> None:
    """Write `<out>/ckpt` atomically (main process only)."""
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=out))
    for name, module in modules.items():  # save_model: T5's tied embeddings are stored once
        save_module(module, str(tmp / f"{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2) + "\n")
    final = out / CKPT
    old = out / ".ckpt-old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, modules: dict[str, torch.nn.Module], optimizer) -> dict | None:
    """Restore from `<out>/ckpt` if it exists; returns its state.json (with "step") or None."""
    folder = out / CKPT
    if not (folder / "state.json").exists():
        return None
    for name, module in modules.items():
        load_module(module, str(folder / f"{name}.safetensors"), strict=True)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return json.loads((folder / "state.json").read_text())


# -- loss log -----------------------------------------------------------------------------------------
class LossLog:
    """`<out>/loss.csv` (step, columns...), truncated to the resumed step; `plot()` writes loss.png."""

    def __init__(self, out: Path, columns: list[str], resume_step: int, enabled: bool = True):
        self.path = out / "loss.csv"
        self.columns = columns
        self.enabled = enabled
        if not enabled:
            return
        rows = []
        if self.path.exists() and resume_step > 0:
            with self.path.open() as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if int(r[0]) <= resume_step]
        with self.path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *columns])
            writer.writerows(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerow([step, *(f"{values[c]:.6g}" for c in self.columns)])

    def read(self) -> dict[str, np.ndarray]:
        with self.path.open() as f:
            rows = [r for r in csv.reader(f)][1:]
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 1 + len(self.columns))
        return {"step": arr[:, 0], **{c: arr[:, i + 1] for i, c in enumerate(self.columns)}}

    def plot(self, title: str, smooth: int = 25) -> Path | None:
        """loss.png with matplotlib (raw and running mean, log scale); None if matplotlib is missing."""
        if not self.enabled:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        series = self.read()
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in self.columns:
            y = series[c]
            window = min(smooth, len(y))
            ax.plot(series["step"], y, alpha=0.3, lw=0.8)
            ax.plot(series["step"][window - 1:], np.convolve(y, np.ones(window) / window, "valid"),
                    label=f"{c} (mean of {window})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = self.path.with_suffix(".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# -- cached training set ------------------------------------------------------------------------------
def content_digest(paths: list[Path]) -> str:
    """Hash of what files hold: bytes, except JSON configs without their "_"-prefixed bookkeeping keys
    (diffusers adds `_name_or_path` on load), so a re-saved but identical model keys the same."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        if p.suffix == ".json":
            raw = {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")}
            h.update(json.dumps(raw, sort_keys=True).encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_dataset(vae, tokenizer, text_encoder, seed: int, count: int, size: int, chunk: int = 32):
    """(latents [N,4,h,w] scaled, caption ids [N], unique embeds [U,L,C], unique masks [U,L])."""
    latents, captions = [], []
    for start in range(0, count, chunk):
        images, caps, _ = data.dataset(seed, min(chunk, count - start), size, start=start)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        latents.append(vae_io.encode(vae, x))
        captions += caps
    unique = sorted(set(captions))
    ids = torch.tensor([unique.index(c) for c in captions], dtype=torch.int64)
    embeds, masks = [], []
    for start in range(0, len(unique), chunk):
        e, m = encode_prompts(tokenizer, text_encoder, unique[start:start + chunk])
        embeds.append(e)
        masks.append(m)
    return torch.cat(latents), ids, torch.cat(embeds), torch.cat(masks)


def cached_dataset(out: Path, key: str, accelerator, build) -> dict[str, torch.Tensor]:
    """`build()` once (main process) into `<out>/cache-<key>.safetensors`; every process reads it."""
    path = out / f"cache-{key}.safetensors"
    if accelerator.is_main_process and not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        latents, ids, embeds, masks = build()
        tmp = path.with_suffix(".tmp")
        save_file({"latents": latents.contiguous(), "caption_ids": ids, "embeds": embeds.contiguous(),
                   "masks": masks}, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return load_file(str(path))


# -- model folder -------------------------------------------------------------------------------------
def write_model_folder(out: Path, source: Path, dit: PixArtDiT | None = None, vae=None,
                       text_encoder=None, controlnet_seed: int = 0) -> Path:
    """A diffusers-layout model folder: `source`'s tokenizer and scheduler; `dit`, `vae` and
    `text_encoder` when given (else the source's). The ControlNet is rebuilt from the DiT (copies of its first
    blocks) with small random projection weights, as `reference.tiny` ships it (untrained, path exercised)."""
    from ..loading import load_dit

    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=out.parent))
    try:
        for name in ("tokenizer", "scheduler"):
            shutil.copytree(source / name, tmp / name)
        if text_encoder is None:
            shutil.copytree(source / "text_encoder", tmp / "text_encoder")
        else:
            text_encoder.eval().save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
        shutil.copy(source / "model_index.json", tmp / "model_index.json")
        if vae is None:
            shutil.copytree(source / "vae", tmp / "vae")
        else:
            vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        dit = dit if dit is not None else load_dit(source / "transformer")
        save_dit(dit, tmp / "transformer")
        if (source / "controlnet").is_dir():
            num = json.loads((source / "controlnet" / "config.json").read_text())["num_copies"]
            net = PixArtControlNet(dit, ControlNetConfig(num_copies=num))
            g = torch.Generator().manual_seed(controlnet_seed)
            with torch.no_grad():
                for block in net.controlnet:
                    for proj in (block.before_proj, block.after_proj):
                        if proj is not None:
                            proj.weight.copy_(torch.randn(proj.weight.shape, generator=g) * 0.02)
            save_controlnet(net, tmp / "controlnet")
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
