"""Stage 3: Latent Consistency Distillation of the teacher into the 4-step student (PixArt-delta,
arXiv 2401.05252, Algorithm 1; LCM, arXiv 2310.04378, Algorithm 1).

Per step, for latents z of a caption c, n drawn on the 50-step grid t_n = 20 i - 1 and noise eps:

    z_{t_{n+k}} = sqrt(a) z + sqrt(1 - a) eps                          (forward process, `add_noise`)
    z_hat_{t_n} = (1 + w) DDIM(z_{t_{n+k}}, eps_T(., c)) - w DDIM(z_{t_{n+k}}, eps_T(., null))
                = DDIM(z_{t_{n+k}}, eps_w, t_{n+k} -> t_n)          Algorithm 1's guided solver step (`ddim_step`:
    eps_w = eps_T(null) + (1 + w) (eps_T(c) - eps_T(null))          DDIM is linear in eps, so CFG at 1 + w, `guided`)
    f(z, t) = c_skip(t) z + c_out(t) x0(eps_S(z, t, c))               consistency function, LCM boundary
                                                                        scalings at 10 t (`lcm_scalings`)
    loss = Huber_c(f_theta(z_{t_{n+k}}, t_{n+k}), f_theta^-(z_hat_{t_n}, t_n))

with w fixed (4.5: LCM's convention, so the usual CFG scale is 1 + w = 5.5; PixArt-delta fixes w where
LCM samples it), k = 20 (one grid step), the student theta initialised from the teacher, the target theta^- an
EMA of theta (rate 0.95), Huber c = 0.001, AdamW and gradient clipping. Where t_n < 0 (n at the first
grid point) the DDIM step lands on the clean end and the target is z_hat itself, the boundary
condition f(z, 0) = z. The student takes no guidance input (PixArt-delta fixes w). The weights written
out are the target network's (the EMA), as LCM releases them.

    python -m reference.train.lcd --teacher runs/teacher/model --out runs/lcd [--steps 1000]
    torchrun --nproc_per_node 2 -m reference.train.lcd --teacher ... --out ...
Writes `<out>/model/` (the student as a full model folder), `<out>/loss.csv`, `<out>/loss.png`.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..loading import load_model
from ..sampling import add_noise, guided
from ..schedules import LCM_ORIGINAL_STEPS, NUM_TRAIN_TIMESTEPS, alphas_cumprod, lcm_scalings
from . import common
from .teacher import TrainingData, base_latent_shape, device_name


class StudentEps(torch.nn.Module):
    """The student's epsilon prediction in one `forward` (for DDP)."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    def forward(self, latents, timestep, embeds, mask):
        return self.dit.predict_noise(latents, timestep, embeds, mask)


def _per_sample(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.ndim - 1)))


