"""The VAE decoder's precision on `ov-cpu-int8`, chosen by measurement (issue 22, item 1).

The decoder's output is the image, and at XL size it is most of the CPU's time (SD's VAE decoder at
512 px: 12.8 of 21.8 s end to end, fp32). Candidates:

- `fp32`: the converted IR as it is, compiled with `INFERENCE_PRECISION_HINT=f32` (the reference);
- `bf16`: the same IR compiled with `INFERENCE_PRECISION_HINT=bf16`; only where the build's CPU has native
  bf16 (AVX-512 BF16 or AMX, `runner.has_bf16` on the CPU the options record): elsewhere OpenVINO would
  emulate it, and the candidate is skipped with that reason;
- `int8`: NNCF post-training quantisation (convolutions and weight MatMuls; the mid-block attention's
  activation x activation MatMuls stay float, as in the transformer), calibrated on the latents the
  reference pipeline produces for the first calibration prompts, compiled f32 for the other ops.

Each candidate decodes the same latents: those the reference pipeline draws for the held-out prompt/seed
pairs of the int8 quality gate (`quality_prompts.txt`, seeds 1000 + i), at the first bucket, batch 1.
Its images are compared with the fp32 decoder's (uint8, `metrics.psnr_uint8`/`ssim_uint8`): it passes
with mean PSNR >= 35 dB and every image >= 30 dB (`DecoderGate`: 35 dB is "visually identical", the
bar the fp16/bf16 tolerances use for images; 30 dB per image keeps any one image from going soft while
the mean looks fine), and on the parity's fixed inputs within its precision's tolerance
(`verify.TOLERANCES`: the verify stage gates the decoder there too, so a candidate that would fail it
is not chosen). SSIM is recorded beside PSNR. Each candidate is timed (median of `repeats` runs,
interleaved between candidates so background load hits them alike); the fastest candidate that
passes ships. Every candidate's figures and the choice go into the manifest's
`quantisation["vae_decoder"]`. On tiny the time is the 128 px miniature's; the SD-VAE-size figures are
`benchmarks/vae_decoder_precision.py`'s.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...manifest import Precision

#: Tried in this order (the order breaks exact ties in time).
CANDIDATES = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class DecoderGate:
    """A candidate decoder's images against the fp32 decoder's (module docstring)."""

    min_mean_psnr_db: float = 35.0
    min_image_psnr_db: float = 30.0


def decoder_options(
    calibration_images: int = 16,
    held_out_images: int = 16,
    repeats: int = 5,
    candidates=CANDIDATES,
    gate: DecoderGate | None = None,
) -> dict:
    """The JSON-able `options["decoder"]` of an ov-cpu-int8 build (defaults when the options have none)."""
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        raise ValueError(f"decoder candidates {list(candidates)}: choose among {list(CANDIDATES)}")
    return {
        "calibration_images": int(calibration_images),
        "held_out_images": int(held_out_images),
        "repeats": int(repeats),
        "candidates": list(candidates),
        "gate": dataclasses.asdict(gate or DecoderGate()),
    }


def bf16_skip_reason(options: dict) -> str | None:
    """None where the build's CPU (as the options record it) runs bf16 natively, else why bf16 is skipped."""
    from .runner import has_bf16

    model, isa = options.get("cpu") or (None, None)
    if isa is None:
        from .runner import cpu_info

        info = cpu_info()
        model, isa = info["model"], info["isa"]
    if has_bf16({"isa": list(isa)}):
        return None
    return f"no native bf16 on {model} (neither avx512_bf16 nor amx_bf16): OpenVINO would emulate it"


def reference_latents(model, prompts: list[str], seeds: list[int], resolution: tuple[int, int], steps: int):
    """The denoised latents the reference pipeline draws for each (prompt, seed), one [1,4,h,w] each."""
    from reference.pipeline import ReferencePipeline

    pipe = ReferencePipeline(model)
    return [
        pipe([p], seed=s, steps=steps, resolution=resolution, output="latent").numpy() for p, s in zip(prompts, seeds)
    ]


def quantize_decoder(xml_in: Path, xml_out: Path, latents: list[np.ndarray]) -> list[str]:
    """NNCF PTQ int8 of a decoder IR, calibrated on `latents`; writes `xml_out` (+ .bin)."""
    import nncf
    import openvino as ov

    from .quantize import _quiet_nncf, activation_matmuls

    _quiet_nncf()
    graph = ov.Core().read_model(str(xml_in))
    ignored = nncf.IgnoredScope(names=activation_matmuls(graph), types=["ScaledDotProductAttention"], validate=False)
    quantized = nncf.quantize(
        graph,
        nncf.Dataset([{"denoised": z} for z in latents]),
        subset_size=len(latents),
        ignored_scope=ignored,
    )
    ov.save_model(quantized, str(xml_out), compress_to_fp16=False)
    del quantized, graph
    return [xml_out.name, xml_out.with_suffix(".bin").name]


