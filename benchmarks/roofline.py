#!/usr/bin/env python3
"""Each CPU stage's time against its roofline: how far the measured latency is from this machine's peak.

Issue 22 asks, where a speed-up goal is not reached, for the per-stage time against the matmul peaks
measured on the same machine. Two halves:

- **Peaks**, measured here in OpenVINO, the runtime that runs the stages: one MatMul at the DiT's MLP
  shape (1024 tokens x 1152 -> 4608) and one 3x3 convolution at the SD VAE decoder's widest stage
  (512 -> 512 channels at 64x64, and 128 -> 128 channels at 256x256, where it has the most pixels),
  each in fp32 (f32 hint), bf16 (bf16 hint, where the CPU has native bf16) and int8 (NNCF post-training
  quantisation of that one layer, as the build quantises the real ones), median of `--repeats` runs,
  batch 1, all cores. The peak of a precision is the fastest of its kernels (GFLOP/s, 2 per multiply-add).
- **Work**, counted by `torch.utils.flop_counter.FlopCounterMode` on the model on PyTorch's meta device
  (shapes only, nothing computed): one XL transformer step at 512 px, split into the linear layers (int8
  in ov-cpu-int8) and attention's activation x activation products (float there); the SD VAE decoder
  and a TAESD-architecture decoder at 512 px; the text encoder of the model measured.

Each stage's roofline time is its work at the peak of the precision it runs in; "of peak" is roofline
over measured. Stage times come from a latency run's JSON (`benchmarks/latency.py`, the same machine,
printed beside the CPU here), so run this right after it:

    nice -n 5 .venv/bin/python benchmarks/roofline.py --latency benchmarks/results/latency_xl-random.json
Writes benchmarks/results/roofline_<model>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (name, kind, shape): the kernels whose speed stands for each precision's peak (module docstring).
KERNELS = (
    ("matmul 1024x1152 @ 1152x4608", "matmul", (1024, 1152, 4608)),
    ("conv3x3 512->512 @ 64x64", "conv", (512, 64)),
    ("conv3x3 128->128 @ 256x256", "conv", (128, 256)),
)


def _module(kind: str, shape):
    import torch

    torch.manual_seed(0)
    if kind == "matmul":
        m, k, n = shape
        return torch.nn.Linear(k, n), torch.randn(m, k), 2 * m * k * n
    c, hw = shape
    return torch.nn.Conv2d(c, c, 3, padding=1), torch.randn(1, c, hw, hw), 2 * c * c * 9 * hw * hw


def kernel_gflops(kind: str, shape, precision: str, repeats: int) -> float:
    """GFLOP/s of one layer in OpenVINO at `precision` ("f32", "bf16" hint; "int8": NNCF-quantised, f32 hint)."""
    import nncf
    import openvino as ov
    import torch

    from pixart_export.backends.openvino.runner import compile_config, compile_graph

    module, x, flops = _module(kind, shape)
    with torch.no_grad():
        graph = ov.convert_model(module.eval(), example_input=x)
    if precision == "int8":
        data = [np.random.default_rng(i).standard_normal(tuple(x.shape)).astype(np.float32) for i in range(4)]
        graph = nncf.quantize(graph, nncf.Dataset(data), subset_size=len(data))
    compiled = compile_graph(graph, compile_config("f32" if precision == "int8" else precision))
    request, feed = compiled.create_infer_request(), x.numpy()
    request.infer([feed])  # warm-up
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer([feed])
        seconds.append(time.perf_counter() - t0)
    return flops / statistics.median(seconds) / 1e9


def measure_peaks(repeats: int) -> dict:
    from pixart_export.backends.openvino.runner import has_bf16

    precisions = ["f32", "int8"] + (["bf16"] if has_bf16() else [])
    kernels = {}
    for name, kind, shape in KERNELS:
        kernels[name] = {p: round(kernel_gflops(kind, shape, p, repeats), 1) for p in precisions}
        print(f"  {name}: " + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in kernels[name].items()), file=sys.stderr)
    peaks = {p: max(k[p] for k in kernels.values()) for p in precisions}
    return {"kernels": kernels, "peaks_gflops": peaks}


def count_work(text_encoder_dir: Path | None) -> dict:
    """GFLOP per stage at 512 px, batch 1 (module docstring), counted on the meta device."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.xl_model import SD_VAE
    from reference.config import DiTConfig
    from reference.dit import PixArtDiT

    def counted(fn) -> dict:
        with FlopCounterMode(display=False) as fc:
            fn()
        return {str(k).split(".")[-1]: v / 1e9 for k, v in fc.get_flop_counts()["Global"].items()}

    meta = torch.device("meta")
    with meta:
        dit = PixArtDiT(DiTConfig(sample_size=64), text_len=None)
        vae = AutoencoderKL(**{k: v for k, v in SD_VAE.items() if not k.startswith("_")})
        taesd = AutoencoderTiny()
    x, z = torch.zeros(1, 4, 64, 64, device=meta), torch.zeros(1, 4, 64, 64, device=meta)
    e, m = torch.zeros(1, 120, 4096, device=meta), torch.ones(1, 120, device=meta)
    step = counted(lambda: dit.predict_noise(x, torch.full((1,), 999.0, device=meta), e, m, None))
    work = {
        # addmm: the linear layers (int8 in ov-cpu-int8); bmm: attention's QK^T and AV (float there)
        "transformer_step": {"linear": step.get("addmm", 0.0) + step.get("convolution", 0.0), "attention": step["bmm"]},
        "vae_decoder": {"conv": sum(counted(lambda: vae.decode(z)).values())},
        "vae_decoder_preview": {"conv": sum(counted(lambda: taesd.decode(z)).values())},
    }
    if text_encoder_dir is not None:
        from transformers import T5Config, T5EncoderModel

        config = T5Config.from_pretrained(str(text_encoder_dir))
        with meta:
            t5 = T5EncoderModel(config)
        ids = torch.zeros(1, 120, dtype=torch.long, device=meta)
        work["text_encoder"] = {"linear": sum(counted(lambda: t5(input_ids=ids)).values())}
    return work


