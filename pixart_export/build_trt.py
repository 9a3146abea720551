"""`build --target trt-*`: model -> TensorRT bundle (graphs in their final precision, verified on CPU),
and engines when this host has TensorRT and the target GPU.

Stages, in a private temporary folder renamed into place at the end (as `build.py` does):
  1. export the fp32 graphs (`export_onnx`; no onnxruntime optimisation: its fused contrib ops are not
     ONNX and TensorRT cannot parse them) and check them against the reference (`parity.graph_parity`);
  2. calibration data from the reference on the shipped prompt set (`calibration.collect`);
  3. fp16: every graph (`fp16.convert`, sensitive nodes kept fp32, decided on measured ranges);
  4. int8: explicit Q/DQ for the transformer and the unrolled denoiser where the target has int8
     (`quantize_qdq.quantize`, calibrated on 2.), fp16 outside the int8 layers (`quantize_qdq.to_fp16`);
  5. verify 3. and 4. in onnxruntime against the fp32 graphs, per graph and end to end, and gate them
     (`verify_precision`): below a threshold the build stops with the figures;
  6. `trt_check`: every op, dtype, Q/DQ pattern and shape against the target's parser and profile;
  7. write the bundle: the prepared graphs (the fp32 ones are dropped: they were the baseline),
     tokenizer, manifest with profiles, precision figures and the exact command to finish;
  8. if this host has TensorRT and the target GPU, compile (`compile_trt`); otherwise say so.
The bundle folder is also what `compile BUNDLE` reads on the target host.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import UserError
from .manifest import SCHEMA_VERSION, file_table, write_json_atomic

Log = Callable[[str], None]

BUNDLE_STATUS = "bundle"  # graphs ready, engines not built; "compiled" after `compile`


def prepared_name(record: dict, precision: str) -> str:
    return record["file"].replace(".onnx", f".{precision}.onnx")


#: Graphs that may ship fp32 when their fp16 graph fails its measured tolerance. T5 only: it has no
#: attention scaling, and a trained T5 can learn attention logits in the thousands, where rounding the
#: *weights* to fp16 already moves the logits by whole units (the trained `tiny`: 2.3% error on real
#: tokens with every node kept fp32 and only the weights fp16). It is a small share of an image's
#: FLOPs (one call per image); the DiT and VAE graphs never fall back, they fail the gate.
FP32_FALLBACK_GRAPHS = ("text_encoder",)


def fp32_fallback(rec: dict, src: Path, tmp: Path, row: dict, fp16_files: list[str]) -> dict:
    """The fp32 graph shipped in place of a failed fp16 one (precision "fp32", reason recorded); the
    failed fp16 file is removed and its error row marked `replaced_by_fp32` (kept in the report)."""
    name = prepared_name(rec, "fp32")
    shutil.copy2(src, tmp / name)
    for extra in rec.get("files", [])[1:]:
        shutil.copy2(src.parent / extra, tmp / extra)
    for f in fp16_files:
        (tmp / f).unlink(missing_ok=True)
    row["replaced_by_fp32"] = True
    new = {**rec, "file": name, "files": [name, *rec.get("files", [])[1:]], "precision": "fp32",
           "fp32_fallback": f"fp16 measured rel L2 {row['rel_l2']:.2e} > tolerance {row['tol_rel_l2']:.0e}"}
    new.pop("export_seconds", None)
    return new


def compile_command(folder: Path) -> str:
    return f"pixart-export compile {folder}"


def profiles_for(target, records: list[dict]) -> dict:
    """{file: {input: {min, opt, max}}}: the batch axis from the target's profile, the rest static."""
    lo, opt, hi = target.trt.profile.batch
    out = {}
    for rec in records:
        shapes = {}
        for inp in rec["inputs"]:
            dims = inp["shape"]
            shapes[inp["name"]] = {k: [b if d == "B" else d for d in dims] for k, b in
                                   (("min", lo), ("opt", opt), ("max", hi))}
        out[rec["file"]] = shapes
    return out


def _range_feeds(spec, dims, calib: dict) -> list[dict]:
    from .graphs import fixed_inputs

    feeds = calib.get(spec.name)
    return feeds if feeds else [fixed_inputs(spec, dims, 2, seed=s) for s in (11, 12)]


