"""What every training stage shares: accelerate setup, sharded batches, checkpoints, loss logs,
EMA, the cached training set (VAE latents + frozen-T5 embeddings) and the model folder written out.

Data parallelism: every process draws the same global batch from `rng(seed, step)` and takes its
slice `[rank::world]`; accelerate's DDP averages the gradients, so a run with N processes takes the
same steps as one process with the same global batch, and resuming at step s draws the same batches.
Data: `SceneStream` renders the unbounded seeded scene stream of `data.py` on the fly, in worker
processes, into a sliding window of VAE latents that every step samples its batch from (the older
`cached_dataset` holds a fixed set of `--num-images` scenes, for small tests and comparisons).
Checkpoints: `<out>/ckpt/` holds the trained modules as safetensors, the optimizer state through
`torch.save` (tensors and plain containers only, read back with `weights_only=True`) and `state.json`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_module
from safetensors.torch import save_model as save_module

from .. import vae as vae_io
from ..config import ControlNetConfig
from ..controlnet import PixArtControlNet
from ..dit import PixArtDiT
from ..loading import save_controlnet, save_dit
from ..text import encode_prompts
from . import data, layout

CKPT = "ckpt"


def add_common_args(parser, steps: int, batch_size: int, lr: float) -> None:
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, model)")
    parser.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"global batch, split over processes (default {batch_size})"
    )
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
    return indices[accelerator.process_index :: accelerator.num_processes]


def step_rng(seed: int, step: int, salt: int) -> np.random.Generator:
    """The randomness of one step, the same on every process and on resume."""
    return np.random.default_rng([seed, step, salt])


def check_batch(batch_size: int, accelerator) -> None:
    if batch_size % accelerator.num_processes:
        raise SystemExit(f"--batch-size {batch_size} must divide by the {accelerator.num_processes} processes")


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, rate: float) -> None:
    """target <- rate * target + (1 - rate) * online, over parameters (buffers copied)."""
    torch._foreach_lerp_(list(target.parameters()), [o.detach() for o in online.parameters()], 1.0 - rate)
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
        (out / "replicas.json").write_text(
            json.dumps({"processes": accelerator.num_processes, "sha256": digests}, indent=2) + "\n"
        )
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


class StepRecorder:
    """What every stage does after an optimizer step: queue the loss (one device sync per
    `log_later` batch), move the bar, checkpoint every `ckpt_every` steps and at the last one; and at
    the end, once more where `--time-limit` stopped the run between checkpoints."""

    def __init__(self, args, acc, log, bar, modules: dict, optimizer, start: int, t0: float, elapsed0: float):
        self.args, self.acc, self.log, self.bar = args, acc, log, bar
        self.modules, self.optimizer, self.start, self.t0, self.elapsed0 = modules, optimizer, start, t0, elapsed0

    def elapsed(self) -> float:
        """Seconds of training loop over every resumed part of the run."""
        return self.elapsed0 + time.time() - self.t0

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        due = step % self.args.ckpt_every == 0 or step == self.args.steps
        value = self.log.log_later(step, self.acc.reduce(loss.detach(), "mean"), last=due)
        self.bar.update(1)
        if value is not None:
            self.bar.set_postfix(loss=f"{value:.4f}")
        if due:
            self._save(step)

    def finish(self, step: int) -> None:
        self.log.flush()
        self.bar.close()
        if step % self.args.ckpt_every and step != self.args.steps and step > self.start:  # stopped by time
            self._save(step)

    def _save(self, step: int) -> None:
        if self.acc.is_main_process:
            save_checkpoint(self.args.out, step, self.modules, self.optimizer, {"elapsed_s": self.elapsed()})
        self.acc.wait_for_everyone()


# -- loss log -----------------------------------------------------------------------------------------
class LossLog:
    """`<out>/loss.csv` (step, columns...), truncated to the resumed step; `plot()` writes loss.png."""

    def __init__(self, out: Path, columns: list[str], resume_step: int, enabled: bool = True):
        self.path = out / "loss.csv"
        self.columns = columns
        self.enabled = enabled
        self.pending: list[tuple[int, torch.Tensor]] = []
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

    def log_later(self, step: int, value: torch.Tensor, every: int = 50, last: bool = False) -> float | None:
        """Queue a one-column loss still on the device; write the queue (one device sync) every `every`
        steps or when `last`. Returns the newest value when written, else None."""
        self.pending.append((step, value.detach().reshape(())))
        if not (last or len(self.pending) >= every):
            return None
        return self.flush()

    def flush(self) -> float | None:
        """Write the losses `log_later` queued; the newest value, or None if none was queued."""
        if not self.pending:
            return None
        values = torch.stack([v for _, v in self.pending]).double().cpu().tolist()
        if self.enabled:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerows([s, f"{v:.6g}"] for (s, _), v in zip(self.pending, values))
        self.pending = []
        return values[-1]

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
            ax.plot(
                series["step"][window - 1 :],
                np.convolve(y, np.ones(window) / window, "valid"),
                label=f"{c} (mean of {window})",
            )
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


def source_digest(*sources) -> str:
    """sha256 (12 hex digits) of the source files of `sources` (modules, or paths), in order: the code part
    of a cached set's key, so a change to how its data is drawn or encoded never reuses a stale set."""
    h = hashlib.sha256()
    for source in sources:
        h.update(Path(getattr(source, "__file__", source)).read_bytes())
    return h.hexdigest()[:12]