def _compile(xml: Path, precision: str, shape: tuple[int, ...], core):
    import openvino as ov

    from .runner import compile_config, compile_graph

    graph = core.read_model(str(xml))
    graph.reshape({"denoised": ov.PartialShape(list(shape))})
    return compile_graph(graph, compile_config(precision), core)


def _fixed_input_error(xml: Path, fp32_xml: Path, rec: dict, model, steps: int, precision: str) -> float:
    """Relative L2 against the fp32 decoder on the inputs `verify.graph_parity` gates the graph on."""
    import openvino as ov

    from ...export.exporter import model_dims
    from ...graphs import fixed_inputs, spec_for_record
    from ...metrics import rel_l2
    from ...verify import PARITY_BATCH, PARITY_SEED
    from .runner import run_compiled

    spec = spec_for_record(rec, steps, model.controlnet is not None)
    dims = model_dims(model, rec["height"], rec["width"], steps)
    feeds = fixed_inputs(spec, dims, PARITY_BATCH, seed=PARITY_SEED)
    core = ov.Core()
    shape = feeds["denoised"].shape
    want = run_compiled(_compile(fp32_xml, "f32", shape, core), feeds)[0]
    got = run_compiled(_compile(xml, precision, shape, core), feeds)[0]
    return rel_l2(got, want)


def measure(candidates: dict[str, tuple[Path, str]], fp32: str, latents: list[np.ndarray], repeats: int) -> dict:
    """{name: {"images": [(psnr, ssim)], "seconds": [...]}} for `candidates` {name: (xml, precision)}
    decoding `latents` one at a time; images against candidate `fp32`'s."""
    import openvino as ov

    from ...metrics import psnr_uint8, ssim_uint8
    from .runner import run_compiled

    core = ov.Core()
    compiled = {n: _compile(xml, p, latents[0].shape, core) for n, (xml, p) in candidates.items()}
    outs = {n: [run_compiled(c, {"denoised": z})[0][0] for z in latents] for n, c in compiled.items()}
    seconds: dict[str, list[float]] = {n: [] for n in candidates}
    requests = {n: c.create_infer_request() for n, c in compiled.items()}
    for _ in range(repeats):  # interleaved: background load hits every candidate alike
        for n, request in requests.items():
            t0 = time.perf_counter()
            request.infer({"denoised": latents[0]})
            seconds[n].append(time.perf_counter() - t0)
    return {
        n: {
            "images": [(psnr_uint8(o, r), ssim_uint8(o, r)) for o, r in zip(outs[n], outs[fp32])],
            "seconds": seconds[n],
        }
        for n in candidates
    }


def _row(name: str, measured: dict, gate: DecoderGate, fixed: float | None, tol: float | None) -> dict:
    psnrs = [p for p, _ in measured["images"]]
    ssims = [s for _, s in measured["images"]]
    # identical uint8 images (infinite PSNR) count as 100 dB, as the quality gate counts them
    finite = [min(p, 100.0) for p in psnrs]
    mean, worst = float(np.mean(finite)), float(np.min(finite))
    image_ok = mean >= gate.min_mean_psnr_db and worst >= gate.min_image_psnr_db
    fixed_ok = fixed is None or fixed <= tol
    return {
        "name": name,
        "mean_psnr_db": round(mean, 2),
        "min_psnr_db": round(worst, 2),
        "mean_ssim": round(float(np.mean(ssims)), 5),
        "min_ssim": round(float(np.min(ssims)), 5),
        "seconds_median": round(float(np.median(measured["seconds"])), 5),
        **({"fixed_inputs_rel_l2": fixed, "tolerance_rel_l2": tol} if fixed is not None else {}),
        "passes": bool(image_ok and fixed_ok),
    }


def fastest_passing(rows: list[dict]) -> str:
    """The name of the fastest measured candidate that passes (fp32, compared with itself, always does)."""
    passing = [r for r in rows if r.get("passes")]
    return min(passing, key=lambda r: r["seconds_median"])["name"]


PRECISION = {"fp32": (Precision.FP32, "f32"), "bf16": (Precision.BF16, "bf16"), "int8": (Precision.INT8, "f32")}


