"""Package a finished run as the built-in `tiny`: the student's model folder plus MODEL_CARD.md.

    python -m reference.train.package --run runs/tiny --out reference/assets/tiny
    python -m reference.train.package --run runs/tiny --card-only --out /tmp/card   # card alone

The card is written from the run's own records (`<stage>/summary.json`, `loss.csv`) and the quality
benchmark's `benchmarks/results/quality_tiny.json`, so its figures are the measured ones.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from .common import LossLog

ROOT = Path(__file__).resolve().parents[2]


def _stage(run: Path, name: str) -> dict:
    summary = json.loads((run / name / "summary.json").read_text())
    loss = LossLog(run / name, ["loss"], 0, enabled=False).read()["loss"] if name != "vae" else \
        LossLog(run / name, ["loss", "l1", "kl"], 0, enabled=False).read()["loss"]
    summary["loss_first_100"] = float(loss[:100].mean())
    summary["loss_last_100"] = float(loss[-100:].mean())
    return summary


def processes(stage_dir: Path) -> int:
    """Data-parallel processes of a stage, from the replica check it wrote (1 if absent)."""
    path = stage_dir / "replicas.json"
    return int(json.loads(path.read_text())["processes"]) if path.exists() else 1


def text_encoder_line(args: dict) -> str:
    if args.get("text_encoder", "frozen") == "trained":
        return ("- Text encoder and tokenizer: the tiny T5 (2 layers, width 64, byte-level ByT5 tokenizer), trained "
                "with the teacher from `reference.tiny`'s random weights (PixArt freezes T5-XXL, which already "
                "knows language; a random T5 does not, so it learns here), then frozen for LCD.")
    return ("- Text encoder and tokenizer: the tiny random T5 (2 layers, width 64, byte-level ByT5 tokenizer), frozen, "
            "unchanged from `reference.tiny` (a deterministic text featuriser).")


def teacher_line(stage: dict) -> str:
    args = stage["args"]
    gamma = float(args.get("snr_gamma", 0))
    weighting = f"min-SNR-{gamma:g} loss weights" if gamma > 0 else "plain MSE"
    return (f"- Teacher: epsilon prediction, linear betas 1e-4..0.02 over 1000 steps, {weighting}, "
            f"{args.get('init', 'diffusers')} initialisation, 10% captions dropped to the learned null caption; "
            f"{stage['steps']} steps; EMA weights.")


def model_card(run: Path, results: Path, note: str | None = None) -> str:
    stages = {name: _stage(run, name) for name in ("vae", "teacher", "lcd")}
    total_h = sum(s["elapsed_s"] for s in stages.values()) / 3600
    lines = [
        "# Model card: the built-in `tiny` (miniature PixArt-delta)", "",
        "A 6-block, width-128 PixArt DiT on 16x16 latents (128 px) trained on CPU from scratch by this repository "
        "(`reference/train/`, issue #5): the PixArt-alpha objective for the teacher, then Latent Consistency "
        "Distillation (PixArt-delta Algorithm 1) for the 4-step student shipped here. It exists to prove the "
        "training code and to give every export backend a model whose images mean something; it draws "
        "coloured shapes, nothing else.", "",
        "## Data",
        "Generated, no downloads (`reference/train/data.py`): one shape (40%) or two shapes above / beside each other "
        "on white; 3 shapes x 4 colours; captions such as \"a red circle\" or \"a blue square above a yellow "
        "triangle on a white background\". Training set: data set seed 0. 24 of the 288 two-shape combinations "
        "never appear in training; they and the 12 single shapes are the evaluation captions.", "",
        "## Components",
        text_encoder_line(stages["teacher"]["args"]),
        f"- VAE: the tiny `AutoencoderKL` config trained {stages['vae']['steps']} steps (L1 + KL, 64 px crops); "
        f"scaling_factor = 1/std of latents = {stages['vae']['scaling_factor']:.4f}.",
        teacher_line(stages["teacher"]),
        f"- Student (these weights): LCD from the teacher, w = 4.5, DDIM solver, k = 20, target EMA 0.95, "
        f"pseudo-Huber c = 0.001; {stages['lcd']['steps']} steps; the target network is shipped.",
        "- ControlNet: rebuilt from the student's first blocks with small random projections (untrained, as before).", "",
        "## Training record",
        "| stage | steps | batch | lr | loss, first 100 steps | loss, last 100 steps | wall time |",
        "|---|---|---|---|---|---|---|"]
    for name, s in stages.items():
        args = s["args"]
        lines.append(f"| {name} | {s['steps']} | {args['batch_size']} | {args['lr']} | {s['loss_first_100']:.4f} | "
                     f"{s['loss_last_100']:.4f} | {s['elapsed_s'] / 60:.1f} min |")
    layout = ", ".join(f"{name} {processes(run / name)} process(es) x {s['args'].get('threads', '1')} thread(s)"
                       for name, s in stages.items())
    lines += ["", f"Total {total_h:.2f} h on a 2-core CPU ({layout}), seed 0 everywhere "
              "(`reference/train/train_tiny.sh`). Stage arguments are in each run folder's summary.json.", ""]
    if note:
        lines += [note, ""]
    if results.exists():
        bench = json.loads(results.read_text())
        lines += ["## Quality (`benchmarks/quality_tiny.py`)",
                  f"{bench['meta']['captions']} evaluation captions x {bench['meta']['seeds']} seeds, scored by a scene "
                  "classifier trained on the renderer. Adherence: all attributes of the prompt right.", "",
                  "| sampler | NFE | adherence | single | pair (held out) | Frechet |", "|---|---|---|---|---|---|"]
        for r in bench["results"]:
            lines.append(f"| {r['name']} | {r['nfe']} | {r['all']:.3f} | {r['single_all']:.3f} | "
                         f"{r['pair_all']:.3f} | {r['frechet']:.2f} |")
        lines.append("")
    lines += ["## Limits",
              "Tiny data and a few CPU hours: expect blurry shapes, wrong colours or counts on some seeds, and "
              "weaker two-shape compositions than single shapes. Not a general text-to-image model."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder of reference/train/train_tiny.sh")
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
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=args.out.parent))
    try:
        shutil.copytree(args.run / "lcd" / "model", tmp, dirs_exist_ok=True)
        (tmp / "MODEL_CARD.md").write_text(card)
        tmp.chmod(0o755)
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(args.out)


if __name__ == "__main__":
    main()
