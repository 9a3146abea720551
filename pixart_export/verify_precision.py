"""Verify fp16 and int8 (Q/DQ) graphs in ONNX Runtime on CPU against the fp32 graphs, and gate them.

What runs: the prepared graph and its fp32 source on the same inputs -- for the text encoder, the
transformer, the denoiser and the VAE decoder those of reference trajectories of *held-out* prompts
(`calibration.HELDOUT`, never the calibration prompts); for the others the parity's fixed inputs
(`graphs.fixed_inputs`) -- per output relative L2 and max abs error; and
end to end, the torch-free runtime pipeline (`runtime.pipeline.OrtPipeline`) over the fp32 graphs and
over the prepared ones, same prompts and seed, compared as uint8 images (PSNR).

How it is simulated: fp16 graphs run on onnxruntime's CPU provider, which computes ops lacking fp16
kernels in fp32 between casts, so every tensor is *rounded* to fp16 where the graph says fp16 while
arithmetic inside an op is fp32 (TensorRT also accumulates fp16 GEMMs in fp32). Q/DQ graphs run with
graph optimisations off, so QuantizeLinear/DequantizeLinear execute as written: fake quantization,
the numbers an int8 GEMM with int32 accumulation gives up to fp32 rounding. Neither measures the GPU:
kernel choice on the GPU adds its own (smaller) rounding. The gates below state what they allow.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from .errors import UserError
from .graphs import fixed_inputs
from .parity import PARITY_SEED, PROMPTS, psnr_uint8, rel_l2

#: Per-graph relative L2 vs fp32. fp16 rounds every stored activation to 11 significant bits
#: (unit roundoff 4.9e-4); errors add up through depth and, in the unrolled denoiser, over K steps.
#: Measured on tiny (held-out prompts): 2.7e-4 (VAE decoder) to 7.5e-3 (transformer); random weights
#: have no trained structure that averages rounding out. 3e-2 leaves 4x margin and still fails a real
#: mistake (a wrongly typed Cast, an overflow: >= 1e-1 or inf/NaN, which always fails).
FP16_REL_L2 = 3e-2
#: int8 layers (per-channel weights, per-tensor activations, ~1/254 of each range per value) with fp16
#: around them. Measured on tiny: 9.0e-3 (transformer), 5.4e-3 (denoiser). 1e-1 is ~10x that: it
#: catches a broken scale, a missing calibration or a quantized residual stream (measured 0.42 before
#: that was fixed), not quantization noise.
INT8_REL_L2 = 1e-1
#: End-to-end image PSNR vs the fp32 graphs, uint8 images (measured on tiny: fp16 54.4 dB, int8 54.3
#: dB). fp16: "visually identical" is > 35 dB. int8 changes fine detail of a trained model's sample
#: (errors go through 4 denoising steps and the VAE); > 25 dB keeps composition and colours, while a
#: broken quantization gives < 15 dB (noise). The gates are floors against breakage; the figures
#: themselves are recorded in the manifest.
FP16_MIN_PSNR_DB = 35.0
INT8_MIN_PSNR_DB = 25.0
GATES = {"fp16": (FP16_REL_L2, FP16_MIN_PSNR_DB), "int8": (INT8_REL_L2, INT8_MIN_PSNR_DB)}


def session(path: Path, precision: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if precision == "int8":  # keep Q/DQ as ops (fake quantization), see the module docstring
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_errors(fp32_path: Path, path: Path, spec, dims, precision: str, feeds_list: list[dict] | None = None,
                 batch: int = 3) -> list[dict]:
    """Errors of `path` vs `fp32_path` over `feeds_list` (held-out realistic inputs) or, for graphs
    without such data, over the parity's fixed inputs. rel L2 is over all feeds together."""
    source = "held-out prompts" if feeds_list else "fixed inputs"
    feeds_list = feeds_list or [fixed_inputs(spec, dims, batch, seed=PARITY_SEED)]
    ref_s, got_s = session(fp32_path, "fp32"), session(path, precision)
    names = [i.name for i in ref_s.get_inputs()]
    tol = GATES[precision][0]
    err2 = [0.0] * len(spec.outputs)
    ref2 = [0.0] * len(spec.outputs)
    max_abs = [0.0] * len(spec.outputs)
    ref_max = [0.0] * len(spec.outputs)
    finite = True
    for feeds in feeds_list:
        feeds = {n: feeds[n] for n in names}
        want = ref_s.run(spec.output_names, feeds)
        got = got_s.run(spec.output_names, feeds)
        for k, (g, w) in enumerate(zip(got, want)):
            finite = finite and bool(np.all(np.isfinite(g)))
            d = (g.astype(np.float64) - w)
            err2[k] += float(np.sum(d * d))
            ref2[k] += float(np.sum(w.astype(np.float64) ** 2))
            max_abs[k] = max(max_abs[k], float(np.abs(d).max()))
            ref_max[k] = max(ref_max[k], float(np.abs(w).max()))
    rows = []
    for k, out in enumerate(spec.outputs):
        err = (err2[k] / max(ref2[k], 1e-30)) ** 0.5 if finite else float("inf")
        rows.append({"graph": spec.name, "output": out.name, "precision": precision, "rel_l2": err,
                     "max_abs": max_abs[k] if finite else float("inf"), "ref_max_abs": ref_max[k],
                     "tol_rel_l2": tol, "inputs": source, "samples": len(feeds_list), "ok": finite and err <= tol})
    return rows


