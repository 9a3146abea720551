"""Package a trained ControlNet-Transformer arm as the built-in `--controlnet tiny`, with its card and
the run records of the ablation it was chosen from.

    python -m reference.train.package_controlnet --runs runs/cn --arm t3

Writes `reference/assets/tiny/controlnet/` (config.json with `base_sha256` of the teacher it was
trained on and `validated_sha256` of the LCD student it was measured on, the weights,
`control_convention.json` (the condition it was trained on, black on white, 128 px: what `generate`,
`run` and the C++ runtime check control images against), MODEL_CARD.md written from the benchmarks'
JSON, so its figures are the measured ones: `--results` (controlnet_tiny.py) and `--layout`
(controlnet_layout.py: placement and the caption-control contradiction) and copies every arm's
`loss.csv`, `eval.csv` and `summary.json` to `--records/<arm>/`.

    python -m reference.train.package_controlnet --runs runs/cn --arm t3 --layout-name t3 --card-only
rewrites only the card of the shipped folder (same weights), from the same records.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..loading import TINY_DIR, load_controlnet, load_dit, save_controlnet
from .common import replacing

ROOT = Path(__file__).resolve().parents[2]
GATE_PLACEMENT, GATE_ADHERENCE = 0.80, 0.05  # issue #24's gate for a ControlNet that carries the layout
RECORDS = ("loss.csv", "eval.csv", "summary.json", "replicas.json", "loss.png")


def fmt(score: dict) -> str:
    return f"{score['mean']:.3f} [{score['lo']:.3f}, {score['hi']:.3f}]"


def layout_section(layout: dict, name: str) -> list[str]:
    """The card's placement and contradiction section: the rows of ControlNet `name` and no control."""
    meta = layout["meta"]
    rows = [r for r in layout["rows"] if r["controlnet"] in ("none", name)]
    lines = [
        "",
        "## Placement and caption-control contradiction (`benchmarks/controlnet_layout.py`)",
        f"The 4-step student; {meta['seeds']} seeds; mean [95% bootstrap interval]. Probe: issue #24's 8 "
        "off-centre circles and squares; held-out: placement on "
        f"{meta['scenes']} free-layout scenes with every object in a (position, size) cell never rendered in "
        "training (`reference/train/layout.py`; placement reads pixels: an object of the right colour centred "
        "inside the control object's outline, within half to twice its area). Contradiction: caption \"A "
        'above B", control drawing B above A; the scene classifier reads which layout the image shows.',
        "",
        "| scale | probe placement | held-out placement | control IoU | adherence | caption wins | control wins |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("probe", "held-out", "iou", "adherence", "caption wins", "control wins")
    for r in rows:
        lines.append(f"| {r['scale']:g} | " + " | ".join(fmt(r[k]) for k in keys) + " |")
    verdicts = []
    for r in rows:
        cap, ctl = r["caption wins"]["mean"], r["control wins"]["mean"]
        winner = "the caption" if cap > ctl else "the control" if ctl > cap else "neither"
        verdicts.append(f"scale {r['scale']:g}: {winner} ({cap:.2f} caption, {ctl:.2f} control)")
    lines += ["", "Which wins when they disagree: " + "; ".join(verdicts) + "."]
    at1 = next((r for r in rows if r["scale"] == 1.0), None)
    if at1 is not None:
        placed, drop = at1["held-out"]["mean"], at1["vs none"]["adherence"]["mean"]
        met = placed >= GATE_PLACEMENT and drop >= -GATE_ADHERENCE
        lines += [
            "",
            f"Issue #24's gate (held-out placement at scale 1 >= {GATE_PLACEMENT:.2f}, adherence within "
            f"{GATE_ADHERENCE:.2f} of no control): {'met' if met else 'not met'} (placement {placed:.3f}, "
            f"adherence {drop:+.3f}).",
        ]
    return lines


def card(arm: str, summary: dict, bench: dict, layout: dict | None = None, layout_name: str = "") -> str:
    args = summary["args"]
    rows = {r["key"]: r for r in bench["rows"]}
    meta = bench["meta"]
    lines = [
        "# Model card: the built-in tiny ControlNet (`--controlnet tiny`)",
        "",
        f"PixArt-delta's ControlNet-Transformer on the miniature: trainable copies of the first {summary['copies']} "
        "of the teacher's 6 blocks, the output of copy i through a zero-initialised linear layer added to the "
        "output of frozen block i (the input of block i+1), the condition read through the VAE and the patch "
        "embedding into a zero-initialised linear layer before copy 0 (`reference/controlnet.py`).",
        "",
        "## Training (`reference/train/controlnet.py`)",
        f"- Base: the teacher (`tiny-teacher`), frozen with its T5 and VAE; {summary['trainable_parameters']:,} "
        "trainable parameters.",
        f"- Condition: `{args['condition']}` maps computed from each scene (`reference/train/control.py`: black "
        "outlines on white, where the scene's colour changes).",
        f"- {summary['steps']} steps, batch {args['batch_size']}, AdamW lr {args['lr']} ({args['warmup']} warm-up "
        f"steps), epsilon MSE with min-SNR-{float(args['snr_gamma']):g} weights, {float(args['cfg_drop']):.0%} of "
        f"captions dropped to the null caption; {args['num_images']} fixed scenes of data seed {args['seed']}; "
        f"{summary['elapsed_s'] / 60:.1f} min on a CPU ({summary['processes']} process(es)).",
        f"- Chosen as arm `{arm}` of the design ablation (`benchmarks/results/controlnet_tiny.md`); its loss and "
        "control-IoU curve are in `benchmarks/results/controlnet_tiny_run/`.",
        "- Valid for the teacher it was trained on and for the LCD student `tiny` distilled from that teacher "
        "(`validated_sha256`; measured below); loading it on any other base is refused.",
        "",
        "## Measured (`benchmarks/controlnet_tiny.py`)",
        f"{meta['scenes']} scenes of a data seed training never used x {meta['seeds']} seeds; mean [95% bootstrap "
        "interval]. Control IoU: the generated image's foreground against the scene's the edges came from.",
        "",
        "| sampler | scale | control IoU | vs no control | adherence | vs no control |",
        "|---|---|---|---|---|---|",
    ]
    for r in bench["rows"]:
        if r["key"].startswith(("t-none", "s-")) or r["key"] in (f"t-{arm}",) or r["key"].startswith(f"t-{arm}-"):
            lines.append(
                f"| {r['name']} | {r['scale']:g} | {fmt(r['iou'])} | {fmt(r['iou_vs_none'])} | "
                f"{fmt(r['adherence'])} | {fmt(r['adherence_vs_none'])} |"
            )
    student = rows.get(f"s-{arm}-1")
    if student:
        lines += [
            "",
            f"At scale 1 on the shipped 4-step student: control IoU {student['iou_vs_none']['mean']:+.3f} over no "
            f"control, adherence {student['adherence_vs_none']['mean']:+.3f}.",
        ]
    if layout is not None:
        lines += layout_section(layout, layout_name or arm)
    condition = "edge outlines" if args["condition"] == "edge" else "filled silhouettes"
    lines += [
        "",
        "## Control convention (`control_convention.json`)",
        f"{condition}, black on white, 128 px. `generate`, `run` and the C++ runtime warn in one line when a "
        "control image looks inverted (white on black, HED's convention: pass `--invert-control`) or, for "
        "edges, filled.",
        "",
        "## Limits",
        "The miniature's scenes only (black outlines on white, 128 px). Shapes the edges draw that "
        "the caption does not name pull the image both ways.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the ablation's folder (one sub-folder per arm)")
    parser.add_argument("--arm", default="t3", help="the arm to ship (default t3)")
    parser.add_argument("--out", type=Path, default=TINY_DIR / "controlnet", help="destination (replaced)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "controlnet_tiny.json")
    parser.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "results" / "controlnet_tiny_run")
    parser.add_argument(
        "--layout", type=Path, default=None, help="controlnet_layout.py's JSON (placement, contradiction) for the card"
    )
    parser.add_argument("--layout-name", default="", help="the ControlNet's name in --layout (default --arm)")
    parser.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md of --out only (same weights)")
    args = parser.parse_args(argv)
    layout = json.loads(args.layout.read_text()) if args.layout else None
    summary = json.loads((args.runs / args.arm / "summary.json").read_text())
    if summary["design"] != "transformer":
        raise SystemExit(f"arm {args.arm} is a {summary['design']} ControlNet; only the Transformer design ships")
    text = card(args.arm, summary, json.loads(args.results.read_text()), layout, args.layout_name)
    if args.card_only:
        (args.out / "MODEL_CARD.md").write_text(text)
        print(args.out / "MODEL_CARD.md")
        return
    teacher = load_dit(TINY_DIR / "teacher" / "transformer")
    student = load_dit(TINY_DIR / "transformer")
    net = load_controlnet(args.runs / args.arm / "controlnet", teacher)
    with replacing(args.out) as tmp:
        save_controlnet(net, tmp, teacher, validated=(student,))
        (tmp / "MODEL_CARD.md").write_text(text)
        convention = {"condition": summary["args"]["condition"], "polarity": "dark-on-light", "resolution": 128}
        # read by pixart_export.control_check (reference imports nothing from pixart_export: the record is JSON)
        (tmp / "control_convention.json").write_text(json.dumps(convention, indent=2) + "\n")
    for arm_dir in sorted(p for p in args.runs.iterdir() if (p / "summary.json").exists()):
        dest = args.records / arm_dir.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in RECORDS:
            if (arm_dir / name).exists():
                shutil.copy(arm_dir / name, dest / name)
    print(args.out)


if __name__ == "__main__":
    main()
