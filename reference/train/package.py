"""Package a finished run as the built-in `tiny`: the student's model folder, the teacher's DiT
(`teacher/transformer`, loaded as `tiny-teacher`) and MODEL_CARD.md.

    python -m reference.train.package --run runs/tiny --out reference/assets/tiny
    python -m reference.train.package --run runs/tiny --card-only --out /tmp/card   # card alone
    python -m reference.train.package_controlnet --runs runs/cn --arm t3            # then the ControlNet

The LCD folder's `controlnet/` is the untrained, zero-initialised one (`common.write_model_folder`);
`package_controlnet` replaces it with the trained one, trained on the shipped teacher.

A run folder holds `teacher/` and `lcd/` (each `summary.json`, `loss.csv`, `model/`), optionally `vae/`
(`summary.json`, `loss.csv`; absent when the shipped VAE was reused) and `record.json` (the machine
and the teacher arms of `reference.train.gpu_run`). The card is written from these records and the
quality benchmark's JSON (`benchmarks/results/quality_tiny.json`), so its figures are the measured ones,
with their 95% bootstrap intervals, and it states which of issue #13's gates they meet.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from .common import LossLog, replacing

ROOT = Path(__file__).resolve().parents[2]


def _stage(run: Path, name: str) -> dict | None:
    if not (run / name / "summary.json").exists():
        return None
    summary = json.loads((run / name / "summary.json").read_text())
    columns = ["loss", "l1", "kl"] if name == "vae" else ["loss"]
    loss = LossLog(run / name, columns, 0, enabled=False).read()["loss"]
    summary["loss_first_100"] = float(loss[:100].mean())
    summary["loss_last_100"] = float(loss[-100:].mean())
    return summary


def processes(stage_dir: Path) -> int:
    """Data-parallel processes of a stage, from the replica check it wrote (1 if absent)."""
    path = stage_dir / "replicas.json"
    return int(json.loads(path.read_text())["processes"]) if path.exists() else 1


def text_encoder_line(args: dict, t5: dict | None) -> str:
    size = f"{t5['num_layers']} layers, width {t5['d_model']}, feed-forward {t5['d_ff']}" if t5 else "width 64"
    if args.get("text_encoder", "frozen") == "trained":
        return (
            f"- Text encoder and tokenizer: the tiny T5 ({size}, byte-level ByT5 tokenizer), trained with the "
            "teacher from random weights (PixArt freezes T5-XXL, which already knows language; a random T5 "
            "does not, so it learns here), then frozen for LCD."
        )
    return f"- Text encoder and tokenizer: the tiny random T5 ({size}, byte-level ByT5 tokenizer), frozen."


def _given(args: dict, key: str) -> str | None:
    value = args.get(key)
    return None if value in (None, "None", "") else value


def teacher_line(stage: dict) -> str:
    args = stage["args"]
    gamma = float(args.get("snr_gamma", 0))
    weighting = f"min-SNR-{gamma:g} loss weights" if gamma > 0 else "plain MSE"
    start = (
        f"fine-tuned from `{_given(args, 'init_from')}`"
        if _given(args, "init_from")
        else f"{args.get('init', 'diffusers')} initialisation"
    )
    return (
        f"- Teacher (`teacher/transformer`, `--model tiny-teacher`): epsilon prediction, linear betas 1e-4..0.02 "
        f"over 1000 steps, {weighting}, {start}, 10% captions dropped to "
        f"the learned null caption; {stage['steps']} steps; EMA weights."
    )


def student_line(stage: dict) -> str:
    start = _given(stage["args"], "init_student")
    origin = f"LCD from the teacher, the student started from `{start}`" if start else "LCD from the teacher"
    return (
        f"- Student (these weights): {origin}, w = 4.5, DDIM solver, k = 20, target EMA 0.95, "
        f"pseudo-Huber c = 0.001; {stage['steps']} steps; the target network is shipped."
    )


def data_line(stage: dict) -> str:
    args = stage["args"]
    if int(args.get("num_images", 0) or 0) > 0:
        free = float(args.get("free_layout", 0) or 0)
        mixed = (
            f", {free:.0%} of them free-layout scenes (`reference/train/layout.py`: two or three objects anywhere "
            "in the frame, captions that mostly name no places, no held-out pair)"
            if free
            else ""
        )
        return f"Training set: a fixed {args['num_images']} scenes of data set seed {args.get('seed', 0)}{mixed}."
    window, chunk = int(args.get("window", 0)), int(args.get("chunk", 0))
    return (
        f"Training data: the seeded scene stream rendered on the fly, a sliding window of {window} x {chunk} = "
        f"{window * chunk} scenes, one chunk replaced every {args.get('refresh')} steps; "
        f"{stage.get('scenes_rendered', '?')} scenes rendered for the teacher."
    )


def fmt(score: dict) -> str:
    return f"{score['mean']:.3f} [{score['lo']:.3f}, {score['hi']:.3f}]"


def gates(results: list[dict]) -> list[str]:
    """Issue #13's gates, stated against the measured figures (mean and interval)."""
    rows = {r["key"]: r for r in results}
    if not {"t25", "t4", "s4"} <= set(rows):
        return []
    t25, t4, s4 = rows["t25"], rows["t4"], rows["s4"]

    def line(text: str, ok: bool) -> str:
        return f"- {text}: {'met' if ok else 'NOT met'}"

    out = [
        line(f"teacher DDIM 25 seen pairs >= 0.80 ({fmt(t25['seen pair'])})", t25["seen pair"]["mean"] >= 0.80),
        line(f"teacher DDIM 25 single shapes >= 0.95 ({fmt(t25['single'])})", t25["single"]["mean"] >= 0.95),
    ]
    for group, label in (("pair", "pairs"), ("all", "all captions")):
        gap = abs(s4[group]["mean"] - t25[group]["mean"])
        out.append(
            line(
                f"student LCM 4 within 0.05 of teacher DDIM 25 on {label} ({s4[group]['mean']:.3f} vs "
                f"{t25[group]['mean']:.3f})",
                gap <= 0.05,
            )
        )
        lift = s4[group]["mean"] - t4[group]["mean"]
        out.append(line(f"student LCM 4 at least 0.30 above teacher DDIM 4 on {label} ({lift:+.3f})", lift >= 0.30))
    return out


