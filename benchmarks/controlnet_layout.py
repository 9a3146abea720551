"""Does the control image decide where shapes go? Placement of the tiny ControlNet (issue #24).

Placement (`reference.train.layout.placed`, pixels only): for each object of the control scene, the
generated image has a region of that object's colour centred inside the object's outline, of similar
area. Sets, each x `--seeds` noise seeds, mean [95% bootstrap interval over scenes, then seeds]:

    probe        issue #24's check: one circle (then one square) at the top, bottom, left and right of the
                 frame, prompt "a red circle" / "a red square"
    held-out     `--scenes` free-layout scenes with every object in a held-out (position, size) cell
                 (`layout.HELDOUT_CELLS`: never rendered in training), their captions as prompts
    captioned    `--scenes` of data.py's captioned scenes (the old benchmark's): control IoU and the scene
                 classifier's adherence, to see the control keeps the caption's attributes
    contradict   caption "a <c1> <s1> above a <c2> <s2>", control: the same two shapes the other way up;
                 the scene classifier says which won (caption, control, or neither)

Each ControlNet (`--controlnet NAME=PATH`: a ControlNet-Transformer folder, or a run's arm folder
holding `controlnet/`, Transformer or UNet; `shipped` is the built-in) is applied to the 4-step LCD
student (LCM, no guidance), as `generate --controlnet` does: the `--sweep` one (default the first) at
each of `--scales`, the others at scale 1; scale 0 is no control. Paired differences against no control
and between every two ControlNets at scale 1 (later minus earlier): the ablation's comparisons.

    .venv/bin/python benchmarks/controlnet_layout.py --controlnet shipped=reference/assets/tiny/controlnet \\
        --controlnet t3=runs/cnl/t3/controlnet --name controlnet_layout
Writes benchmarks/results/<name>.{md,json} and <name>_grid.png (control | no control | controlled).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from controlnet_tiny import EVAL_START, arm_model, grid  # noqa: E402
from quality_tiny import bootstrap, classifier, correct_matrix, fmt  # noqa: E402

from reference.controlnet import ControlledDiT  # noqa: E402
from reference.controlnet_unet import ControlledDiTUNet  # noqa: E402
from reference.loading import TINY_DIR, load_controlnet, load_model  # noqa: E402
from reference.train import classifier as probe  # noqa: E402
from reference.train import control, data, layout  # noqa: E402
from reference.train.controlnet import EvalSet, encode_captions, encode_images, sample  # noqa: E402

#: Contradiction cases: (caption's top object, caption's bottom object) as (shape, colour) indices.
CONTRADICTIONS = (((0, 0), (1, 2)), ((1, 1), (2, 3)), ((2, 2), (0, 3)), ((0, 3), (1, 0)))
CONTRADICTION_JITTERS = 3  # renders of each contradiction's control (positions and sizes jitter)


class Prompts:
    """Controls (uint8 and latents), prompts (embeddings) and the objects the controls show."""

    def __init__(self, model, controls: np.ndarray, captions: list[str], things=None, scenes=None, labels=None):
        self.controls, self.captions, self.things, self.scenes, self.labels = controls, captions, things, scenes, labels
        self.control_latents = encode_images(model.vae, controls)
        self.embeds, self.masks = encode_captions(model, captions)

    def __len__(self) -> int:
        return len(self.captions)


def probe_set(model, condition: str = "edge") -> Prompts:
    """Issue #24's probe: a red circle, then a red square, at the top, bottom, left and right."""
    things = [[layout.Thing(shape, 0, t.cx, t.cy, t.r)] for shape in (0, 1) for [t] in layout.offcentre_circles()]
    controls = np.stack([control.condition(layout.render(t), condition) for t in things])
    return Prompts(model, controls, [f"a red {data.SHAPES[t[0].shape]}" for t in things], things)