def roofline(latency: dict, peaks: dict, work: dict) -> list[dict]:
    """One row per measured stage: its work, the precision it runs in, roofline and measured seconds."""
    p = peaks["peaks_gflops"]
    b = latency["backends"]
    choice = (latency.get("vae_decoder_choice") or {}).get("chosen", "fp32")
    decoder_peak = {"fp32": "f32", "bf16": "bf16", "int8": "int8"}[choice]
    step = work["transformer_step"]
    rows = []

    def row(stage, backend, key, gflop, seconds_at_peak, precision):
        measured = b.get(backend, {}).get("stages", {}).get(key, {}).get("median_s")
        rows.append(
            {
                "stage": stage,
                "backend": backend,
                "precision": precision,
                "gflop": round(gflop, 1),
                "roofline_s": round(seconds_at_peak, 3),
                "measured_s": measured,
                "of_peak": None if not measured else round(seconds_at_peak / measured, 3),
            }
        )

    step_gflop = step["linear"] + step["attention"]
    row("transformer step", "diffusers", "transformer_step", step_gflop, step_gflop / p["f32"], "fp32")
    int8_step = step["linear"] / p["int8"] + step["attention"] / p["f32"]
    row("transformer step", "ov-cpu-int8", "transformer_step", step_gflop, int8_step, "int8 linear, fp32 attention")
    row("denoiser_lcm4", "ov-cpu-int8", "denoiser_lcm4", 4 * step_gflop, 4 * int8_step, "int8 linear, fp32 attention")
    dec = work["vae_decoder"]["conv"]
    row("VAE decoder", "diffusers", "vae_decoder", dec, dec / p["f32"], "fp32")
    row("VAE decoder", "eager-fp32", "vae_decoder", dec, dec / p["f32"], "fp32")
    row("VAE decoder", "ov-cpu-int8", "vae_decoder", dec, dec / p[decoder_peak], f"{choice} (the gate's choice)")
    prev = work["vae_decoder_preview"]["conv"]
    row("preview decoder", "ov-cpu-int8+preview", "vae_decoder", prev, prev / p["f32"], "fp32")
    row("preview decoder", "diffusers+tiny-vae", "vae_decoder", prev, prev / p["f32"], "fp32")
    if "text_encoder" in work:
        te = work["text_encoder"]["linear"]
        row("text encoder", "ov-cpu-int8", "text_encoder", te, te / p["int8"], "int8 weights")
    return rows