def model_card(run: Path, results: Path, note: str | None = None) -> str:
    stages = {name: s for name in ("vae", "teacher", "lcd") if (s := _stage(run, name)) is not None}
    record = json.loads((run / "record.json").read_text()) if (run / "record.json").exists() else {}
    t5_config = run / "teacher" / "model" / "text_encoder" / "config.json"
    t5 = json.loads(t5_config.read_text()) if t5_config.exists() else None
    machine = record.get("machine", {})
    where = machine.get("gpu") or "a CPU"
    lines = [
        "# Model card: the built-in `tiny` (miniature PixArt-delta)",
        "",
        "A 6-block, width-128 PixArt DiT on 16x16 latents (128 px) trained from scratch by this repository "
        "(`reference/train/`): the PixArt-alpha objective for the teacher, then Latent Consistency Distillation "
        "(PixArt-delta Algorithm 1) for the 4-step student shipped as `tiny`; the teacher ships beside it as "
        "`tiny-teacher` (`--sampler ddim` on `tiny` uses it). It draws coloured shapes, nothing else.",
        "",
        "## Data",
        "Generated, no downloads (`reference/train/data.py`): one shape (25%) or two shapes above / beside each other "
        'on white; 3 shapes x 4 colours; captions such as "a red circle" or "a blue square above a yellow '
        'triangle on a white background". 24 of the 288 two-shape combinations never appear in training.',
        data_line(stages["teacher"]),
        "",
        "## Components",
        text_encoder_line(stages["teacher"]["args"], t5),
    ]
    if "vae" in stages:
        lines.append(
            f"- VAE: the tiny `AutoencoderKL` config trained {stages['vae']['steps']} steps (L1 + KL); "
            f"scaling_factor = 1/std of latents = {stages['vae']['scaling_factor']:.4f}."
        )
    else:
        lines.append("- VAE: the previously shipped tiny VAE, reused unchanged (frozen).")
    lines += [
        teacher_line(stages["teacher"]),
        student_line(stages["lcd"]),
        "- ControlNet (`controlnet/`, `--controlnet tiny`): a ControlNet-Transformer trained on the teacher's edge "
        "maps by `reference/train/controlnet.py` and shipped by `reference.train.package_controlnet` (its own card: "
        "`controlnet/MODEL_CARD.md`); valid for the teacher and this student.",
        "",
        "## Training record",
        "| stage | steps | batch | lr | loss, first 100 steps | loss, last 100 steps | wall time | processes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in stages.items():
        args = s["args"]
        lines.append(
            f"| {name} | {s['steps']} | {args['batch_size']} | {args['lr']} | {s['loss_first_100']:.4f} | "
            f"{s['loss_last_100']:.4f} | {s['elapsed_s'] / 60:.1f} min | {processes(run / name)} |"
        )
    total_h = sum(s["elapsed_s"] for s in stages.values()) / 3600
    lines += [
        "",
        f"Total {total_h:.2f} h of training loops on {where}, seed 0 everywhere. Stage arguments are in "
        "each run folder's summary.json.",
    ]
    if record.get("selection") and len(record.get("arms", {})) > 1:
        sel = record["selection"]
        lines += [
            "",
            f"Teacher arms trained side by side; kept: `{sel['best']}` by {sel['criterion']}:",
            "",
            "| arm | arguments | steps | seen-pair adherence | all |",
            "|---|---|---|---|---|",
        ]
        for arm, extra in record.get("arms", {}).items():
            steps = (record.get("teacher_summaries", {}).get(arm) or {}).get("steps", "?")
            score = sel["scores"].get(arm)
            shown = f"{score[0]:.3f} | {score[1]:.3f}" if score else "- | -"
            lines.append(f"| {arm} | `{' '.join(extra)}` | {steps} | {shown} |")
    elif len(record.get("arms", {})) == 1:
        (arm, extra), *_ = record["arms"].items()
        lines += ["", f"One teacher arm, `{arm}`: `{' '.join(extra)}`."]
    lines.append("")
    if note:
        lines += [note, ""]
    if results.exists():
        bench = json.loads(results.read_text())
        meta = bench["meta"]
        lines += [
            "## Quality (`benchmarks/quality_tiny.py`)",
            f"{meta['captions']} evaluation captions x {meta['seeds']} seeds, scored by a scene classifier "
            "trained on the renderer. Adherence: all attributes of the prompt right; mean [95% bootstrap "
            "interval].",
            "",
            "| sampler | NFE | all | single | seen pair | held-out pair | Frechet |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in bench["results"]:
            lines.append(
                f"| {r['name']} | {r['nfe']} | {fmt(r['all'])} | {fmt(r['single'])} | {fmt(r['seen pair'])} | "
                f"{fmt(r['held-out pair'])} | {r['frechet']:.2f} |"
            )
        lines += ["", *gates(bench["results"]), ""]
    lines += [
        "## Limits",
        "Expect blurry shapes, wrong colours or counts on some seeds, and weaker two-shape compositions than "
        "single shapes (see the seen- and held-out-pair columns). Words outside the training captions are "
        "unknown (`reference.vocab`). Not a general text-to-image model.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder (teacher/, lcd/, optional vae/)")
    parser.add_argument("--out", type=Path, required=True, help="destination model folder (replaced)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "quality_tiny.json")
    parser.add_argument("--card-only", action="store_true", help="write only MODEL_CARD.md into --out")
    parser.add_argument("--note", default=None, help="a sentence for the card's training record (how the run went)")
    args = parser.parse_args(argv)
    card = model_card(args.run, args.results, args.note)
    if args.card_only:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "MODEL_CARD.md").write_text(card)
        return
    with replacing(args.out) as tmp:
        shutil.copytree(args.run / "lcd" / "model", tmp, dirs_exist_ok=True)
        shutil.copytree(args.run / "teacher" / "model" / "transformer", tmp / "teacher" / "transformer")
        (tmp / "MODEL_CARD.md").write_text(card)
    print(args.out)


if __name__ == "__main__":
    main()
