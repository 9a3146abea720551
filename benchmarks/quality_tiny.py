"""Quality of the miniature PixArt-delta without a hub: prompt adherence and a Frechet distance read
by a scene classifier trained on the renderer (`reference.train.classifier`).

Samplers compared on the fixed evaluation captions (`reference.train.data.eval_captions`: 12 single
shapes and 24 two-shape scenes held out of training), `--seeds` images each:
    teacher DDIM 25 steps with guidance, teacher DDIM 4 steps with guidance (CFG scale `--cfg`, default
    5.5 = 1 + w: the guidance the student was distilled at, w = 4.5 in LCM's convention; "trailing"
    DDIM spacing, so 4 steps start at t = 999 as the student's do, not at 750 as "leading" would),
    student LCM 1, 2, 4, 8 steps (no guidance),
the renderer itself ("real") and real renders passed through the VAE ("VAE reconstruction", the
ceiling for anything the DiT generates). The Frechet distance compares each set's classifier
features with those of real renders of the same captions (other seeds); NFE counts DiT evaluations
per image (guidance doubles them).

    .venv/bin/python benchmarks/quality_tiny.py --teacher runs/tiny/teacher/model --student runs/tiny/lcd/model
Writes benchmarks/results/quality_tiny.{md,json} and quality_tiny_grid.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reference import vae as vae_io  # noqa: E402
from reference.loading import load_model  # noqa: E402
from reference.pipeline import ReferencePipeline  # noqa: E402
from reference.train import classifier as probe  # noqa: E402
from reference.train import data  # noqa: E402

GRID_CAPTIONS = 8  # columns of the grid: the first singles and pairs of the evaluation set


def configs(teacher: Path, student: Path, cfg: float):
    """(name, model folder, sampler, steps, guidance, NFE per image)."""
    yield f"teacher DDIM 25 (CFG {cfg:g})", teacher, "ddim", 25, cfg, 50
    yield f"teacher DDIM 4 (CFG {cfg:g})", teacher, "ddim", 4, cfg, 8
    for k in (1, 2, 4, 8):
        yield f"student LCM {k}", student, "lcm", k, 1.0, k


def generate(folder: Path, sampler: str, steps: int, guidance: float, prompts: list[str], seeds: int,
             ddim_spacing: str = "trailing") -> torch.Tensor:
    pipe = ReferencePipeline(load_model(folder))
    out = [pipe(prompts, steps=steps, seed=s, sampler=sampler, guidance_scale=guidance, output="pt",
                ddim_spacing=ddim_spacing) for s in range(seeds)]
    return torch.cat(out)  # [seeds * len(prompts), 3, H, W], seed-major


def grid_image(rows: list[tuple[str, torch.Tensor]], captions: list[str], cell: int = 128) -> Image.Image:
    label_w, head_h = 170, 40
    img = Image.new("RGB", (label_w + cell * len(captions), head_h + cell * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for j, text in enumerate(captions):
        words, lines = text.split(), [""]
        for w in words:  # wrap to the cell width
            lines[-1] = (lines[-1] + " " + w).strip() if len(lines[-1]) + len(w) < 22 else lines[-1]
            if not lines[-1].endswith(w):
                lines.append(w)
        draw.multiline_text((label_w + j * cell + 2, 1), "\n".join(lines[:3]), fill="black", spacing=1)
    for i, (name, images) in enumerate(rows):
        draw.text((4, head_h + i * cell + cell // 2 - 6), name, fill="black")
        for j, x in enumerate(images[:len(captions)]):
            arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            img.paste(Image.fromarray(arr).resize((cell, cell)), (label_w + j * cell, head_h + i * cell))
    return img


def classifier(args) -> probe.SceneClassifier:
    """The probe, trained (deterministic) or read from `--classifier-cache`, keyed by its settings."""
    if args.classifier_cache is None:
        return probe.train_classifier(steps=args.classifier_steps, num_images=args.classifier_images)
    path = args.classifier_cache / f"probe-{args.classifier_steps}-{args.classifier_images}.safetensors"
    if path.exists():
        model = probe.SceneClassifier()
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = probe.train_classifier(steps=args.classifier_steps, num_images=args.classifier_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path))
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, help="teacher model folder")
    parser.add_argument("--student", type=Path, help="LCD student model folder")
    parser.add_argument("--cfg", type=float, default=5.5, help="teacher CFG scale (default 5.5 = 1 + w)")
    parser.add_argument("--ddim-spacing", choices=("trailing", "leading"), default="trailing",
                        help="teacher DDIM timestep spacing (default trailing: starts at t=999)")
    parser.add_argument("--seeds", type=int, default=4, help="images per caption (default 4)")
    parser.add_argument("--classifier-steps", type=int, default=300, help="probe training steps (default 300)")
    parser.add_argument("--classifier-images", type=int, default=3000, help="probe training images (default 3000)")
    parser.add_argument("--classifier-cache", type=Path, default=None,
                        help="folder to keep the trained probe in and reuse it from (default: train every run)")
    parser.add_argument("--classifier-only", action="store_true", help="train (and cache) the probe, then stop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--name", default="quality_tiny", help="stem of the result files (default quality_tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if not args.classifier_only and (args.teacher is None or args.student is None):
        parser.error("--teacher and --student are required (unless --classifier-only)")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    clf = classifier(args)
    clf_s = time.time() - t0
    if args.classifier_only:
        return
    evals = data.eval_captions()
    prompts = [c for c, _ in evals]
    want = np.asarray([lab.as_tuple() for _ in range(args.seeds) for _, lab in evals])
    # Reference features: real renders of the evaluation captions, seeds disjoint from the "real" row.
    ref = np.stack([data.render_for(lab, 2, i) for i in range(8) for _, lab in evals])
    ref_feat = clf.embed(probe.to_tensor(ref))
    real = probe.to_tensor(np.stack([data.render_for(lab, 1, i) for i in range(args.seeds) for _, lab in evals]))

    with torch.no_grad():
        vae = load_model(args.student).vae
        recon = torch.cat([vae_io.decode(vae, vae_io.encode(vae, real[i:i + 32])) for i in range(0, len(real), 32)])
    rows, results = [("real (renderer)", real), ("VAE reconstruction", recon)], []
    for name, images in rows:
        acc = probe.adherence(clf.predict(images), want)
        results.append({"name": name, "nfe": 0, **acc, "seconds_per_image": 0.0,
                        "frechet": probe.frechet_distance(clf.embed(images), ref_feat)})
    for name, folder, sampler, steps, guidance, nfe in configs(args.teacher, args.student, args.cfg):
        t = time.time()
        images = generate(folder, sampler, steps, guidance, prompts, args.seeds, args.ddim_spacing)
        per_image = (time.time() - t) / len(images)
        acc = probe.adherence(clf.predict(images), want)
        results.append({"name": name, "nfe": nfe, **acc, "frechet": probe.frechet_distance(clf.embed(images), ref_feat),
                        "seconds_per_image": per_image})
        rows.append((name, images))
        print(json.dumps(results[-1]), flush=True)

    cols = [0, 5, 10, 7] + list(range(12, 12 + GRID_CAPTIONS - 4))  # 4 singles of different shapes, 4 pairs
    grid = grid_image([(n, x[cols]) for n, x in rows], [prompts[c] for c in cols])
    grid.quantize(256).save(args.out / f"{args.name}_grid.png", optimize=True)  # palette PNG: a few hundred KB
    meta = {"teacher": str(args.teacher), "student": str(args.student), "seeds": args.seeds, "cfg": args.cfg,
            "ddim_spacing": args.ddim_spacing,
            "captions": len(prompts), "classifier_steps": args.classifier_steps,
            "classifier_images": args.classifier_images, "classifier_seconds": clf_s,
            "total_seconds": time.time() - t0, "torch_threads": args.threads}
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [f"# Quality of the miniature PixArt-delta ({args.name})", "",
             f"{len(prompts)} evaluation captions (12 single shapes, 24 held-out pairs) x {args.seeds} seeds; "
             "scores read by the scene classifier (`reference/train/classifier.py`). Adherence: every attribute "
             "of the prompt right; Frechet: distance of classifier features to real renders (lower is better).", "",
             "| sampler | NFE | adherence | single | pair (held out) | layout | shape | colour | Frechet | s/image |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['nfe']} | {r['all']:.3f} | {r['single_all']:.3f} | {r['pair_all']:.3f} | "
                     f"{r['layout']:.3f} | {r['shape']:.3f} | {r['colour']:.3f} | {r['frechet']:.2f} | "
                     f"{r['seconds_per_image']:.3f} |")
    lines += ["", f"Grid: `{args.name}_grid.png` (seed 0). Probe: {args.classifier_steps} steps on "
              f"{args.classifier_images} renders; run took {meta['total_seconds']:.0f} s with {args.threads} thread(s)."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
