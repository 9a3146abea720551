#!/usr/bin/env python3
"""The VAE decoder candidates of `ov-cpu-int8` (fp32, bf16, int8; `backends/openvino/decoder.py`) and the
preview decoder's architecture (diffusers `AutoencoderTiny`, TAESD's configuration), timed at SD-VAE size.

The build measures the candidates' images on the model it builds (tiny: 128 px) and times them there;
this benchmark times the same candidates on Stable Diffusion's VAE decoder (`xl_model.SD_VAE`, random
weights, seed 0) at 512 px, batch 1, where the decoder's cost is what PixArt-XL pays. Random weights:
the images are not meaningful, so only the time is reported, with each candidate's relative L2 against
fp32 for information (not a gate: the gate is measured on the trained tiny). int8 is calibrated on
standard-normal latents (the stand-in has no pipeline that draws real ones).

    nice -n 5 .venv/bin/python benchmarks/vae_decoder_precision.py [--size 512] [--repeats 3]
Writes benchmarks/results/vae_decoder_xl.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def export_ir(module, size: int, xml: Path) -> Path:
    """A decoder graph (`VaeDecoderGraph` over `module`) -> OpenVINO IR with a dynamic batch, fp32 weights."""
    import openvino as ov
    import torch

    example = torch.zeros(1, 4, size // 8, size // 8)
    with torch.no_grad():
        graph = ov.convert_model(
            module.eval(), example_input=example, input=[ov.PartialShape([-1, 4, size // 8, size // 8])]
        )
    graph.inputs[0].get_tensor().set_names({"denoised"})
    ov.save_model(graph, str(xml), compress_to_fp16=False)
    return xml


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image size in px (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per candidate (default 3)")
    parser.add_argument("--calibration", type=int, default=4, help="int8 calibration latents (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vae_decoder_xl.json")
    args = parser.parse_args(argv)

    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from benchmarks.xl_model import SD_VAE
    from pixart_export.backends.openvino.decoder import measure, quantize_decoder
    from pixart_export.backends.openvino.runner import cpu_info, has_bf16
    from pixart_export.export.wrappers import VaeDecoderGraph
    from pixart_export.metrics import rel_l2

    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['logical_cores']} logical cores, ISA {' '.join(cpu['isa'])}", flush=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    h = args.size // 8
    latents = [rng.standard_normal((1, 4, h, h), dtype=np.float32) for _ in range(args.calibration + 1)]
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        full = export_ir(VaeDecoderGraph(AutoencoderKL(**SD_VAE)), args.size, tmp / "vae_decoder.xml")
        tiny = export_ir(VaeDecoderGraph(AutoencoderTiny()), args.size, tmp / "vae_decoder_preview.xml")
        print(f"exported both decoders ({time.perf_counter() - t0:.0f} s)", flush=True)
        t0 = time.perf_counter()
        int8 = quantize_decoder(full, tmp / "int8.xml", latents[1:])
        print(f"int8 quantised on {args.calibration} latents ({time.perf_counter() - t0:.0f} s)", flush=True)
        candidates = {"fp32": (full, "f32"), "int8": (tmp / int8[0], "f32")}
        previews = {"preview fp32": (tiny, "f32")}
        if has_bf16(cpu):
            candidates["bf16"] = (full, "bf16")
            previews["preview bf16"] = (tiny, "bf16")
        measured = measure(candidates, "fp32", latents[:1], args.repeats)
        measured.update(measure(previews, "preview fp32", latents[:1], args.repeats))
        outs = {}
        import openvino as ov

        from pixart_export.backends.openvino.decoder import _compile
        from pixart_export.backends.openvino.runner import run_compiled

        core = ov.Core()
        for name, (xml, precision) in {**candidates, **previews}.items():
            outs[name] = run_compiled(_compile(xml, precision, latents[0].shape, core), {"denoised": latents[0]})[0]
    fp32_s = float(np.median(measured["fp32"]["seconds"]))
    rows = []
    for name, m in measured.items():
        seconds = float(np.median(m["seconds"]))
        ref = outs["preview fp32" if name.startswith("preview") else "fp32"]
        rows.append(
            {
                "decoder": name,
                "seconds_median": round(seconds, 3),
                "seconds": [round(s, 3) for s in m["seconds"]],
                "speedup_vs_fp32": round(fp32_s / seconds, 2),
                "rel_l2_vs_fp32_random_weights": rel_l2(outs[name], ref),
            }
        )
        print(f"{name:>14}: {seconds:7.3f} s  ({fp32_s / seconds:5.2f}x fp32)", flush=True)
    result = {
        "what": f"VAE decoder at {args.size} px, batch 1, OpenVINO CPU, median of {args.repeats} interleaved runs",
        "full_decoder": "Stable Diffusion's AutoencoderKL configuration (benchmarks/xl_model.SD_VAE), random weights",
        "preview_decoder": "diffusers AutoencoderTiny defaults (TAESD's configuration), random weights",
        "cpu": cpu,
        "bf16": "measured" if has_bf16(cpu) else "skipped: no native bf16 on this CPU",
        "openvino": __import__("openvino").__version__,
        "rows": rows,
        "note": "timings on a shared machine are upper bounds: compare rows of one run, as ratios",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