def build_bundle(target, model_spec: str, out: Path | None = None, controlnet_spec: str | None = None,
                 resolutions=None, steps: int = 4, lcm_spacing: str | None = None, verify: bool = True,
                 force: bool = False, log: Log = print, int8: bool | None = None,
                 calib_prompts: int | None = None, compile_engines: bool | None = None) -> tuple[Path, dict, bool]:
    """Build the bundle for a TensorRT `target`; returns (folder, manifest, reused)."""
    from reference.loading import load_model, resolve_controlnet
    from reference.text import MAX_TEXT_LEN

    from . import calibration, export_onnx, fp16, identity as ident, parity, quantize_qdq, trt_check
    from . import verify_precision as vp
    from .build import _swap_into_place, reuse_existing, engine_name
    from .export_tokenizer import export_tokenizer
    from .graphs import spec_for_record

    if not verify:
        raise UserError(f"{target.name}: TensorRT bundles are always verified (fp16/int8 are only shipped "
                        "with their measured error); drop --no-verify")
    want_int8 = "int8" in target.trt.prepared if int8 is None else bool(int8)
    if want_int8 and "int8" not in target.trt.prepared:
        raise UserError(f"{target.name} ({target.trt.arch}) has no int8 in this toolchain; build it without --int8")
    out = Path(out) if out is not None else Path("engines") / engine_name(target.name, model_spec, controlnet_spec)
    t0 = time.perf_counter()
    log(f"[1/8] load model {model_spec}" + (f" + ControlNet {controlnet_spec}" if controlnet_spec else ""))
    model = load_model(model_spec, controlnet=controlnet_spec, lcm_spacing=lcm_spacing)
    resolutions = resolutions or [(model.default_resolution, model.default_resolution)]
    export_onnx.check_exportable(model, resolutions, steps)
    p = target.trt.profile
    for h, w in resolutions:
        if not (p.min_px <= h <= p.max_px and p.min_px <= w <= p.max_px):
            raise UserError(f"resolution {h}x{w} is outside {target.name}'s profile ({p.min_px}-{p.max_px} px)")
    prompts = calibration.PROMPTS[:calib_prompts] if calib_prompts else calibration.PROMPTS
    identity = ident.model_identity(model, resolve_controlnet(controlnet_spec) if controlnet_spec else None)
    versions = ident.toolchain_versions()
    import onnxconverter_common

    versions["onnxconverter_common"] = onnxconverter_common.__version__
    options = {"target": target.name, "resolutions": [list(r) for r in resolutions], "steps": steps,
               "lcm_spacing": model.lcm_spacing, "int8": want_int8, "calib_prompts": len(prompts),
               "fp16_safe_max": fp16.FP16_SAFE_MAX, "trt": repr(target.trt)}
    key = ident.build_key(identity, options, versions)
    if (manifest := reuse_existing(out, key, False, force, log)) is not None:
        return out, manifest, True

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        fp32_dir = tmp / ".fp32"  # dot-folder: never listed in the manifest, removed before install
        log(f"[2/8] export fp32 ONNX graphs (opset {export_onnx.OPSET}) and check them against the reference")
        records = export_onnx.export_model(model, fp32_dir, resolutions, steps, on_graph=lambda n: log(f"      {n}"))
        tokenizer = export_tokenizer(model, tmp, MAX_TEXT_LEN)
        shutil.copytree(tmp, fp32_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".fp32"))
        base = {"steps": steps, "model": {"controlnet": model.controlnet is not None},
                "resolutions": [list(r) for r in resolutions], "graphs": records, "tokenizer": tokenizer,
                "vae_scale_factor": model.vae_scale_factor, "latent_channels": model.dit.config.in_channels}
        fp32_rows = parity.graph_parity(model, fp32_dir, base)
        if not all(r["ok"] for r in fp32_rows):
            raise UserError("fp32 export does not match the reference: " + ", ".join(
                f"{r['file']} rel L2 {r['rel_l2']:.2e}" for r in fp32_rows if not r["ok"]))

        log(f"[3/8] calibration data: reference LCM trajectories of {len(prompts)} shipped prompts")
        calib = calibration.collect(model, prompts, resolutions[0], steps)
        heldout = calibration.collect(model, calibration.HELDOUT, resolutions[0], steps, seed=1000)
        prepared, report = [], {"graphs": [], "end_to_end": []}
        fp32_ranges: dict[str, dict[str, float]] = {}

        log("[4/8] fp16 graphs (sensitive nodes kept fp32 by rule and by measured range)")
        for rec in records:
            spec = spec_for_record(rec, steps, model.controlnet is not None)
            h, w = rec["height"] or resolutions[0][0], rec["width"] or resolutions[0][1]
            dims = export_onnx.model_dims(model, h, w, steps)
            src = fp32_dir / rec["file"]
            ranges = fp16.activation_ranges(src, _range_feeds(spec, dims, calib if (h, w) == tuple(resolutions[0])
                                                              else {}))
            fp32_ranges[rec["file"]] = ranges
            name = prepared_name(rec, "fp16")
            conv = fp16.convert(src, tmp / name, spec.name, ranges)
            reasons: dict[str, int] = {}
            for reason in conv["kept_fp32"].values():
                kind = fp16.reason_kind(reason)
                reasons[kind] = reasons.get(kind, 0) + 1
            new = {**rec, "file": name, "files": conv["files"], "precision": "fp16",
                   "kept_fp32": len(conv["kept_fp32"]), "kept_fp32_reasons": reasons,
                   "fp16_matmul_share": round(fp16.fp16_share(tmp / name), 3),
                   "max_activation": max((v for v in ranges.values() if v != float("inf")), default=0.0)}
            new.pop("export_seconds", None)
            prepared.append(new)
            held = heldout.get(spec.name) if (h, w) == tuple(resolutions[0]) else None
            report["graphs"] += vp.graph_errors(src, tmp / name, spec, dims, "fp16", held)
            row = report["graphs"][-1]
            log(f"      {name}: {len(conv['kept_fp32'])} nodes kept fp32, rel L2 {row['rel_l2']:.2e}")
            if not row["ok"] and rec["graph"] in FP32_FALLBACK_GRAPHS:
                prepared[-1] = fp32_fallback(rec, src, tmp, row, prepared[-1]["files"])
                log(f"      {rec['graph']}: fp16 rel L2 {row['rel_l2']:.2e} > {row['tol_rel_l2']:.0e}: "
                    f"shipping it fp32 ({prepared[-1]['file']})")

        if want_int8:
            log("[5/8] int8 Q/DQ graphs (symmetric, per-channel weights, calibrated MinMax)")
            for rec in records:
                if not quantize_qdq.wants_int8(rec["graph"]) or rec["graph"].endswith("_controlnet"):
                    continue
                spec = spec_for_record(rec, steps, model.controlnet is not None)
                h, w = rec["height"], rec["width"]
                dims = export_onnx.model_dims(model, h, w, steps)
                feeds = calib.get(spec.name) if (h, w) == tuple(resolutions[0]) else None
                if not feeds:
                    raise UserError(f"no calibration data for {rec['file']}: int8 needs the first resolution bucket")
                name = prepared_name(rec, "int8")
                qdq32 = fp32_dir / name  # Q/DQ with fp32 around it: an intermediate, not shipped
                q = quantize_qdq.quantize(fp32_dir / rec["file"], qdq32, feeds)
                conv = quantize_qdq.to_fp16(qdq32, tmp / name, spec.name, fp32_ranges.get(rec["file"]))
                new = {**rec, "file": name, "files": conv["files"], "precision": "int8", "int8": q,
                       "opset": quantize_qdq.QDQ_FP16_OPSET, "kept_fp32": len(conv["kept_fp32"]),
                       "fp16_matmul_share": round(fp16.fp16_share(tmp / name), 3)}
                new.pop("export_seconds", None)
                prepared.append(new)
                report["graphs"] += vp.graph_errors(fp32_dir / rec["file"], tmp / name, spec, dims, "int8",
                                                    heldout.get(spec.name))
                log(f"      {name}: {q['int8_layers']} int8 layers, {q['float_layers']} float, "
                    f"rel L2 {report['graphs'][-1]['rel_l2']:.2e}")
        else:
            log("[5/8] int8 skipped" + ("" if "int8" in target.trt.prepared else f" ({target.name} has no int8)"))

        log("[6/8] end to end on CPU (onnxruntime): prepared graphs vs fp32 graphs, uint8 PSNR")
        for f in [r for r in prepared]:
            shutil.copy2(tmp / f["file"], fp32_dir / f["file"])
            for extra in f["files"][1:]:
                shutil.copy2(tmp / extra, fp32_dir / extra)
        control = parity.control_image if model.controlnet is not None else None
        report["end_to_end"] += vp.end_to_end(fp32_dir, base, records,
                                              [r for r in prepared if r["precision"] in ("fp16", "fp32")], "fp16",
                                              control)
        if want_int8:  # int8 where there is an int8 graph, fp16 elsewhere: what the int8 engine set runs
            int8_graphs = {r["graph"] for r in prepared if r["precision"] == "int8"}
            mix = [r for r in prepared if r["precision"] == "int8" or
                   (r["precision"] in ("fp16", "fp32") and r["graph"] not in int8_graphs)]
            report["end_to_end"] += vp.end_to_end(fp32_dir, base, records, mix, "int8", None)
        log(vp.format_table(report))
        report["ok"] = all(r["ok"] for r in vp.shipped_rows(report["graphs"]) + report["end_to_end"])
        report["fp32_vs_reference"] = fp32_rows
        vp.gate(report)

        log(f"[7/8] check: TensorRT parser ops, dtypes, Q/DQ patterns, profile shapes ({target.name})")
        reports = [trt_check.check_file(tmp / r["file"], target, r) for r in prepared]
        log(trt_check.format_reports(reports, target))
        if not all(r.ok for r in reports):
            raise UserError(f"the graphs would not build for {target.name} (problems listed above); "
                            "the bundle was not written")
        shutil.rmtree(fp32_dir)
        from reference.schedules import NUM_TRAIN_TIMESTEPS

        lcm = next(r["lcm"] for r in records if "lcm" in r)
        lo, hi = target.trt.tensorrt
        manifest = {
            "schema_version": SCHEMA_VERSION, "toolchain": versions, "target": target.name,
            "backend": {"name": "tensorrt", "version": None, "requires": {"min": lo, "max": hi}},
            "device": {"arch": target.trt.arch, "sm": target.trt.sm, "name": None, "driver": None},
            "status": BUNDLE_STATUS, "compile_command": compile_command(out),
            "precision": {r["file"]: r["precision"] for r in prepared},
            "model": {"spec": str(model_spec), "controlnet_spec": controlnet_spec, "layout": model.layout,
                      "controlnet": model.controlnet is not None, "config_hash": identity["config_hash"],
                      "weights_hash": identity["weights_hash"], "identity": identity["identity"]},
            "build_key": key, "steps": steps,
            "lcm": {"spacing": model.lcm_spacing, "num_train_timesteps": NUM_TRAIN_TIMESTEPS, **lcm},
            "resolutions": [list(r) for r in resolutions],
            "latent_size_policy": "static per resolution bucket (one file per bucket); batch dynamic",
            "latent_channels": model.dit.config.in_channels, "vae_scale_factor": model.vae_scale_factor,
            "tokenizer": tokenizer, "graphs": prepared, "profiles": profiles_for(target, prepared),
            "precision_report": report, "check": {"ok": True, "files": {r.file: r.ops for r in reports}},
            "calibration": {"prompts": list(prompts), "seed": 0}, "engines": [], "parity": None,
            "files": {},
        }
        manifest["files"] = file_table(tmp)
        manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(tmp / "manifest.json", manifest)
        log(f"[8/8] install bundle {out}")
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from . import compile_trt

    ready, why = compile_trt.host_can_compile(target)
    if compile_engines is False or (compile_engines is None and not ready):
        log(f"bundle ready: {out} (graphs verified on CPU, checked for {target.name}). Engines were NOT built: "
            f"{why}. On a {target.trt.arch} host with TensorRT, run:\n    {compile_command(out)}")
        return out, manifest, False
    log(f"compile engines on this host ({why})")
    manifest = compile_trt.compile_bundle(out, log=log)
    return out, manifest, False