def _alpha_bars(t: list[int], ac: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha-bar_t per sample, [B,1,1,1] (alpha-bar_{-1} = 1, the clean end)."""
    return _per_sample([float(ac[v]) if v >= 0 else 1.0 for v in t], like)


def consistency(eps: torch.Tensor, x: torch.Tensor, timesteps: list[int], ac: torch.Tensor) -> torch.Tensor:
    """f(x, t) = c_skip(t) x + c_out(t) x0(eps), per sample: the denoised output of `lcm_step`, batched."""
    scalings = [lcm_scalings(float(t)) for t in timesteps]
    c_skip, c_out = _per_sample([c[0] for c in scalings], x), _per_sample([c[1] for c in scalings], x)
    a = _alpha_bars(timesteps, ac, x)
    return c_out * ((x - (1 - a).sqrt() * eps) / a.sqrt()) + c_skip * x


def huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Pseudo-Huber loss sqrt((a-b)^2 + c^2) - c, mean over elements (LCM's choice)."""
    return (torch.sqrt((a - b) ** 2 + c * c) - c).mean()


@torch.no_grad()
def guided_solver_step(
    teacher, x_t: torch.Tensor, t: list[int], t_prev: list[int], embeds, mask, w: float, ac: torch.Tensor
) -> torch.Tensor:
    """z_hat_{t_n} = (1 + w) DDIM(x_t, eps_c) - w DDIM(x_t, eps_null), per sample t -> t_prev (< 0: clean end)."""
    batch = len(t)
    ts = torch.tensor(t, dtype=torch.float32, device=x_t.device)
    null = teacher.null_caption[None].expand(batch, -1, -1)
    both = teacher.predict_noise(
        torch.cat([x_t, x_t]), torch.cat([ts, ts]), torch.cat([null, embeds]), torch.cat([torch.ones_like(mask), mask])
    )
    eps_u, eps_c = both.chunk(2)
    eps_w = guided(eps_c, eps_u, 1.0 + w)  # DDIM is linear in eps: CFG at scale 1 + w
    a, a_prev = _alpha_bars(t, ac, x_t), _alpha_bars([max(v, -1) for v in t_prev], ac, x_t)
    x0 = (x_t - (1 - a).sqrt() * eps_w) / a.sqrt()  # `ddim_step`, batched over per-sample timesteps
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_w


def lcd_loss(
    student,
    teacher,
    target,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: list[int],
    embeds,
    mask,
    w: float,
    skip: int,
    huber_c: float,
    ac: torch.Tensor,
) -> torch.Tensor:
    """The LCD objective of one batch (module docstring); `student(x, t, embeds, mask)` -> eps is the
    network trained, `teacher` and `target` are DiTs (no gradients)."""
    dev = x0.device
    t_prev = [v - skip for v in t]
    x_t = add_noise(x0, noise, torch.tensor(t), ac)
    ts = torch.tensor(t, dtype=torch.float32, device=dev)
    x_prev = guided_solver_step(teacher, x_t, t, t_prev, embeds, mask, w, ac)
    with torch.no_grad():
        t_target = [max(v, 0) for v in t_prev]
        eps_tgt = target.predict_noise(x_prev, torch.tensor(t_target, dtype=torch.float32, device=dev), embeds, mask)
        f_target = consistency(eps_tgt, x_prev, t_target, ac)
        at_boundary = torch.tensor([v < 0 for v in t_prev], device=dev)[:, None, None, None]
        f_target = torch.where(at_boundary, x_prev, f_target)
    f_online = consistency(student(x_t, ts, embeds, mask), x_t, t, ac)
    return huber(f_online, f_target, huber_c)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, steps=1000, batch_size=32, lr=1e-4)
    common.add_stream_args(parser)
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model folder (stage 2's <out>/model)")
    parser.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where a fixed --num-images set is cached, keyed by a hash (default: --out)",
    )
    parser.add_argument(
        "--w", "-w", type=float, default=4.5, help="fixed guidance w, LCM convention (CFG scale 1 + w; default 4.5)"
    )
    parser.add_argument("--skip", "-k", type=int, default=20, help="skipping interval k in timesteps (default 20)")
    parser.add_argument("--ema-rate", type=float, default=0.95, help="target network EMA rate (default 0.95)")
    parser.add_argument("--huber-c", type=float, default=0.001, help="pseudo-Huber c (default 0.001)")
    parser.add_argument(
        "--init-student",
        default=None,
        help="start the student and its target from this model's DiT (`tiny`, a folder) instead of the "
        "teacher's: fine-tuning a distilled student after its teacher was fine-tuned (default: the teacher)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    acc = common.start_run(args)
    dev = acc.device
    teacher_model = load_model(args.teacher)
    train = TrainingData(args, acc, args.teacher / "vae", teacher_model)
    embeds, masks = train.frozen_text(teacher_model, dev)

    teacher = teacher_model.dit.eval().requires_grad_(False)
    if args.init_student:
        # Fine-tuning an existing student on a changed teacher (issue #24's free layouts): Algorithm 1
        # starts theta from the teacher; a student already consistent on the old data needs fewer steps.
        student = load_model(args.init_student).dit.train().requires_grad_(True)
        if student.config != teacher.config:
            raise SystemExit(
                f"--init-student {args.init_student}: its DiT ({student.config}) is not the teacher's "
                f"({teacher.config})"
            )
    else:
        student = copy.deepcopy(teacher).train().requires_grad_(True)
    student.null_caption.requires_grad_(False)  # the student is never unconditioned
    target = copy.deepcopy(student).eval().requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    fused = {"fused": True} if dev.type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, **fused)
    state = common.load_checkpoint(args.out, {"student": student, "target": target}, optimizer)
    start = state["step"] if state else 0
    model, optimizer = acc.prepare(StudentEps(student), optimizer)
    teacher.to(dev)
    target.to(dev)
    ac = alphas_cumprod()
    grid = np.arange(1, LCM_ORIGINAL_STEPS + 1) * (NUM_TRAIN_TIMESTEPS // LCM_ORIGINAL_STEPS) - 1  # 19 .. 999
    log = common.LossLog(args.out, ["loss"], start, acc.is_main_process)
    t0, elapsed0 = time.time(), (state or {}).get("elapsed_s", 0.0)
    bar = common.progress(args.steps, start, "lcd", acc.is_main_process and not args.no_progress)
    modules = {"student": student, "target": target}
    record = common.StepRecorder(args, acc, log, bar, modules, optimizer, start, t0, elapsed0)
    step = start
    while step < args.steps:
        if step > start and (step - start) % 25 == 0 and common.out_of_time(acc, t0, args.time_limit, args.stop_at):
            break
        rng = common.step_rng(args.seed, step, 3)
        idx = rng.integers(0, train.rows, size=args.batch_size)
        t_all = grid[rng.integers(0, len(grid), size=args.batch_size)]
        noise = torch.from_numpy(
            rng.standard_normal((args.batch_size, *base_latent_shape(teacher_model)), dtype="float32")
        )
        mine = common.shard(np.arange(args.batch_size), acc)
        t = [int(v) for v in t_all[mine]]
        x0, ids = train.batch(step, idx[mine])
        loss = lcd_loss(
            model,
            teacher,
            target,
            x0,
            noise[mine].to(dev),
            t,
            embeds[ids],
            masks[ids],
            args.w,
            args.skip,
            args.huber_c,
            ac,
        )
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        common.ema_update(target, student, args.ema_rate)
        step += 1
        record.after_step(step, loss)
    record.finish(step)
    train.close()
    common.check_replicas(args.out, student, acc)
    if acc.is_main_process:
        common.write_model_folder(args.out / "model", args.teacher, dit=target.eval().cpu())
        log.plot("LCD (pseudo-Huber consistency loss)")
        summary = {
            "steps": step,
            "steps_asked": args.steps,
            "elapsed_s": record.elapsed(),
            "final_loss_mean_last_100": float(log.read()["loss"][-100:].mean()),
            "scenes_rendered": train.stream.rendered if train.stream else args.num_images,
            "device": device_name(dev),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: summary[k] for k in ("steps", "elapsed_s", "final_loss_mean_last_100")}))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
