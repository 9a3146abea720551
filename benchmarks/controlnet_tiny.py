"""ControlNet on the miniature PixArt-delta (issue #14): the paper's design ablation, a conditioning-scale
sweep, and LCM + ControlNet, measured by control IoU and caption adherence with 95% intervals.

Arms (`reference/train/controlnet_ablation.sh`, all trained on the frozen teacher with equal steps,
data and batches): ControlNet-Transformer with N = 1, 2, 3 copied blocks (`t1`..`t3`) and
ControlNet-UNet with 3 copies (`u3`, the same parameter count as `t3`). Evaluation: `--scenes` scenes
of a data seed training never used (edge maps as control, their captions as prompts) x `--seeds`
noise seeds. Control IoU (`reference.train.control.control_iou`): foreground of the generated image
against the scene the edges came from, read from pixels, so every row is measured with one ruler;
adherence: the scene classifier's share of images with every attribute of the caption right
(`reference.train.classifier`, as in quality_tiny.py). Intervals: 95% bootstrap over scenes, then
seeds within each scene; differences against "no control" are paired (same scenes and seeds).

Rows:
    ablation    teacher DDIM 25 (trailing, CFG 5.5) with each arm at conditioning scale 1, and scale 0
    sweep       the shipped arm at scales 0, 0.5, 1, 1.5, on the teacher (DDIM 25) and on the LCD
                student (LCM 4 steps, no guidance): LCM + ControlNet, the combination called PixArt-delta
    curve       control IoU during training (each arm's eval.csv: 32 other scenes, DDIM 10), as a plot

    .venv/bin/python benchmarks/controlnet_tiny.py --runs runs/cn --ship t3
Writes benchmarks/results/controlnet_tiny.{md,json}, controlnet_tiny_curve.png, controlnet_tiny_grid.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality_tiny import bootstrap, classifier, correct_matrix, fmt  # noqa: E402

from reference.controlnet import ControlledDiT  # noqa: E402
from reference.controlnet_unet import ControlledDiTUNet  # noqa: E402
from reference.loading import load_controlnet, load_model  # noqa: E402
from reference.train import classifier as probe  # noqa: E402
from reference.train import control  # noqa: E402
from reference.train.controlnet import EvalSet, sample  # noqa: E402

ARM_NAMES = {
    "t1": "Transformer N=1",
    "t2": "Transformer N=2",
    "t3": "Transformer N=3",
    "u3": "UNet (3 copies)",
    "t3m": "Transformer N=3, silhouette",
}
#: Paired comparisons between arms at scale 1 on the teacher (same scenes and seeds): (arm, baseline).
COMPARISONS = (("t3", "u3"), ("t3", "t1"), ("t2", "t1"), ("t3", "t2"))
#: The command of the committed results (written before the command was recorded in the JSON).
MADE_BY_DEFAULT = (
    "python benchmarks/controlnet_tiny.py --runs runs/cn --arms t1,t2,t3,u3,t3m --ship t3 "
    "--classifier-cache runs/probe --threads 2"
)
EVAL_START = 1000  # eval scenes start here in the eval seed; the training curve uses scenes 0..31


def condition_of(arm: str) -> str:
    """Arms named with a trailing m were trained on silhouettes (`controlnet_ablation.sh`)."""
    return "mask" if arm.endswith("m") else "edge"


def arm_model(run: Path, arm: str, base):
    """The fused controlled model of a trained arm on `base` (a DiT)."""
    if arm.startswith("u"):
        fused = ControlledDiTUNet(base, int(arm[1:].rstrip("m")))
        fused.controlnet.load_state_dict(load_file(str(run / arm / "controlnet" / "unet.safetensors")))
        return fused.eval()
    return ControlledDiT(base, load_controlnet(run / arm / "controlnet", base)).eval()


def read_curve(run: Path, arm: str) -> tuple[np.ndarray, np.ndarray]:
    with (run / arm / "eval.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    arr = np.asarray([r[:2] for r in rows], dtype=np.float64).reshape(-1, 2)  # step, control IoU (then placement)
    return arr[:, 0], arr[:, 1]


def plot_curves(run: Path, arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in arms:
        steps, iou = read_curve(run, arm)
        style = "--" if condition_of(arm) == "mask" else "-"
        ax.plot(steps, iou, style, marker="o", ms=3, label=ARM_NAMES.get(arm, arm))
    ax.set_xlabel("training step")
    ax.set_ylabel("control IoU (32 scenes, teacher DDIM 10)")
    ax.text(0.01, 0.01, "dashed: silhouette condition (its own controls)", transform=ax.transAxes, fontsize=7)
    ax.set_title("ControlNet designs on the miniature: control IoU while training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid(columns: list[tuple[str, np.ndarray]], rows: int, cell: int = 128) -> Image.Image:
    """Columns of images (label, uint8 [N,H,W,3]), first `rows` scenes, a label strip on top."""
    strip = 14
    out = Image.new("RGB", (cell * len(columns), strip + cell * rows), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for j, (label, images) in enumerate(columns):
        draw.text((j * cell + 3, 1), label[:22], fill=(0, 0, 0))
        for i in range(rows):
            out.paste(Image.fromarray(images[i]), (j * cell, strip + i * cell))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="folder of the ablation arms (controlnet_ablation.sh)")
    parser.add_argument("--arms", default="t1,t2,t3,u3", help="arms to compare (default t1,t2,t3,u3)")
    parser.add_argument("--ship", default="t3", help="the arm of the scale sweep and LCM rows (default t3)")
    parser.add_argument("--teacher", default="tiny-teacher", help="base the arms were trained on")
    parser.add_argument("--student", default="tiny", help="the LCD student the ControlNet is applied to")
    parser.add_argument("--scenes", type=int, default=48, help="evaluation scenes (default 48)")
    parser.add_argument("--seeds", type=int, default=2, help="noise seeds per scene (default 2)")
    parser.add_argument("--teacher-steps", type=int, default=25, help="teacher DDIM steps (default 25)")
    parser.add_argument("--student-steps", type=int, default=4, help="student LCM steps (default 4)")
    parser.add_argument("--cfg", type=float, default=5.5, help="teacher guidance (default 5.5 = 1 + w)")
    parser.add_argument("--scales", default="0,0.5,1,1.5", help="conditioning scales of the sweep")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--classifier-steps", type=int, default=300, help="probe training steps (default 300)")
    parser.add_argument("--classifier-images", type=int, default=3000, help="probe training images (default 3000)")
    parser.add_argument("--classifier-cache", type=Path, default=None, help="reuse the probe from this folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--name", default="controlnet_tiny", help="stem of the result files")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the markdown from the JSON of an earlier run, measure nothing",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        saved = json.loads((args.out / f"{args.name}.json").read_text())
        saved["meta"].setdefault("command", MADE_BY_DEFAULT)
        text = markdown(args, saved["meta"], saved["rows"], saved["comparisons"], saved["arms"])
        (args.out / f"{args.name}.md").write_text(text)
        return
    arms = [a for a in args.arms.split(",") if a]
    scales = [float(s) for s in args.scales.split(",")]
    torch.set_num_threads(args.threads)
    t0 = time.time()
    clf = classifier(args)
    teacher, student = load_model(args.teacher), load_model(args.student)
    null = teacher.dit.null_caption.detach()
    ev = EvalSet(teacher, "edge", args.scenes, start=EVAL_START)
    ev_mask = EvalSet(teacher, "mask", args.scenes, start=EVAL_START) if any(map(condition_of, arms)) else None
    seeds = list(range(args.seeds))
    want = np.asarray([lab for _ in seeds for lab in ev.labels])
    scenes = np.concatenate([ev.scenes for _ in seeds])

    results, images_of = [], {}

    def measure(key: str, name: str, fused, sampler: str, scale: float, condition: str = "edge") -> dict:
        t = time.time()
        steps = args.teacher_steps if sampler == "ddim" else args.student_steps
        spacing = student.lcm_spacing
        controls = ev_mask.control_latents if condition == "mask" else ev.control_latents
        imgs = np.concatenate(
            [
                sample(
                    fused,
                    teacher.vae,
                    ev.embeds,
                    ev.masks,
                    controls,
                    scale,
                    sampler,
                    steps,
                    seed,
                    guidance=args.cfg,
                    null=null,
                    lcm_spacing=spacing,
                )
                for seed in seeds
            ]
        )
        iou = control.control_iou(imgs, scenes).reshape(len(seeds), -1).T  # [scenes, seeds]
        correct = correct_matrix(clf.predict(probe.to_tensor(imgs)), want, args.scenes)
        row = {
            "key": key,
            "name": name,
            "sampler": sampler,
            "steps": steps,
            "scale": scale,
            "iou": bootstrap(iou, args.bootstrap),
            "adherence": bootstrap(correct, args.bootstrap),
            "seconds": time.time() - t,
            "_iou": iou,
            "_correct": correct,
        }
        images_of[key] = imgs
        results.append(row)
        print(json.dumps({"row": name, "iou": row["iou"]["mean"], "adherence": row["adherence"]["mean"]}), flush=True)
        return row

    base_rows = {}
    with torch.no_grad():
        ship_t = arm_model(args.runs, args.ship, teacher.dit)
        base_rows["ddim"] = measure("t-none", "teacher, no control (scale 0)", ship_t, "ddim", 0.0)
        for arm in arms:
            fused = ship_t if arm == args.ship else arm_model(args.runs, arm, teacher.dit)
            measure(f"t-{arm}", f"teacher + {ARM_NAMES.get(arm, arm)}", fused, "ddim", 1.0, condition_of(arm))
        for scale in scales:
            if scale not in (0.0, 1.0):
                measure(f"t-{args.ship}-{scale:g}", f"teacher + {args.ship} at scale {scale:g}", ship_t, "ddim", scale)
        ship_s = ControlledDiT(student.dit, ship_t.controlnet).eval()
        base_rows["lcm"] = measure("s-none", "student LCM, no control (scale 0)", ship_s, "lcm", 0.0)
        for scale in scales:
            if scale != 0.0:
                measure(
                    f"s-{args.ship}-{scale:g}", f"student LCM + {args.ship} at scale {scale:g}", ship_s, "lcm", scale
                )

    for row in results:
        ref = base_rows[row["sampler"]]
        row["iou_vs_none"] = bootstrap(row["_iou"], args.bootstrap, baseline=ref["_iou"])
        row["adherence_vs_none"] = bootstrap(row["_correct"], args.bootstrap, baseline=ref["_correct"])
    by_key = {r["key"]: r for r in results}
    comparisons = [
        {
            "name": f"{ARM_NAMES[a]} - {ARM_NAMES[b]}",
            "iou": bootstrap(by_key[f"t-{a}"]["_iou"], args.bootstrap, baseline=by_key[f"t-{b}"]["_iou"]),
            "adherence": bootstrap(by_key[f"t-{a}"]["_correct"], args.bootstrap, baseline=by_key[f"t-{b}"]["_correct"]),
        }
        for a, b in COMPARISONS
        if f"t-{a}" in by_key and f"t-{b}" in by_key
    ]
    curves = {arm: [list(v) for v in read_curve(args.runs, arm)] for arm in arms}
    summaries = {arm: json.loads((args.runs / arm / "summary.json").read_text()) for arm in arms}
    meta = {
        "scenes": args.scenes,
        "seeds": args.seeds,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "seconds": time.time() - t0,
        "teacher": args.teacher,
        "student": args.student,
        "ship": args.ship,
        "cfg": args.cfg,
        "command": "python benchmarks/controlnet_tiny.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (args.out / f"{args.name}.json").write_text(
        json.dumps(
            {"meta": meta, "rows": clean, "comparisons": comparisons, "curves": curves, "arms": summaries}, indent=2
        )
        + "\n"
    )
    plot_curves(args.runs, arms, args.out / f"{args.name}_curve.png")
    cols = [("control (edges)", np.stack([c for c in ev.controls])), ("scene", ev.scenes)]
    cols += [
        (r["name"].replace("teacher + ", "T ").replace("student LCM + ", "S "), images_of[r["key"]]) for r in results
    ]
    grid(cols, rows=6).save(args.out / f"{args.name}_grid.png")
    (args.out / f"{args.name}.md").write_text(markdown(args, meta, clean, comparisons, summaries))
    print(f"wrote {args.out / args.name}.md")


def markdown(args, meta: dict, rows: list[dict], comparisons: list[dict], summaries: dict) -> str:
    lines = [
        "# ControlNet on the miniature PixArt-delta",
        "",
        f"{meta['scenes']} evaluation scenes (edge-map controls, their captions as prompts) x {meta['seeds']} seeds; "
        "mean [95% bootstrap interval over scenes, then seeds]; differences are paired against the same "
        "sampler's no-control row. Control IoU: foreground of the image vs the scene's; adherence: every "
        f"attribute of the caption right (scene classifier). Teacher: DDIM {args.teacher_steps} trailing, "
        f"CFG {meta['cfg']:g}, control on both branches; student: LCM {args.student_steps} steps. "
        f"CPU: {meta['cpu']}, {meta['threads']} threads; {meta['seconds']:.0f} s.",
        "",
        "| row | scale | control IoU | vs no control | adherence | vs no control |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['scale']:g} | {fmt(r['iou'])} | {fmt(r['iou_vs_none'])} | {fmt(r['adherence'])} | "
            f"{fmt(r['adherence_vs_none'])} |"
        )
    if comparisons:
        lines += [
            "",
            "Designs compared on the teacher at scale 1, paired (same scenes and seeds), mean [95% interval]:",
            "",
            "| comparison | control IoU | adherence |",
            "|---|---|---|",
        ]
        lines += [f"| {c['name']} | {fmt(c['iou'])} | {fmt(c['adherence'])} |" for c in comparisons]
    lines += ["", "Arms (equal steps, batch, learning rate and data; the silhouette arm on its own condition):", ""]
    lines += [
        "| arm | design | copies | condition | trainable parameters | steps | final loss (mean of last 100) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, s in summaries.items():
        lines.append(
            f"| {arm} | {s['design']} | {s['copies']} | {s['args']['condition']} | {s['trainable_parameters']:,} | "
            f"{s['steps']} | "
            f"{s['final_loss_mean_last_100']:.5f} |"
        )
    lines += [
        "",
        f"Curve: `{args.name}_curve.png`; images: `{args.name}_grid.png` (first 6 scenes, seed 0).",
        "",
        "Made by:",
        "",
        "```bash",
        "reference/train/controlnet_ablation.sh runs/cn   # arms t3 u3 t1 t2 (defaults: 600 steps, batch 32, lr 5e-4)",
        'ARMS="t3m" reference/train/controlnet_ablation.sh runs/cn   # the silhouette arm',
        meta["command"],
        "```",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