def heldout_set(model, count: int, condition: str = "edge") -> Prompts:
    samples = [layout.sample(EVAL_SEED_LAYOUT, i, heldout=True) for i in range(count)]
    scenes = np.stack([s[0] for s in samples])
    controls = np.stack([control.condition(s, condition) for s in scenes])
    return Prompts(model, controls, [s[1] for s in samples], [s[2] for s in samples], scenes)


def contradiction_set(model, condition: str = "edge") -> Prompts:
    """Control: the caption's bottom object on top. Labels: the caption's (as data.Labels tuples)."""
    controls, captions, labels = [], [], []
    for top, bottom in CONTRADICTIONS:
        said = data.Labels(1, top[0], top[1], bottom[0], bottom[1])
        drawn = data.Labels(1, bottom[0], bottom[1], top[0], top[1])
        for j in range(CONTRADICTION_JITTERS):
            scene = data.render(drawn, 128, np.random.default_rng([EVAL_SEED_LAYOUT, 77, j, *said.as_tuple()]))
            controls.append(control.condition(scene, condition))
            captions.append(data.caption(said))
            labels.append(said.as_tuple())
    return Prompts(model, np.stack(controls), captions, labels=np.asarray(labels))


EVAL_SEED_LAYOUT = 900_024  # held-out layouts' data seed: not a training one


def on_student(path: Path, teacher_dit, student_dit):
    """The fused controlled student of a ControlNet folder, or of a run's arm folder (Transformer or UNet)."""
    if (path / "controlnet").is_dir():
        fused = arm_model(path.parent, path.name, teacher_dit)
        if isinstance(fused, ControlledDiTUNet):
            out = ControlledDiTUNet(student_dit, len(fused.controlnet))
            out.controlnet = fused.controlnet
            return out.eval()
        path = path / "controlnet"
    return ControlledDiT(student_dit, load_controlnet(path, teacher_dit)).eval()