def pipeline_view(folder: Path, manifest: dict, records: list[dict]):
    """An OrtPipeline over `folder` whose graphs are `records` (prepared ones where given)."""
    from .runtime.pipeline import OrtPipeline

    class View(OrtPipeline):
        def session(self, rec):  # int8 graphs as fake quantization (module docstring), others as usual
            if rec["file"] not in self._sessions:
                self._sessions[rec["file"]] = session(self.folder / rec["file"], rec.get("precision", "fp32"))
            return self._sessions[rec["file"]]

    view = copy.deepcopy(manifest)
    view["graphs"] = records
    return View(folder, view)


def end_to_end(folder: Path, manifest: dict, fp32_records: list[dict], prepared: list[dict], precision: str,
               control_image=None) -> list[dict]:
    """PSNR of the runtime pipeline on prepared graphs (where there is one) vs on the fp32 graphs."""
    by_graph = {(r["graph"], r["height"], r["width"]): r for r in prepared}
    mixed = [by_graph.get((r["graph"], r["height"], r["width"]), r) for r in fp32_records]
    base, test = pipeline_view(folder, manifest, fp32_records), pipeline_view(folder, manifest, mixed)
    rows = []
    for height, width in (tuple(r) for r in manifest["resolutions"]):
        cases = [("text2image", None)] + ([("controlnet", control_image(height, width))] if control_image else [])
        for case, image in cases:
            want = base(PROMPTS, seed=PARITY_SEED, control_image=image, resolution=(height, width), output="np")
            got = test(PROMPTS, seed=PARITY_SEED, control_image=image, resolution=(height, width), output="np")
            psnr, mse = psnr_uint8(got, want)
            floor = GATES[precision][1]
            rows.append({"case": case, "precision": precision, "resolution": [height, width], "psnr_db": psnr,
                         "max_abs": float(np.abs(got - want).max()), "min_psnr_db": floor,
                         "graphs": sorted({r["file"] for r in mixed if r.get("precision") == precision}),
                         "ok": bool(np.all(np.isfinite(got))) and (psnr is None or psnr >= floor)})
    return rows


def shipped_rows(rows: list[dict]) -> list[dict]:
    """The rows that describe shipped graphs: an fp16 row `replaced_by_fp32` stays in the report as
    measured, but its graph ships fp32, so it is not gated."""
    return [r for r in rows if not r.get("replaced_by_fp32")]


def gate(report: dict) -> None:
    """Raise a UserError naming every figure below its threshold."""
    bad = [f"{r['graph']} {r['precision']} rel L2 {r['rel_l2']:.2e} > {r['tol_rel_l2']:.0e}"
           for r in shipped_rows(report["graphs"]) if not r["ok"]]
    bad += [f"end to end {r['case']} {r['precision']} PSNR {r['psnr_db']:.1f} dB < {r['min_psnr_db']:.0f} dB"
            for r in report["end_to_end"] if not r["ok"]]
    if bad:
        raise UserError("precision check failed: " + "; ".join(bad) + ". The bundle was not written; the figures "
                        "are printed above (build with --trt-fp16-only to ship fp16 graphs only)")


def format_table(report: dict) -> str:
    lines = [f"{'graph':36} {'precision':9} {'rel L2':>10} {'tol':>8} {'max abs':>10} {'|ref| max':>10}  ok"]
    for r in report["graphs"]:
        lines.append(f"{r['graph']:36} {r['precision']:9} {r['rel_l2']:10.2e} {r['tol_rel_l2']:8.0e} "
                     f"{r['max_abs']:10.2e} {r['ref_max_abs']:10.2e}  {'yes' if r['ok'] else 'NO'}")
    for r in report["end_to_end"]:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        lines.append(f"{'end to end ' + r['case']:36} {r['precision']:9} {'PSNR ' + psnr + ' dB':>19} "
                     f"{'min ' + format(r['min_psnr_db'], '.0f'):>10}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
