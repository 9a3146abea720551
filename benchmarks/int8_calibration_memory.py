#!/usr/bin/env python3
"""Where the ov-cpu-int8 build's memory goes at 4096 tokens (1024 px): NNCF's calibration of the unrolled
denoiser, measured on a narrow stand-in (issue #21's 1024 px check was OOM-killed there at 24.3 GiB).

The model: PixArt-XL's depth (28 blocks) and token count at 1024 px (128x128 latents, 4096 tokens), a
quarter of its width (4 heads x 72 = 288), the tiny T5 and VAE; random weights (memory does not depend on
their values). Its `denoiser_lcm4` (the 4 LCM steps unrolled, 112 block instances) is exported by
`pixart-export export` and converted to OpenVINO IR; then, each in a child process of its own whose peak
RSS is read from `os.wait4`:

- `infer`: one plain fp32 inference of the unrolled IR (what `run` pays);
- `quantize`: `quantize.quantize_ir` as the build calls it (the shipped first candidate, 2 samples);
- `one-step-of-4`: the same NNCF call observing only step 0's layers (steps 1-3 in the ignored scope):
  does observing fewer points bound the memory?
- `one-step-graph`: `quantize_ir` on the one-step `transformer` graph (one LCM step, 28 block instances),
  what a calibration that never runs the unrolled graph whole would pay per step;
- `stepwise`: what the build does now (`backends/openvino/stepwise.py`): the unrolled graph's int8 moved
  step by step from the one-step graph's NNCF quantisation, 2 samples a step.

It also counts the bytes NNCF's statistics model returns per inference (the in-graph reducers' outputs),
to tell NNCF's stored statistics from OpenVINO's execution of the statistics model.

    .venv/bin/python benchmarks/int8_calibration_memory.py [--work runs/int8-memory] [--size 1024]
Writes benchmarks/results/int8_calibration_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTH_HEADS = 4  # x 72 = 288, a quarter of XL's 1152


def make_model(out: Path, size: int) -> Path:
    """The narrow 28-block model folder (diffusers layout), made once."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from reference.config import DiTConfig
    from reference.dit import PixArtDiT
    from reference.loading import save_dit
    from reference.text import MAX_TEXT_LEN
    from reference.tiny import TINY_T5, TINY_VAE, write_pipeline_files

    if (out / "model_index.json").exists():
        return out
    torch.manual_seed(0)
    width = WIDTH_HEADS * 72
    cfg = DiTConfig(
        sample_size=size // 8,
        num_attention_heads=WIDTH_HEADS,
        cross_attention_dim=width,
        caption_channels=TINY_T5["d_model"],
    )
    dit = PixArtDiT(cfg, text_len=None)
    with torch.no_grad():  # no all-zero projections (as trained)
        for p in dit.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.02)
    save_dit(dit, out / "transformer")
    T5EncoderModel(T5Config(**TINY_T5)).eval().save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    ByT5Tokenizer(model_max_length=MAX_TEXT_LEN).save_pretrained(str(out / "tokenizer"))
    AutoencoderKL(**TINY_VAE).save_pretrained(str(out / "vae"), safe_serialization=True)
    write_pipeline_files(out)
    return out


