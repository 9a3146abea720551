#!/usr/bin/env python3
"""tiny's preview decoder (`reference/assets/tiny/vae_preview`, a diffusers AutoencoderTiny distilled by
`reference/train/preview_decoder.py`) against tiny's full VAE decoder, on the same latents.

1. Fidelity: the latents the reference pipeline draws for the held-out prompts of the int8 quality gate
   (`pixart_export/data/quality_prompts.txt`, seeds 1000 + i, 16 pairs), decoded by both; PSNR and SSIM
   of the preview's image against the full decoder's (uint8, `pixart_export.metrics`).
2. Prompt adherence with each decoder: the student's 4-step latents for `quality_tiny.py`'s evaluation
   captions (12 single shapes, 24 seen pairs, 24 held-out pairs) x `--seeds` seeds, decoded by both and
   read by the scene classifier (`reference/train/classifier.py`, the probe `quality_tiny.py` trains; cached
   in `--classifier-cache`); the paired difference (preview - full) with a 95% bootstrap interval.
3. Cost: parameters, and the OpenVINO fp32 latency of each decoder graph at 128 px, batch 1 (median of
   `--repeats`, interleaved; a shared machine's figures are upper bounds, compare them as a ratio).

    nice -n 5 .venv/bin/python benchmarks/preview_decoder_tiny.py [--preview DIR]
Writes benchmarks/results/preview_decoder_tiny.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preview", default="tiny", help="AutoencoderTiny folder (default tiny's shipped one)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per evaluation caption (default 4)")
    parser.add_argument("--pairs", type=int, default=16, help="held-out prompt/seed pairs (default 16)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per decoder (default 20)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws (default 2000)")
    parser.add_argument("--classifier-cache", type=Path, default=ROOT / "runs/probe")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/preview_decoder_tiny.json")
    args = parser.parse_args(argv)

    from benchmarks.quality_tiny import GROUPS, bootstrap, classifier, correct_matrix, scores
    from benchmarks.vae_decoder_precision import export_ir
    from pixart_export import preview
    from pixart_export.backends.openvino.decoder import measure
    from pixart_export.calibration import HELD_OUT_PROMPTS, read_prompts
    from pixart_export.export.wrappers import VaeDecoderGraph
    from pixart_export.metrics import psnr_uint8, ssim_uint8
    from reference import vae as vae_io
    from reference.loading import load_model
    from reference.pipeline import ReferencePipeline
    from reference.train import data

    torch.set_num_threads(2)
    t0 = time.time()
    model = load_model("tiny")
    student = preview.load(preview.resolve(args.preview))
    pipe = ReferencePipeline(model)

    # 1. fidelity on the held-out prompts
    prompts = read_prompts(HELD_OUT_PROMPTS)
    rows = []
    with torch.no_grad():
        for i in range(args.pairs):
            prompt, seed = prompts[i % len(prompts)], 1000 + i
            z = pipe([prompt], seed=seed, output="latent")
            full, fast = vae_io.decode(model.vae, z)[0].numpy(), vae_io.decode(student, z)[0].numpy()
            rows.append(
                {"prompt": prompt, "seed": seed, "psnr_db": psnr_uint8(fast, full), "ssim": ssim_uint8(fast, full)}
            )
    psnrs, ssims = [r["psnr_db"] for r in rows], [r["ssim"] for r in rows]
    fidelity = {
        "pairs": len(rows),
        "mean_psnr_db": round(float(np.mean(psnrs)), 2),
        "min_psnr_db": round(float(np.min(psnrs)), 2),
        "mean_ssim": round(float(np.mean(ssims)), 4),
        "min_ssim": round(float(np.min(ssims)), 4),
        "images": rows,
    }
    print(f"fidelity: {json.dumps({k: v for k, v in fidelity.items() if k != 'images'})}", flush=True)

    # 2. adherence with each decoder, on the same latents
    clf = classifier(
        argparse.Namespace(classifier_cache=args.classifier_cache, classifier_steps=300, classifier_images=3000)
    )
    groups_def = data.eval_groups()
    evals = [item for g in GROUPS for item in groups_def[g]]
    bounds = np.cumsum([0, *[len(groups_def[g]) for g in GROUPS]])
    groups = {g: slice(int(bounds[i]), int(bounds[i + 1])) for i, g in enumerate(GROUPS)}
    captions = [c for c, _ in evals]
    seeds = list(range(args.seeds))
    want = np.asarray([lab.as_tuple() for _ in seeds for _, lab in evals])
    with torch.no_grad():
        latents = torch.cat([pipe(captions, seed=s * 1000, output="latent") for s in seeds])  # seed-major
        decoded = {
            "full": torch.cat([vae_io.decode(model.vae, latents[i : i + 64]) for i in range(0, len(latents), 64)]),
            "preview": torch.cat([vae_io.decode(student, latents[i : i + 64]) for i in range(0, len(latents), 64)]),
        }
    matrices = {k: correct_matrix(clf.predict(v), want, len(captions)) for k, v in decoded.items()}
    adherence = {k: scores(m, groups, args.bootstrap) for k, m in matrices.items()}
    difference = bootstrap(matrices["preview"], args.bootstrap, baseline=matrices["full"])
    print(
        f"adherence full {adherence['full']['all']}, preview {adherence['preview']['all']}, diff {difference}",
        flush=True,
    )

    # 3. cost
    with tempfile.TemporaryDirectory(prefix="preview-bench-") as tmp:
        full_xml = export_ir(VaeDecoderGraph(model.vae), model.default_resolution, Path(tmp) / "full.xml")
        fast_xml = export_ir(VaeDecoderGraph(student), model.default_resolution, Path(tmp) / "preview.xml")
        z = [latents[:1].numpy()]
        timing = measure({"full": (full_xml, "f32"), "preview": (fast_xml, "f32")}, "full", z, args.repeats)
    seconds = {k: float(np.median(v["seconds"])) for k, v in timing.items()}
    from pixart_export.backends.openvino.runner import cpu_info

    result = {
        "preview": str(preview.resolve(args.preview)),
        "fidelity_held_out": fidelity,
        "adherence": {
            "captions": len(captions),
            "seeds": seeds,
            "full": adherence["full"],
            "preview": adherence["preview"],
            "preview_minus_full": difference,
            "classifier": "reference/train/classifier.py, 300 steps on 3000 renders (quality_tiny.py's probe)",
        },
        "parameters": {
            "full_decoder": sum(
                p.numel() for n, p in model.vae.named_parameters() if n.startswith(("decoder", "post_quant"))
            ),
            "preview_decoder": sum(p.numel() for p in student.decoder.parameters()),
        },
        "openvino_fp32_128px_seconds_median": {k: round(v, 5) for k, v in seconds.items()},
        "speedup": round(seconds["full"] / seconds["preview"], 2),
        "cpu": cpu_info(),
        "elapsed_s": round(time.time() - t0, 1),
        "note": "2-core shared VM: timings are upper bounds; compare the two decoders as a ratio",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k in ("parameters", "openvino_fp32_128px_seconds_median", "speedup")}
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