def data_code_digest() -> str:
    """The code that renders and encodes the base's fixed set: scenes, free layouts, the VAE boundary and
    this module."""
    return source_digest(data, layout, vae_io, __file__)


def free_layout_count(count: int, free: float) -> int:
    """How many of a fixed set's `count` scenes are free-layout scenes (`--free-layout` share)."""
    return int(round(count * free))


def dataset_captions(seed: int, count: int, free: float = 0.0) -> list[str]:
    """The captions of the fixed set `encode_dataset` builds, in its order, without rendering."""
    n_free = free_layout_count(count, free)
    out = data.captions(seed, count - n_free)
    for i in layout.base_training_indices(seed, n_free):
        out.append(layout.caption(layout.scene(seed, i), np.random.default_rng([seed, i, 25])))
    return out


@torch.no_grad()
def encode_dataset(
    vae, tokenizer, text_encoder, seed: int, count: int, size: int, chunk: int = 32, free: float = 0.0, bar=None
):
    """(latents [N,4,h,w] scaled, caption ids [N], unique embeds [U,L,C], unique masks [U,L]).

    The first N - F scenes are `data.py`'s (captioned layouts on fixed lanes), the last F = `free` x N
    free-layout scenes (`layout.py`: objects anywhere, captions that mostly name no places, no held-out
    pair): with them the base model learns to draw shapes wherever a ControlNet will ask (issue #24)."""
    latents, captions = [], []
    n_free = free_layout_count(count, free)
    for start in range(0, count - n_free, chunk):
        images, caps, _ = data.dataset(seed, min(chunk, count - n_free - start), size, start=start)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        latents.append(vae_io.encode(vae, x))
        captions += caps
        if bar is not None:
            bar.update(len(caps))
    free_indices = layout.base_training_indices(seed, n_free)
    for start in range(0, n_free, chunk):
        samples = [layout.sample(seed, i, size) for i in free_indices[start : start + chunk]]
        x = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).float() / 255.0
        latents.append(vae_io.encode(vae, x))
        captions += [s[1] for s in samples]
        if bar is not None:
            bar.update(len(samples))
    unique = sorted(set(captions))
    ids = torch.tensor([unique.index(c) for c in captions], dtype=torch.int64)
    embeds, masks = [], []
    for start in range(0, len(unique), chunk):
        e, m = encode_prompts(tokenizer, text_encoder, unique[start : start + chunk])
        embeds.append(e)
        masks.append(m)
    return torch.cat(latents), ids, torch.cat(embeds), torch.cat(masks)