def feeds(model, count: int) -> list[dict]:
    """Synthetic inputs of the IR's shapes (batch 1): standard normal floats, ones for masks and integers."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        d = {}
        for p in model.inputs:
            shape = [s if s > 0 else 1 for s in p.get_partial_shape().get_min_shape()]
            dtype = p.get_element_type().to_dtype()
            integer = np.issubdtype(dtype, np.integer) or dtype == np.bool_
            d[p.get_any_name()] = np.ones(shape, dtype) if integer else rng.standard_normal(shape).astype(dtype)
        out.append(d)
    return out


def child(mode: str, xml: Path) -> dict:
    """One measurement in this (child) process; prints its JSON."""
    import nncf
    import numpy as np
    import openvino as ov

    from pixart_export.backends.openvino.quantize import (
        CANDIDATES,
        _quiet_nncf,
        _with_last_block,
        activation_matmuls,
        quantize_ir,
    )

    core = ov.Core()
    model = core.read_model(str(xml))
    samples = feeds(model, 2)
    t0 = time.perf_counter()
    info: dict = {"mode": mode}
    if mode == "infer":
        core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(samples[0])
    elif mode == "quantize":
        import nncf.openvino.engine as engine

        infer = engine.OVCompiledModelEngine.infer

        def counting(self, data):  # the most a statistics-model inference returns (later calls: bias correction)
            out = infer(self, data)
            arrays = {id(v): v for v in out.values()}
            if len(arrays) > info.get("statistics_outputs", 0):
                info["statistics_outputs"] = len(arrays)
                info["statistics_output_bytes"] = int(sum(v.nbytes for v in arrays.values()))
            return out

        engine.OVCompiledModelEngine.infer = counting
        quantize_ir(xml, xml.with_name(f"q-{xml.name}"), samples, CANDIDATES[0])
    elif mode == "one-step-of-4":
        _quiet_nncf()
        settings = CANDIDATES[0]
        others = [rf".*/step\.{j}/.*" for j in (1, 2, 3)]
        ignored = nncf.IgnoredScope(
            names=activation_matmuls(model),
            types=["ScaledDotProductAttention"],
            patterns=_with_last_block(settings.ignored_patterns, model) + others,
            validate=False,
        )
        nncf.quantize(
            model,
            nncf.Dataset(samples),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(samples),
            ignored_scope=ignored,
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=settings.smooth_quant_alpha)
            ),
        )
    elif mode == "stepwise":  # what the build does now: `stepwise.quantize_unrolled`, 2 samples a step
        from pixart_export.backends.openvino.stepwise import quantize_unrolled

        step_xml = xml.with_name(xml.name.replace("denoiser_lcm4", "transformer"))
        step_samples = feeds(core.read_model(str(step_xml)), 2)
        by_step = [[{**f, "timestep": np.array([t], np.float32)} for f in step_samples] for t in (999, 759, 499, 259)]
        _, reports = quantize_unrolled(
            step_xml, xml, xml.with_name(f"s-{xml.name}"), by_step, CANDIDATES[0], xml.parent, quantize_ir
        )
        info["steps"] = reports
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return info


def measure(mode: str, xml: Path) -> dict:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, "--xml", str(xml)], stdout=subprocess.PIPE, text=True
    )
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{mode}: child exited with status {status}")
    info = json.loads(stdout.strip().splitlines()[-1])
    info["peak_rss_gib"] = round(usage.ru_maxrss * 1024 / 2**30, 2)  # ru_maxrss is in KiB on Linux
    print(json.dumps(info), flush=True)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "int8-memory", help="model, export, IR")
    parser.add_argument("--size", type=int, default=1024, help="image size in px (default 1024: 4096 tokens)")
    parser.add_argument("--modes", default="infer,quantize,one-step-of-4,one-step-graph,stepwise")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--xml", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.xml)))
        return

    import openvino as ov

    model = make_model(args.work / f"model-{args.size}", args.size)
    export = args.work / f"export-{args.size}"
    if not (export / "manifest.json").exists():
        subprocess.run(
            [
                str(Path(sys.executable).with_name("pixart-export")),
                "export",
                "--model",
                str(model),
                "--out",
                str(export),
            ],
            check=True,
        )
    xmls = {}
    for graph in ("denoiser_lcm4", "transformer"):
        xmls[graph] = args.work / f"{graph}_{args.size}.xml"
        if not xmls[graph].exists():
            onnx = export / f"{graph}_{args.size}x{args.size}.onnx"
            ov.save_model(ov.convert_model(str(onnx)), str(xmls[graph]), compress_to_fp16=False)
    xml = xmls["denoiser_lcm4"]
    # "one-step-graph": the build's quantize_ir on the one-step `transformer` graph (28 block instances)
    rows = [
        {**measure("quantize", xmls["transformer"]), "mode": "one-step-graph"}
        if mode == "one-step-graph"
        else measure(mode, xml)
        for mode in args.modes.split(",")
    ]
    previous = args.out / "int8_calibration_memory.json"
    if previous.exists():  # a partial rerun (--modes) keeps the other modes' rows
        done = {r["mode"] for r in rows}
        rows = [r for r in json.loads(previous.read_text())["rows"] if r["mode"] not in done] + rows
    tokens = (args.size // 16) ** 2
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": f"28 blocks x {WIDTH_HEADS * 72} wide (XL: 1152), {tokens} tokens, "
        "denoiser_lcm4 (112 block instances)",
        "ir_weights_mib": round(xml.with_suffix(".bin").stat().st_size / 2**20, 1),
        "openvino": ov.__version__,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "int8_calibration_memory"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# int8 calibration memory at 4096 tokens (`benchmarks/int8_calibration_memory.py`)",
        "",
        f"{result['model']}; IR weights {result['ir_weights_mib']} MiB; OpenVINO {result['openvino']}; "
        f"{result['machine']}. Peak RSS of each child process (`os.wait4`).",
        "",
        "| what | peak RSS GiB | seconds | statistics returned per inference |",
        "|---|---|---|---|",
    ]
    for r in rows:
        stats = (
            f"{r['statistics_outputs']} tensors, {r['statistics_output_bytes'] / 2**20:.1f} MiB"
            if "statistics_outputs" in r
            else ""
        )
        lines.append(f"| {r['mode']} | {r['peak_rss_gib']} | {r['seconds']} | {stats} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
