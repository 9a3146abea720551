"""Quality of the miniature PixArt-delta without a hub: prompt adherence and a Frechet distance read
by a scene classifier trained on the renderer (`reference.train.classifier`).

Captions (`reference.train.data.eval_groups`, canonical phrasing): 12 single shapes, 24 two-shape
combinations seen in training ("seen pair": binding) and the 24 held out of training ("held-out
pair": composition never seen), `--seeds` images each (seeds `--seed-offset` ...). Rows:
    teacher DDIM 25 steps with guidance, teacher DDIM 4 steps with guidance (CFG scale `--cfg`, default
    5.5 = 1 + w: the guidance the student was distilled at, w = 4.5 in LCM's convention; "trailing"
    DDIM spacing, so 4 steps start at t = 999 as the student's do, not at 750 as "leading" would),
    student LCM 1, 2, 4, 8 steps (no guidance),
the renderer itself ("real") and real renders passed through the VAE ("VAE reconstruction", the
ceiling for anything the DiT generates). Adherence: the share of images with every attribute of the
prompt right; each figure has a 95% bootstrap interval that resamples captions, then seeds within
each caption (`--bootstrap` resamples). The comparisons the LCD claim rests on (student 4 steps
against teacher 25 and teacher 4 steps) are paired differences on the same captions and seeds,
with their own intervals. The Frechet distance compares each set's classifier features with those of
real renders of the same captions (other seeds); NFE counts DiT evaluations per image (guidance
doubles them).

    .venv/bin/python benchmarks/quality_tiny.py --teacher tiny-teacher --student tiny
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

ROW_KEYS = ("real", "vae", "t25", "t4", "s1", "s2", "s4", "s8")
GROUPS = ("single", "seen pair", "held-out pair")
#: Paired comparisons reported with intervals: (row, baseline row).
COMPARISONS = (("s4", "t25"), ("s4", "t4"))
DEMO_PROMPT = "a red circle above a blue square"


def sampler_rows(teacher, student, cfg: float) -> list[dict]:
    """The generated rows: key, name, model, sampler, steps, guidance, NFE per image."""
    rows = [
        dict(
            key="t25",
            name=f"teacher DDIM 25 (CFG {cfg:g})",
            model=teacher,
            sampler="ddim",
            steps=25,
            guidance=cfg,
            nfe=50,
        ),
        dict(
            key="t4", name=f"teacher DDIM 4 (CFG {cfg:g})", model=teacher, sampler="ddim", steps=4, guidance=cfg, nfe=8
        ),
    ]
    rows += [
        dict(key=f"s{k}", name=f"student LCM {k}", model=student, sampler="lcm", steps=k, guidance=1.0, nfe=k)
        for k in (1, 2, 4, 8)
    ]
    return rows


def load_on(spec, device: torch.device):
    model = load_model(spec)
    for module in (model.dit, model.text_encoder, model.vae):
        module.to(device)
    return model


def generate(
    model,
    sampler: str,
    steps: int,
    guidance: float,
    prompts: list[str],
    seeds: list[int],
    ddim_spacing: str = "trailing",
) -> torch.Tensor:
    pipe = ReferencePipeline(model)
    out = [
        pipe(
            prompts,
            steps=steps,
            seed=s,
            sampler=sampler,
            guidance_scale=guidance,
            output="pt",
            ddim_spacing=ddim_spacing,
        ).cpu()
        for s in seeds
    ]
    return torch.cat(out)  # [seeds * len(prompts), 3, H, W], seed-major


def correct_matrix(pred: np.ndarray, want: np.ndarray, captions: int) -> np.ndarray:
    """[captions, seeds] bool: every attribute right, from seed-major predictions and labels [N,5]."""
    pair = want[:, 0] > 0
    ok = (pred[:, :3] == want[:, :3]).all(1) & np.where(pair, (pred[:, 3:] == want[:, 3:]).all(1), True)
    return ok.reshape(-1, captions).T


def _resample(captions: int, seeds: int, draws: int, rng: np.random.Generator):
    """Index arrays for the two-level bootstrap: captions with replacement, then seeds within each."""
    c = rng.integers(0, captions, size=(draws, captions))
    s = rng.integers(0, seeds, size=(draws, captions, seeds))
    return c[..., None], s


def bootstrap(matrix: np.ndarray, draws: int, seed: int = 0, baseline: np.ndarray | None = None) -> dict:
    """Mean of a [captions, seeds] 0/1 matrix (minus `baseline`'s, paired) with a 95% bootstrap interval."""
    m = matrix.astype(np.float64) - (0.0 if baseline is None else baseline.astype(np.float64))
    c, s = _resample(*m.shape, draws, np.random.default_rng(seed))
    means = m[c, s].mean(axis=(1, 2))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(m.mean()), "lo": float(lo), "hi": float(hi)}