def flipped(labels: np.ndarray) -> np.ndarray:
    """The same vertical pair the other way up (object b on top)."""
    return labels[:, [0, 3, 4, 1, 2]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--controlnet",
        action="append",
        default=[],
        help="NAME=FOLDER of a ControlNet-Transformer (repeatable; default shipped=the built-in)",
    )
    parser.add_argument("--student", default="tiny", help="the LCD student the ControlNets are applied to")
    parser.add_argument("--teacher", default="tiny-teacher", help="the base they were trained on")
    parser.add_argument("--scenes", type=int, default=48, help="held-out layouts and captioned scenes (default 48)")
    parser.add_argument("--seeds", type=int, default=2, help="noise seeds per scene (default 2)")
    parser.add_argument("--steps", type=int, default=4, help="student LCM steps (default 4)")
    parser.add_argument("--scales", default="0,0.5,1,1.5", help="conditioning scales (default 0,0.5,1,1.5)")
    parser.add_argument(
        "--condition",
        choices=("edge", "mask"),
        default="edge",
        help="the control images every ControlNet gets: edge outlines or filled silhouettes (default edge)",
    )
    parser.add_argument("--sweep", default=None, help="the ControlNet measured at every scale (default the first)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--classifier-steps", type=int, default=300, help="probe training steps (default 300)")
    parser.add_argument("--classifier-images", type=int, default=3000, help="probe training images (default 3000)")
    parser.add_argument("--classifier-cache", type=Path, default=None, help="reuse the probe from this folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--curves", default="", help="RUN_DIR:ARM,ARM: plot those arms' eval.csv (placement, control IoU) by step"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--name", default="controlnet_layout", help="stem of the result files")
    args = parser.parse_args(argv)
    nets = dict(spec.split("=", 1) for spec in (args.controlnet or [f"shipped={TINY_DIR / 'controlnet'}"]))
    sweep = args.sweep or next(iter(nets))
    scales = [float(s) for s in args.scales.split(",")]
    torch.set_num_threads(args.threads)
    t0 = time.time()
    clf = classifier(args)
    teacher, student = load_model(args.teacher), load_model(args.student)
    seeds = list(range(args.seeds))
    sets = {
        "probe": probe_set(student, args.condition),
        "held-out": heldout_set(student, args.scenes, args.condition),
        "contradict": contradiction_set(student, args.condition),
    }
    captioned = EvalSet(student, args.condition, args.scenes, start=EVAL_START)
    sets["captioned"] = Prompts(
        student, captioned.controls, captioned.captions, scenes=captioned.scenes, labels=captioned.labels
    )

    def run(fused, s: Prompts, scale: float) -> np.ndarray:
        return np.concatenate(
            [
                sample(
                    fused,
                    student.vae,
                    s.embeds,
                    s.masks,
                    s.control_latents,
                    scale,
                    "lcm",
                    args.steps,
                    seed,
                    lcm_spacing=student.lcm_spacing,
                )
                for seed in seeds
            ]
        )  # seed-major [seeds * N, H, W, 3]

    def per_scene(values: np.ndarray, n: int) -> np.ndarray:
        return values.reshape(len(seeds), n).T  # [scenes, seeds]

    rows, raw, images_of = [], {}, {}
    with torch.no_grad():
        for name, path in nets.items():
            fused = on_student(Path(path), teacher.dit, student.dit)
            for scale in scales if name == sweep else [s for s in scales if s in (0.0, 1.0)]:
                if scale == 0 and any(r["scale"] == 0 for r in rows):
                    continue  # no control is the same for every ControlNet
                key = "none" if scale == 0 else f"{name}@{scale:g}"
                t = time.time()
                out = {}
                for set_name in ("probe", "held-out"):
                    s = sets[set_name]
                    imgs = run(fused, s, scale)
                    images_of[(key, set_name)] = imgs
                    out[set_name] = per_scene(layout.placement(imgs, s.things * len(seeds)), len(s))
                s = sets["captioned"]
                imgs = run(fused, s, scale)
                images_of[(key, "captioned")] = imgs
                want = np.concatenate([s.labels for _ in seeds])
                out["iou"] = per_scene(control.control_iou(imgs, np.concatenate([s.scenes for _ in seeds])), len(s))
                out["adherence"] = correct_matrix(clf.predict(probe.to_tensor(imgs)), want, len(s)).astype(float)
                s = sets["contradict"]
                imgs = run(fused, s, scale)
                images_of[(key, "contradict")] = imgs
                pred = clf.predict(probe.to_tensor(imgs))
                want = np.concatenate([s.labels for _ in seeds])
                out["caption wins"] = correct_matrix(pred, want, len(s)).astype(float)
                out["control wins"] = correct_matrix(pred, flipped(want), len(s)).astype(float)
                raw[key] = out
                row = {"key": key, "controlnet": "none" if scale == 0 else name, "scale": scale}
                row |= {k: bootstrap(v, args.bootstrap) for k, v in out.items()}
                row["seconds"] = time.time() - t
                rows.append(row)
                print(json.dumps({"row": key, **{k: round(row[k]["mean"], 3) for k in out}}), flush=True)
    for row in rows:
        base = raw["none"]
        row["vs none"] = {k: bootstrap(raw[row["key"]][k], args.bootstrap, baseline=base[k]) for k in base}
    comparisons = []
    names = list(nets)
    for i, first in enumerate(names):
        for later in names[i + 1 :]:
            a, b = f"{later}@1", f"{first}@1"
            if a in raw and b in raw:
                comparisons.append(
                    {
                        "name": f"{a} - {b}",
                        **{k: bootstrap(raw[a][k], args.bootstrap, baseline=raw[b][k]) for k in raw[a]},
                    }
                )
    meta = {
        "scenes": args.scenes,
        "seeds": args.seeds,
        "steps": args.steps,
        "controlnets": nets,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "seconds": time.time() - t0,
        # the metric on the renderer's own held-out scenes: its ceiling (touching same-colour shapes merge)
        "ceiling": bootstrap(
            layout.placement(sets["held-out"].scenes, sets["held-out"].things)[:, None], args.bootstrap
        ),
        "command": "python benchmarks/controlnet_layout.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(args.curves, args.out / f"{args.name}_curve.png") if args.curves else {}
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "comparisons": comparisons, "curves": curves}, indent=2) + "\n"
    )
    held = sets["held-out"]
    shown = "edges" if args.condition == "edge" else "silhouettes"
    cols = [(f"control ({shown})", held.controls), ("no control", images_of[("none", "held-out")])]
    cols += [(f"{r['key']}", images_of[(r["key"], "held-out")]) for r in rows if r["scale"] == 1.0]
    grid(cols, rows=min(6, len(held))).save(args.out / f"{args.name}_grid.png")
    (args.out / f"{args.name}.md").write_text(markdown(meta, rows, comparisons))
    print(f"wrote {args.out / args.name}.md")