def bound(rows: list[dict], latency: dict) -> dict:
    """The end-to-end speed-ups a run at every stage's roofline would give, against the measured diffusers."""
    by = {(r["stage"], r["backend"]): r["roofline_s"] for r in rows}
    base = latency["backends"].get("diffusers", {}).get("stages", {}).get("end_to_end", {}).get("median_s")
    text = by.get(("text encoder", "ov-cpu-int8"), 0.0)
    full = text + by[("denoiser_lcm4", "ov-cpu-int8")] + by[("VAE decoder", "ov-cpu-int8")]
    preview = text + by[("denoiser_lcm4", "ov-cpu-int8")] + by[("preview decoder", "ov-cpu-int8+preview")]
    return {
        "e2e_roofline_s_full": round(full, 3),
        "e2e_roofline_s_preview": round(preview, 3),
        "e2e_speedup_at_roofline_full": None if not base else round(base / full, 2),
        "e2e_speedup_at_roofline_preview": None if not base else round(base / preview, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=Path, default=ROOT / "benchmarks/results/latency_xl-random.json")
    parser.add_argument("--model", type=Path, default=ROOT / "runs/xl-random", help="its text_encoder is counted")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per kernel (default 5)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args(argv)

    from pixart_export.backends.openvino.runner import cpu_info

    latency = json.loads(args.latency.read_text())
    if not latency["model"].startswith("xl"):
        parser.error(f"{args.latency}: the work counted here is PixArt-XL's at 512 px; give an XL latency run")
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['logical_cores']} logical cores, ISA: {' '.join(cpu['isa'])}", file=sys.stderr)
    if latency["cpu"]["model"] != cpu["model"] or latency["cpu"]["isa"] != cpu["isa"]:
        parser.error(
            f"{args.latency} was measured on another CPU ({latency['cpu']['model']}): run the latency suite here"
        )
    peaks = measure_peaks(args.repeats)
    te = args.model / "text_encoder"
    work = count_work(te if (te / "config.json").exists() else None)
    rows = roofline(latency, peaks, work)
    result = {"model": latency["model"], "cpu": cpu, "latency_file": args.latency.name, **peaks, "work_gflop": work}
    result["stages"] = rows
    result.update(bound(rows, latency))
    write(result, args.results)
    return 0


def write(result: dict, out: Path) -> None:
    stem = out / f"roofline_{result['model']}"
    cpu, p = result["cpu"], result["peaks_gflops"]
    lines = [
        f"# Roofline: {result['model']}, 512 px, batch 1",
        "",
        f"CPU: **{cpu['model']}**, {cpu['logical_cores']} logical cores, ISA: {', '.join(cpu['isa'])}. Stage times "
        f"from `{result['latency_file']}` (same machine); peaks measured in OpenVINO by `benchmarks/roofline.py`.",
        "",
        "| kernel | " + " | ".join(f"{k} GFLOP/s" for k in p) + " |",
        "|---|" + "---|" * len(p),
    ]
    for name, k in result["kernels"].items():
        lines.append(f"| {name} | " + " | ".join(f"{k[q]:.0f}" for q in p) + " |")
    lines += [
        "",
        "| stage | backend | runs in | GFLOP | at peak (s) | measured (s) | of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["stages"]:
        measured = "" if r["measured_s"] is None else f"{r['measured_s']:.3f}"
        of_peak = "" if r["of_peak"] is None else f"{100 * r['of_peak']:.0f}%"
        lines.append(
            f"| {r['stage']} | {r['backend']} | {r['precision']} | {r['gflop']:.0f} | {r['roofline_s']:.3f} | "
            f"{measured} | {of_peak} |"
        )
    lines += [
        "",
        f"At every stage's roofline, ov-cpu-int8 end to end would take {result['e2e_roofline_s_full']:.2f} s with the "
        f"full decoder and {result['e2e_roofline_s_preview']:.2f} s with the preview decoder: "
        f"{result['e2e_speedup_at_roofline_full']}x and {result['e2e_speedup_at_roofline_preview']}x the measured "
        "diffusers eager fp32, the most these precisions can give on this CPU.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
