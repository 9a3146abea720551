"""Parity stage: every graph of an engine folder against the PyTorch reference, and the whole pipeline
end to end, with the tolerances of `graphs.py` (each stated with its reason there).

Per graph: the same fixed inputs (`graphs.fixed_inputs`, batch 3 -- not the export's batch 2, so
the dynamic batch axis is exercised) through the reference module and through onnxruntime; relative
L2 and max abs error of every output. End to end: `reference.pipeline.ReferencePipeline` and the
torch-free `runtime` pipeline with the same prompt and seed, compared as uint8 images (PSNR), plain
and, when the engine has a ControlNet, with a control image. `build` records the result in the
manifest; `pixart-export parity` re-measures and rewrites it (atomically).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .graphs import MIN_PSNR_DB, fixed_inputs, spec_for_record

PARITY_BATCH = 3
PARITY_SEED = 7
PROMPTS = ["a small red circle above a blue square", "ein Haus am See, Öl auf Leinwand"]


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    denom = float(np.linalg.norm(want.astype(np.float64)))
    return float(np.linalg.norm((got - want).astype(np.float64)) / max(denom, 1e-30))


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float]:
    """(PSNR dB or None when identical, MSE) of two float images in [0,1] after uint8 rounding."""
    qa = (a * 255).round().astype(np.float64)
    qb = (b * 255).round().astype(np.float64)
    mse = float(np.mean((qa - qb) ** 2))
    return (None if mse == 0 else 10 * math.log10(255.0**2 / mse)), mse


def control_image(height: int, width: int):
    """A fixed, edge-rich condition image (a disc and a bar), made without files."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((yy - height * 0.4) ** 2 + (xx - width * 0.5) ** 2) < (min(height, width) * 0.25) ** 2
    bar = (yy > height * 0.75) & (yy < height * 0.85)
    img = np.stack([disc * 255, bar * 255, (disc ^ bar) * 128], -1).astype(np.uint8)
    return Image.fromarray(img)


def graph_parity(model, folder: Path, manifest: dict, batch: int = PARITY_BATCH, on_graph=None) -> list[dict]:
    """Each graph file vs its reference module (the same wrapper the export traced)."""
    import onnxruntime as ort
    import torch

    from .export_onnx import model_dims, wrapper_for

    steps, control = int(manifest["steps"]), bool(manifest["model"]["controlnet"])
    rows = []
    for rec in manifest["graphs"]:
        if on_graph:
            on_graph(rec["file"])
        spec = spec_for_record(rec, steps, control)
        h, w = rec["height"] or manifest["resolutions"][0][0], rec["width"] or manifest["resolutions"][0][1]
        dims = model_dims(model, h, w, steps)
        feeds = fixed_inputs(spec, dims, batch, seed=PARITY_SEED)
        module = wrapper_for(spec, model, steps).eval()
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
        wants = [want] if isinstance(want, torch.Tensor) else list(want)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(folder / rec["file"]), options, providers=["CPUExecutionProvider"])
        started = time.perf_counter()
        gots = session.run(spec.output_names, {t.name: feeds[t.name] for t in spec.inputs})
        seconds = time.perf_counter() - started
        for out_spec, got, ref in zip(spec.outputs, gots, wants):
            ref = ref.numpy()
            ok_shape = tuple(got.shape) == tuple(ref.shape)
            err = rel_l2(got, ref) if ok_shape else float("nan")
            max_abs = float(np.abs(got - ref).max()) if ok_shape else float("nan")
            scale = max(1.0, float(np.abs(ref).max()))
            rows.append({"file": rec["file"], "graph": spec.name, "output": out_spec.name, "batch": batch,
                         "rel_l2": err, "max_abs": max_abs, "ref_max_abs": float(np.abs(ref).max()),
                         "tol_rel_l2": spec.rel_l2, "tol_max_abs": spec.max_abs_rel * scale,
                         "ok": bool(ok_shape and err <= spec.rel_l2 and max_abs <= spec.max_abs_rel * scale),
                         "ort_seconds": round(seconds, 3), "why": spec.why})
    return rows


def end_to_end_parity(model, folder: Path, manifest: dict, on_case=None) -> list[dict]:
    """Reference pipeline vs the runtime pipeline, same prompts and seed, every resolution bucket."""
    from reference.pipeline import ReferencePipeline

    from .runtime.pipeline import OrtPipeline

    reference = ReferencePipeline(model)
    runtime = OrtPipeline(folder, manifest)
    steps = int(manifest["steps"])
    rows = []
    for height, width in (tuple(r) for r in manifest["resolutions"]):
        cases = [("text2image", None)]
        if manifest["model"]["controlnet"]:
            cases.append(("controlnet", control_image(height, width)))
        for case, image in cases:
            if on_case:
                on_case(f"{case} {height}x{width}")
            want = reference(PROMPTS, steps=steps, seed=PARITY_SEED, resolution=(height, width), sampler="lcm",
                             control_image=image, output="pt").numpy()
            got = runtime(PROMPTS, seed=PARITY_SEED, control_image=image, resolution=(height, width), output="np")
            psnr, mse = psnr_uint8(got, want)
            rows.append({"case": case, "resolution": [height, width], "prompts": len(PROMPTS), "seed": PARITY_SEED,
                         "psnr_db": psnr, "mse_uint8": mse, "max_abs": float(np.abs(got - want).max()),
                         "min_psnr_db": MIN_PSNR_DB, "ok": psnr is None or psnr >= MIN_PSNR_DB})
    return rows


def measure(model, folder: Path, manifest: dict, on_item=None) -> dict:
    """The parity section of a manifest."""
    import onnxruntime
    import torch

    graphs = graph_parity(model, folder, manifest, on_graph=on_item)
    e2e = end_to_end_parity(model, folder, manifest, on_case=on_item)
    return {"ok": all(r["ok"] for r in graphs + e2e), "graphs": graphs, "end_to_end": e2e,
            "measured_with": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
            "psnr_note": "psnr_db null means the uint8 images are identical"}


def format_table(parity: dict) -> str:
    lines = [f"{'graph file':44} {'output':18} {'rel L2':>10} {'tol':>8} {'max abs':>10} {'tol':>8}  ok"]
    for r in parity["graphs"]:
        lines.append(f"{r['file']:44} {r['output']:18} {r['rel_l2']:10.2e} {r['tol_rel_l2']:8.0e} "
                     f"{r['max_abs']:10.2e} {r['tol_max_abs']:8.1e}  {'yes' if r['ok'] else 'NO'}")
    lines.append(f"{'end to end (uint8 images, same seed)':44} {'resolution':18} {'PSNR dB':>10} {'min':>8} "
                 f"{'max abs':>10}")
    for r in parity["end_to_end"]:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        lines.append(f"{r['case']:44} {'x'.join(map(str, r['resolution'])):18} {psnr:>10} {r['min_psnr_db']:8.0f} "
                     f"{r['max_abs']:10.2e}  {'yes' if r['ok'] else 'NO'}")
    lines.append(f"parity: {'PASS' if parity['ok'] else 'FAIL'}")
    return "\n".join(lines)
