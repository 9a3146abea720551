#!/usr/bin/env python3
"""int8 settings of the unrolled denoiser screened by what the quality gate measures: the images (issue
#22, item 5).

For each candidate (NNCF settings: SmoothQuant alpha, scopes kept float; calibration prompts) the fp32
`denoiser_lcm4` IR is quantised on the calibration trajectories the build collects
(`quantize._calibrate`: the reference pipeline over the calibration prompts, seed 0 + prompt index),
scored as the build scores candidates (relative L2 of `denoised` against the fp32 graph on the 2
held-out calibration prompts), and put in a copy of an ov-cpu-int8 engine folder in place of its
denoiser; that pipeline then draws the quality gate's 16 held-out prompt/seed pairs
(`verify.quality_gate`: quality_prompts.txt, seeds 1000..1015, 128x128) against the fp32 PyTorch
reference: mean and worst PSNR, mean SSIM. Everything else (int8-weight T5, VAE) is the engine's.

    .venv/bin/python benchmarks/int8_quality.py ENGINE_DIR ONNX_DIR [CANDIDATE ...]

ENGINE_DIR: an ov-cpu-int8 tiny folder; ONNX_DIR: the ort-cpu (unoptimised) folder its graphs were
converted from. Appends one JSON line per candidate to benchmarks/results/int8_quality_tiny.jsonl.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRAPH = "denoiser_lcm4_128x128"


def candidates() -> dict:
    """name -> (QuantSettings, calibration prompts of the unrolled graph)."""
    from pixart_export.backends.openvino.quantize import OUTSIDE_BLOCKS as O
    from pixart_export.backends.openvino.quantize import QuantSettings as Q

    return {
        "outside-8": (Q("fp32-outside-blocks", -1, O), 8),  # the build's choice before issue #22
        "outside-16": (Q("fp32-outside-blocks", -1, O), 16),
        "outside-30": (Q("fp32-outside-blocks", -1, O), 30),
        "sq0.5-16": (Q("sq0.5", 0.5, O), 16),
        "attn-proj-16": (Q("attn-proj", -1, O + (".*attn.*/to_.*",)), 16),
        "attn1-proj-16": (Q("attn1-proj", -1, O + (".*attn1/to_.*",)), 16),
        "attn2-proj-16": (Q("attn2-proj", -1, O + (".*attn2/to_.*",)), 16),
        "to-out-16": (Q("to-out", -1, O + (".*attn./to_out.*",)), 16),
        "qkv-16": (Q("qkv", -1, O + (".*attn./to_[qkv]/.*",)), 16),
        "ff2-16": (Q("ff2", -1, O + (".*ff/net.2.*",)), 16),
        "last-step-16": (Q("last-step", -1, O + (".*/step.3/.*",)), 16),
        "block0-8": (Q("block0", -1, O + (".*blocks.0/.*",)), 8),
        "block0-16": (Q("block0", -1, O + (".*blocks.0/.*",)), 16),
        "block5-16": (Q("block5", -1, O + (".*blocks.5/.*",)), 16),
        "block0+5-8": (Q("block0+5", -1, O + (".*blocks.0/.*", ".*blocks.5/.*")), 8),
        "block0+5-16": (Q("block0+5", -1, O + (".*blocks.0/.*", ".*blocks.5/.*")), 16),
        "block0+5-30": (Q("block0+5", -1, O + (".*blocks.0/.*", ".*blocks.5/.*")), 30),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("names", nargs="*", help="candidates (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (calibration kept there)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_quality_tiny.jsonl")
    args = parser.parse_args()

    from pixart_export.backends.openvino import quantize
    from pixart_export.backends.openvino.options import int8_options
    from pixart_export.backends.openvino.prepare import convert_graph
    from pixart_export.backends.openvino.runner import OvRunner, cpu_info
    from pixart_export.calibration import HELD_OUT_PROMPTS, read_prompts
    from pixart_export.manifest import manifest_from_json
    from pixart_export.runtime.pipeline import Pipeline
    from pixart_export.verify import QualityGate, _image_pairs, _quality_figures, pipeline_images, reference_images
    from reference.loading import load_model

    table = candidates()
    names = args.names or list(table)
    work = args.work or Path(tempfile.mkdtemp(prefix="int8-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / f"{GRAPH}.xml"
    if not fp32.exists():
        convert_graph(args.onnx / f"{GRAPH}.onnx", fp32)
    model = load_model("tiny")
    need = max(n for _, n in (table[k] for k in names))
    cached = work / f"calibration-{need}.pkl"
    if cached.exists():
        train, held = pickle.loads(cached.read_bytes())
    else:  # the build's collection: the first `need` prompts, the file's last 2 held out
        options = int8_options()
        options.update(denoiser_prompts=need, transformer_prompts=1, held_out_prompts=2)
        train, held = quantize._calibrate(model, options, (128, 128), 4, print)
        train, held = train["denoiser_lcm4"], held["denoiser_lcm4"]
        cached.write_bytes(pickle.dumps((train, held)))
    prompts = read_prompts(HELD_OUT_PROMPTS)
    gate = QualityGate()
    cases = [(prompts[i % len(prompts)], 1000 + i, None) for i in range(gate.pairs)]
    refs_file = work / "reference_images.npy"
    if refs_file.exists():
        refs = np.load(refs_file)
    else:
        draw = reference_images(model, 4)
        refs = np.stack([draw([p], s, (128, 128), None)[0] for p, s, _ in cases])
        np.save(refs_file, refs)
    manifest = manifest_from_json(json.loads((args.engine / "manifest.json").read_text()))
    cpu = cpu_info()
    for name in names:
        settings, count = table[name]
        t0 = time.perf_counter()
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(args.engine, folder)
        quantize.quantize_ir(fp32, folder / f"{GRAPH}.xml", train[:count], settings)
        scored = quantize.score(folder / f"{GRAPH}.xml", fp32, held)
        pipeline = Pipeline(folder, manifest, OvRunner(folder))
        stored = iter(refs)
        rows, _, _ = _image_pairs(lambda *a: next(stored)[None], pipeline_images(pipeline), cases, (128, 128))
        figures = _quality_figures(rows, gate)
        row = {
            "candidate": name,
            "smooth_quant_alpha": settings.smooth_quant_alpha,
            "float_scopes": list(settings.ignored_patterns),
            "calibration_prompts": count,
            "held_out_rel_l2": round(scored["rel_l2_mean"], 4),
            "mean_psnr_db": figures["mean_psnr_db"],
            "min_psnr_db": figures["min_psnr_db"],
            "mean_ssim": figures["mean_ssim"],
            "seconds": round(time.perf_counter() - t0),
            "cpu": f"{cpu['model']} ({' '.join(cpu['isa'])})",
        }
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