def scores(correct: np.ndarray, groups: dict[str, slice], draws: int) -> dict:
    out = {"all": bootstrap(correct, draws)}
    for name, rows in groups.items():
        out[name] = bootstrap(correct[rows], draws)
    pairs = np.concatenate([correct[groups["seen pair"]], correct[groups["held-out pair"]]])
    out["pair"] = bootstrap(pairs, draws)
    return out


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
        for j, x in enumerate(images[: len(captions)]):
            arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            img.paste(Image.fromarray(arr).resize((cell, cell)), (label_w + j * cell, head_h + i * cell))
    return img


def grid_columns(prompts: list[str], groups: dict[str, slice]) -> list[int]:
    """Two single shapes, three seen pairs, three held-out pairs (the demo prompt first if held out)."""
    single, seen, held = (list(range(len(prompts))[groups[g]]) for g in GROUPS)
    held = sorted(held, key=lambda i: prompts[i] != DEMO_PROMPT)
    return [single[0], single[5], *seen[:3], *held[:3]]


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


def fmt(score: dict) -> str:
    return f"{score['mean']:.3f} [{score['lo']:.3f}, {score['hi']:.3f}]"


def markdown(name: str, meta: dict, results: list[dict], comparisons: list[dict]) -> str:
    lines = [
        f"# Quality of the miniature PixArt-delta ({name})",
        "",
        f"{meta['captions']} evaluation captions (12 single shapes, 24 two-shape combinations seen in training, "
        f"24 held out of training) x {meta['seeds']} seeds ({meta['seed_list']}); scores read by the scene "
        "classifier (`reference/train/classifier.py`). Adherence: share of images with every attribute of "
        "the prompt right, mean [95% bootstrap interval over captions, then seeds]. Frechet: distance of "
        "classifier features to real renders (lower is better). s/image on "
        f"{meta['device']}.",
        "",
        "| sampler | NFE | adherence (all) | single | seen pair | held-out pair | pairs | layout | shape | "
        "colour | Frechet | s/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['nfe']} | {fmt(r['all'])} | {fmt(r['single'])} | {fmt(r['seen pair'])} | "
            f"{fmt(r['held-out pair'])} | {fmt(r['pair'])} | {r['layout']:.3f} | {r['shape']:.3f} | "
            f"{r['colour']:.3f} | {r['frechet']:.2f} | {r['seconds_per_image']:.4f} |"
        )
    if comparisons:
        lines += [
            "",
            "Paired differences (same captions and seeds), mean [95% bootstrap interval]:",
            "",
            "| comparison | all | single | seen pair | held-out pair | pairs |",
            "|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            lines.append(
                f"| {c['name']} | {fmt(c['all'])} | {fmt(c['single'])} | {fmt(c['seen pair'])} | "
                f"{fmt(c['held-out pair'])} | {fmt(c['pair'])} |"
            )
    lines += [
        "",
        f"Grid: `{name}_grid.png` (seed {meta['seed_list'].split('..')[0]}; columns: 2 single shapes, 3 seen "
        "pairs, 3 held-out pairs). Teacher "
        f"`{meta['teacher']}`, student `{meta['student']}`. Probe: {meta['classifier_steps']} steps on "
        f"{meta['classifier_images']} renders; run took {meta['total_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="teacher model: 'tiny-teacher' or a model folder")
    parser.add_argument("--student", help="LCD student model: 'tiny' or a model folder")
    parser.add_argument("--cfg", type=float, default=5.5, help="teacher CFG scale (default 5.5 = 1 + w)")
    parser.add_argument(
        "--ddim-spacing",
        choices=("trailing", "leading"),
        default="trailing",
        help="teacher DDIM timestep spacing (default trailing: starts at t=999)",
    )
    parser.add_argument("--seeds", type=int, default=16, help="images per caption (default 16)")
    parser.add_argument("--seed-offset", type=int, default=0, help="first noise seed (default 0)")
    parser.add_argument(
        "--rows",
        default=",".join(ROW_KEYS),
        help=f"comma-separated rows to measure (default all: {','.join(ROW_KEYS)})",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the models run (default: cuda if available, else cpu)",
    )
    parser.add_argument("--classifier-steps", type=int, default=300, help="probe training steps (default 300)")
    parser.add_argument("--classifier-images", type=int, default=3000, help="probe training images (default 3000)")
    parser.add_argument(
        "--classifier-cache",
        type=Path,
        default=None,
        help="folder to keep the trained probe in and reuse it from (default: train every run)",
    )
    parser.add_argument("--classifier-only", action="store_true", help="train (and cache) the probe, then stop")
    parser.add_argument("--no-grid", action="store_true", help="no grid image")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--name", default="quality_tiny", help="stem of the result files (default quality_tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    keys = [k for k in args.rows.split(",") if k]
    if unknown := set(keys) - set(ROW_KEYS):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROW_KEYS)}")
    generated = [r for r in sampler_rows(args.teacher, args.student, args.cfg) if r["key"] in keys]
    if not args.classifier_only and any(r["model"] is None for r in generated):
        parser.error("--teacher and --student are required for the rows asked (unless --classifier-only)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    clf = classifier(args)
    clf_s = time.time() - t0
    if args.classifier_only:
        return
    evals = [item for g in GROUPS for item in data.eval_groups()[g]]
    sizes = [len(data.eval_groups()[g]) for g in GROUPS]
    bounds = np.cumsum([0, *sizes])
    groups = {g: slice(int(bounds[i]), int(bounds[i + 1])) for i, g in enumerate(GROUPS)}
    prompts = [c for c, _ in evals]
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    want = np.asarray([lab.as_tuple() for _ in seeds for _, lab in evals])
    # Reference features: real renders of the evaluation captions, seeds disjoint from the "real" row.
    ref = np.stack([data.render_for(lab, 2, i) for i in range(8) for _, lab in evals])
    ref_feat = clf.embed(probe.to_tensor(ref))

    rows, results, matrices = [], [], {}

    def record(key: str, name: str, nfe: int, images: torch.Tensor, per_image: float) -> None:
        pred = clf.predict(images)
        matrices[key] = correct_matrix(pred, want, len(prompts))
        attrs = probe.adherence(pred, want)
        results.append(
            {
                "key": key,
                "name": name,
                "nfe": nfe,
                **scores(matrices[key], groups, args.bootstrap),
                "layout": attrs["layout"],
                "shape": attrs["shape"],
                "colour": attrs["colour"],
                "frechet": probe.frechet_distance(clf.embed(images), ref_feat),
                "seconds_per_image": per_image,
            }
        )
        rows.append((name, images))
        print(
            json.dumps(
                {
                    "name": name,
                    "all": results[-1]["all"]["mean"],
                    **{g: results[-1][g]["mean"] for g in (*GROUPS, "pair")},
                }
            ),
            flush=True,
        )

    if "real" in keys or "vae" in keys:
        real = probe.to_tensor(np.stack([data.render_for(lab, 1, i) for i in seeds for _, lab in evals]))
        if "real" in keys:
            record("real", "real (renderer)", 0, real, 0.0)
        if "vae" in keys:
            with torch.no_grad():
                vae = load_on(args.student, device).vae
                recon = torch.cat(
                    [
                        vae_io.decode(vae, vae_io.encode(vae, real[i : i + 64].to(device))).cpu()
                        for i in range(0, len(real), 64)
                    ]
                )
            record("vae", "VAE reconstruction", 0, recon, 0.0)
    loaded: dict[str, object] = {}
    for row in generated:
        spec = str(row["model"])
        if spec not in loaded:
            loaded.clear()
            loaded[spec] = load_on(spec, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.time()
        images = generate(
            loaded[spec], row["sampler"], row["steps"], row["guidance"], prompts, seeds, args.ddim_spacing
        )
        record(row["key"], row["name"], row["nfe"], images, (time.time() - t) / len(images))

    comparisons = []
    names = {r["key"]: r["name"] for r in results}
    for a, b in COMPARISONS:
        if a in matrices and b in matrices:
            paired = {"all": bootstrap(matrices[a], args.bootstrap, baseline=matrices[b])}
            for g, sl in groups.items():
                paired[g] = bootstrap(matrices[a][sl], args.bootstrap, baseline=matrices[b][sl])
            pa = np.concatenate([matrices[a][groups["seen pair"]], matrices[a][groups["held-out pair"]]])
            pb = np.concatenate([matrices[b][groups["seen pair"]], matrices[b][groups["held-out pair"]]])
            paired["pair"] = bootstrap(pa, args.bootstrap, baseline=pb)
            comparisons.append({"name": f"{names[a]} minus {names[b]}", "row": a, "baseline": b, **paired})

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = {
        "teacher": str(args.teacher),
        "student": str(args.student),
        "seeds": args.seeds,
        "seed_list": f"{seeds[0]}..{seeds[-1]}",
        "cfg": args.cfg,
        "ddim_spacing": args.ddim_spacing,
        "captions": len(prompts),
        "groups": {g: sizes[i] for i, g in enumerate(GROUPS)},
        "bootstrap": args.bootstrap,
        "classifier_steps": args.classifier_steps,
        "classifier_images": args.classifier_images,
        "classifier_seconds": clf_s,
        "total_seconds": time.time() - t0,
        "torch_threads": args.threads,
        "device": device_name,
    }
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "results": results, "comparisons": comparisons}, indent=2) + "\n"
    )
    if not args.no_grid and rows:
        cols = grid_columns(prompts, groups)
        grid = grid_image([(n, x[cols]) for n, x in rows], [prompts[c] for c in cols])
        grid.quantize(256).save(args.out / f"{args.name}_grid.png", optimize=True)  # palette PNG
    text = markdown(args.name, meta, results, comparisons)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