def choose_decoder(
    folder: Path, scratch: Path, records: list[dict], model, options: dict, log: Callable[[str], None]
) -> dict:
    """Measure the candidates on the first bucket's decoder, apply the choice to every bucket's decoder in
    `folder` (records updated); returns the manifest's `quantisation["vae_decoder"]` section."""
    from ...calibration import HELD_OUT_PROMPTS, read_prompts
    from ...verify import tolerance
    from .runner import compile_config

    settings = options.get("decoder") or decoder_options()
    gate = DecoderGate(**settings["gate"])
    decoders = [r for r in records if r["graph"] == "vae_decoder"]
    steps = len(next(r for r in records if r["graph"].startswith("denoiser_lcm"))["lcm"]["timesteps"])
    first = decoders[0]
    bucket = (first["height"], first["width"])
    scratch.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    held_prompts = read_prompts(HELD_OUT_PROMPTS)
    count = settings["held_out_images"]
    held = reference_latents(
        model,
        [held_prompts[i % len(held_prompts)] for i in range(count)],
        [1000 + i for i in range(count)],
        bucket,
        steps,
    )
    calib_prompts = options["calibration_prompts"][: settings["calibration_images"]]

    def calibration(resolution):
        return reference_latents(model, calib_prompts, list(range(len(calib_prompts))), resolution, steps)

    fp32_xml = Path(folder) / first["file"]
    skipped: dict[str, str] = {}
    candidates: dict[str, tuple[Path, str]] = {"fp32": (fp32_xml, "f32")}
    for name in settings["candidates"]:
        if name == "bf16":
            reason = bf16_skip_reason(options)
            if reason:
                skipped[name] = reason
            else:
                candidates[name] = (fp32_xml, "bf16")
        elif name == "int8":
            log(f"      decoder int8: nncf.quantize {first['file']} ({len(calib_prompts)} calibration latents)")
            xml = scratch / f"int8-{first['file']}"
            quantize_decoder(fp32_xml, xml, calibration(bucket))
            candidates[name] = (xml, "f32")
    log(f"      decoder candidates {', '.join(candidates)} on {count} held-out latents ({bucket[0]}x{bucket[1]})")
    measured = measure(candidates, "fp32", held, settings["repeats"])
    rows = []
    for name, (xml, precision) in candidates.items():
        fixed = tol = None
        if name != "fp32":
            fixed = _fixed_input_error(xml, fp32_xml, first, model, steps, precision)
            tol = tolerance("vae_decoder", PRECISION[name][0]).rel_l2
        row = _row(name, measured[name], gate, fixed, tol)
        rows.append(row)
        log(
            f"      decoder {name}: PSNR vs fp32 mean {row['mean_psnr_db']:.2f} dB (min {row['min_psnr_db']:.2f}), "
            f"SSIM {row['mean_ssim']:.4f}, {row['seconds_median'] * 1000:.1f} ms -> "
            f"{'passes' if row['passes'] else 'fails'}"
        )
    rows += [{"name": n, "skipped": why} for n, why in skipped.items()]
    chosen = fastest_passing(rows)
    log(f"      decoder: {chosen} (the fastest that passes)")

    for rec in decoders:
        precision, hint = PRECISION[chosen]
        if chosen == "int8":
            trial = candidates["int8"][0]  # the first bucket's, measured above; others calibrated at their size
            if rec is not first:
                trial = scratch / f"int8-{rec['file']}"
                quantize_decoder(Path(folder) / rec["file"], trial, calibration((rec["height"], rec["width"])))
            os.replace(trial, Path(folder) / rec["file"])
            os.replace(trial.with_suffix(".bin"), Path(folder) / rec["files"][1])
            rec["quantised"] = "NNCF PTQ int8 (attention's activation MatMuls float), f32 for the other ops"
        rec["precision"] = precision.value
        rec["runtime"] = {"config": compile_config(hint)}
        rec["bytes"] = sum((Path(folder) / f).stat().st_size for f in rec["files"])
    return {
        "method": "candidates measured against the fp32 decoder; the fastest that passes ships",
        "gate": dataclasses.asdict(gate),
        "fixed_inputs": "the parity's fixed inputs within verify.TOLERANCES of the candidate's precision",
        "held_out": {
            "prompts_file": HELD_OUT_PROMPTS.name,
            "images": count,
            "seeds": f"1000..{1000 + count - 1}",
            "resolution": list(bucket),
        },
        "calibration": {"prompts": len(calib_prompts), "seeds": f"0..{len(calib_prompts) - 1}"},
        "timing": f"batch 1, {bucket[0]}x{bucket[1]}, median of {settings['repeats']} runs, interleaved",
        "candidates": rows,
        "chosen": chosen,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def stage(ctx) -> None:
    """The build stage (after the int8 stage, which ships the decoder's fp32 IR into the staging folder)."""
    section = choose_decoder(ctx.staging, ctx.scratch / "decoder", ctx.records, ctx.model, ctx.options, ctx.log)
    ctx.quantisation = {**(ctx.quantisation or {}), "vae_decoder": section}