def cached_dataset(
    out: Path, key: str, accelerator, build, names: tuple[str, ...] = ("latents", "caption_ids", "embeds", "masks")
) -> dict[str, torch.Tensor]:
    """`build()` (a tuple of tensors, one per name) once on the main process into
    `<out>/cache-<key>.safetensors`; every process reads it."""
    path = out / f"cache-{key}.safetensors"
    if accelerator.is_main_process and not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({name: value.contiguous() for name, value in zip(names, build(), strict=True)}, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return load_file(str(path))


# -- the scene stream, rendered on the fly -------------------------------------------------------------
def _render_chunk(seed: int, start: int, count: int, size: int):
    """Stream scenes start..start+count-1: (images uint8 [n,size,size,3], caption ids int64 [n]).
    Top-level so worker processes can run it."""
    images, captions, _ = data.dataset(seed, count, size, start=start)
    index = _caption_index()
    return images, np.asarray([index[c] for c in captions], dtype=np.int64)


_CAPTION_INDEX: dict[str, int] = {}


def _caption_index() -> dict[str, int]:
    if not _CAPTION_INDEX:
        _CAPTION_INDEX.update({c: i for i, c in enumerate(data.training_captions())})
    return _CAPTION_INDEX


class SceneStream:
    """A sliding window over the seeded scene stream (`data.sample(seed, i)`, i = 0, 1, 2, ...).

    The stream is cut into chunks of `chunk` scenes; at step s the window holds chunks
    [s // refresh, s // refresh + window) as VAE latents in a ring buffer on the training device, so
    every `refresh` steps the oldest chunk is replaced by the next unseen one. A batch is drawn
    uniformly from the window. Everything depends on (seed, step) only: every data-parallel process
    holds the same window, and a resumed run rebuilds the window it stopped with. `workers` processes
    render the chunks ahead of need (0: render in this process when needed). Caption ids index
    `data.training_captions()`."""

    def __init__(
        self, seed: int, size: int, vae, device, window: int, chunk: int, refresh: int, workers: int = 0, ahead: int = 4
    ):
        self.seed, self.size, self.vae, self.device = seed, size, vae, torch.device(device)
        self.window, self.chunk, self.refresh, self.ahead = window, chunk, max(refresh, 1), ahead
        self.pool = None
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.pending: dict[int, object] = {}
        self.slots: dict[int, int] = {}  # ring slot -> chunk held
        self.latents: torch.Tensor | None = None
        self.caption_ids = torch.zeros(window * chunk, dtype=torch.int64, device=self.device)
        self.rendered = 0  # scenes rendered by this stream (a figure for the run record)

    def _submit(self, k: int) -> None:
        if self.pool is not None and k not in self.pending:
            self.pending[k] = self.pool.submit(_render_chunk, self.seed, k * self.chunk, self.chunk, self.size)

    def _fetch(self, k: int):
        future = self.pending.pop(k, None)
        return (
            future.result() if future is not None else _render_chunk(self.seed, k * self.chunk, self.chunk, self.size)
        )

    @torch.no_grad()
    def _encode(self, images: np.ndarray, batch: int = 512) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            out.append(vae_io.encode(self.vae, x))
        return torch.cat(out)

    def advance(self, step: int) -> None:
        """Make the window of `step` resident (renders what is missing, queues what comes next)."""
        first = step // self.refresh
        wanted = range(first, first + self.window)
        for k in range(first, first + self.window + self.ahead):
            if k % self.window not in self.slots or self.slots[k % self.window] != k:
                self._submit(k)
        for k in wanted:
            slot = k % self.window
            if self.slots.get(slot) == k:
                continue
            images, ids = self._fetch(k)
            latents = self._encode(images)
            if self.latents is None:
                self.latents = torch.zeros((self.window * self.chunk, *latents.shape[1:]), device=self.device)
            rows = slice(slot * self.chunk, (slot + 1) * self.chunk)
            self.latents[rows] = latents
            self.caption_ids[rows] = torch.from_numpy(ids).to(self.device)
            self.slots[slot] = k
            self.rendered += len(ids)

    def batch(self, step: int, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents [B,4,h,w], caption ids [B]) of window rows `index` (uniform draws in [0, window*chunk))."""
        self.advance(step)
        rows = torch.from_numpy(np.asarray(index)).to(self.device)
        return self.latents[rows], self.caption_ids[rows]

    @property
    def size_rows(self) -> int:
        return self.window * self.chunk

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending.values():
                future.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def add_stream_args(parser) -> None:
    parser.add_argument(
        "--num-images",
        type=int,
        default=0,
        help="a fixed, cached set of this many scenes instead of the stream (default 0: the stream)",
    )
    parser.add_argument(
        "--free-layout",
        type=float,
        default=0.0,
        help="with --num-images: this share of the set are free-layout scenes (reference.train.layout: "
        "objects anywhere, captions that mostly name no places; default 0)",
    )
    parser.add_argument("--window", type=int, default=16, help="stream: chunks held in the window (default 16)")
    parser.add_argument("--chunk", type=int, default=512, help="stream: scenes per chunk (default 512)")
    parser.add_argument(
        "--refresh",
        type=int,
        default=32,
        help="stream: steps between replacing the oldest chunk with a new one (default 32)",
    )
    parser.add_argument(
        "--render-workers",
        type=int,
        default=0,
        help="stream: worker processes rendering ahead (default 0: render in the training process)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop at the first step past this many seconds of this run, checkpoint and write the "
        "model as usual (default 0: no limit; the step reached is in summary.json)",
    )
    parser.add_argument(
        "--stop-at",
        type=float,
        default=0.0,
        help="like --time-limit, at this wall-clock time (Unix seconds), whatever the start-up took (default 0: none)",
    )


def out_of_time(acc, t0: float, limit: float, stop_at: float = 0.0) -> bool:
    """True on every process once the main process's clock has passed `limit` s since `t0`, or the
    wall-clock time `stop_at` (Unix seconds); 0 turns either off."""
    if limit <= 0 and stop_at <= 0:
        return False
    now = time.time()
    late = (limit > 0 and now - t0 > limit) or (stop_at > 0 and now > stop_at)
    flag = torch.tensor([float(late)], device=acc.device)
    return bool(acc.reduce(flag, "max").item() > 0)


def setup_device() -> None:
    """GPU only: TF32 matrix products (the tiny DiT's small matrices stay accurate to ~1e-3; recorded)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def start_run(args):
    """The accelerator of a stage's run (`--threads`), the device set up, the batch checked against the
    processes, the run folder made."""
    acc = make_accelerator(args.threads)
    setup_device()
    check_batch(args.batch_size, acc)
    args.out.mkdir(parents=True, exist_ok=True)
    return acc


# -- model folder -------------------------------------------------------------------------------------
@contextlib.contextmanager
def replacing(out: Path):
    """A fresh folder beside `out` to fill; when the block ends without an error it replaces `out`
    (a failure leaves `out` as it was and removes the half-written folder)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_model_folder(out: Path, source: Path, dit: PixArtDiT | None = None, vae=None, text_encoder=None) -> Path:
    """A diffusers-layout model folder: `source`'s tokenizer and scheduler; `dit`, `vae` and
    `text_encoder` when given (else the source's). The ControlNet (when the source has one) is rebuilt
    from the DiT: copies of its first blocks with their zero-initialised projections, untrained, so it
    leaves every image unchanged until a ControlNet is trained."""
    from ..loading import load_dit

    with replacing(out) as tmp:
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
            save_controlnet(PixArtControlNet(dit, ControlNetConfig(num_copies=num)), tmp / "controlnet", dit)
    return out


def progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