def plot_curves(spec: str, path: Path) -> dict:
    """Placement and control IoU by training step of each arm (its eval.csv: the teacher, DDIM 10, CFG 5.5,
    32 held-out layouts and 32 captioned scenes) into one figure; {arm: {step, control_iou, placement}}."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, arms = spec.split(":", 1)
    curves = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm in arms.split(","):
        with (Path(run) / arm / "eval.csv").open() as f:
            rows = [r for r in csv.DictReader(f)]
        curve = {k: [float(r[k]) for r in rows] for k in ("step", "control_iou", "placement")}
        curves[arm] = curve
        for ax, key in zip(axes, ("placement", "control_iou")):
            ax.plot(curve["step"], curve[key], marker="o", ms=3, label=arm)
    for ax, title in zip(axes, ("placement, 32 held-out layouts", "control IoU, 32 captioned scenes")):
        ax.set_xlabel("training step")
        ax.set_title(title + " (teacher DDIM 10)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return curves


METRICS = ("probe", "held-out", "iou", "adherence", "caption wins", "control wins")


def markdown(meta: dict, rows: list[dict], comparisons: list[dict]) -> str:
    nets = ", ".join(f"`{k}`: {v}" for k, v in meta["controlnets"].items())
    lines = [
        "# Placement: does the tiny ControlNet put shapes where the control draws them?",
        "",
        f"Student LCM {meta['steps']} steps with each ControlNet ({nets}); "
        f"{meta['seeds']} seeds; mean [95% bootstrap interval over scenes, then seeds]. "
        "probe: issue #24's 8 off-centre circles and squares, placement; held-out: placement on "
        f"{meta['scenes']} free-layout scenes whose every object is at a (position, size) cell never rendered "
        f"in training; IoU and adherence: {meta['scenes']} captioned scenes (the scene classifier: every "
        'attribute right); caption / control wins: caption "A above B" with the control drawing B above A '
        f"(4 pairs x {CONTRADICTION_JITTERS} renders), the classifier reads which layout the image shows. "
        f"CPU: {meta['cpu']}, {meta['threads']} threads; {meta['seconds']:.0f} s. Placement of the renderer's "
        f"own held-out scenes (the metric's ceiling): {fmt(meta['ceiling'])}.",
        "",
        "| ControlNet | scale | probe placement | held-out placement | control IoU | adherence | caption wins | "
        "control wins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['controlnet']} | {r['scale']:g} | " + " | ".join(fmt(r[m]) for m in METRICS) + " |")
    lines += ["", "Paired against no control (same scenes and seeds):", ""]
    lines += ["| row | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for r in rows[1:]:
        lines.append(f"| {r['key']} | " + " | ".join(fmt(r["vs none"][m]) for m in METRICS) + " |")
    if comparisons:
        lines += ["", "Paired between ControlNets at equal scale:", ""]
        lines += ["| comparison | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        lines += [f"| {c['name']} | " + " | ".join(fmt(c[m]) for m in METRICS) + " |" for c in comparisons]
    lines += ["", "Made by:", "", "```bash", meta["command"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
