"""`build --target ov-cpu | ov-cpu-int8`: model -> OpenVINO engine folder, with the same guarantees as ort-cpu.

Stages: load the model; export the fp32 ONNX graphs (`export_onnx`, into a scratch folder); convert
them to fp32 IR (`compile_ov`); for `ov-cpu-int8`, calibrate on the reference pipeline and quantise
(`quantize_ov`); tokenizer files; parity of every graph against the PyTorch reference, run through
OpenVINO with the very compile configuration the runtime will use; end to end (fp32: image PSNR as
ort-cpu; int8: the quality gate); manifest; atomic install. Folder handling (temporary folder beside
the destination, build-key reuse, swap into place) is `build.py`'s, imported, not copied.

Precision is explicit and recorded per graph (`graphs[i].openvino.config`): `ov-cpu` compiles every
graph with `INFERENCE_PRECISION_HINT=f32` (OpenVINO would pick bf16 by itself on CPUs with it);
`ov-cpu-int8` records what its measurements chose (see `quantize_ov`).
"""
from __future__ import annotations

import importlib.metadata
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .graphs import MIN_PSNR_DB, fixed_inputs, graph_specs

Log = Callable[[str], None]

#: Per-graph tolerance of an int8 graph against the fp32 reference (relative L2). Measured int8
#: graphs sit at ~0.01-0.05 (tiny and XL); a wrong scale, a quantised normalisation or a broken
#: graph gives >= 0.5. The decisive check for int8 is the image quality gate; this one names the
#: graph that went wrong.
INT8_REL_L2 = 0.2
#: T5 with int8 weights: per-channel weight rounding only, ~1e-2 relative at most.
INT8_WEIGHTS_REL_L2 = 0.05


def backend_versions() -> dict:
    return {"openvino": importlib.metadata.version("openvino"), "nncf": importlib.metadata.version("nncf")}


def _tolerance(rec: dict, spec) -> tuple[float, float, str]:
    precision = rec["precision"]
    if precision.startswith("int8 (NNCF PTQ"):
        return INT8_REL_L2, math.inf, "int8 PTQ vs fp32 reference: quantisation error; images gated separately"
    if precision.startswith("int8 weights"):
        return INT8_WEIGHTS_REL_L2, math.inf, "int8 weights vs fp32 reference: weight rounding only"
    return spec.rel_l2, spec.max_abs_rel, ("OpenVINO with INFERENCE_PRECISION_HINT=f32 vs fp32 reference: only "
                                           "kernel choice and summation order differ, as for onnxruntime")


def graph_parity_ov(model, folder: Path, manifest: dict, pipeline, batch: int = 3, seed: int = 7,
                    on_graph: Log | None = None) -> list[dict]:
    """Each IR (compiled as the runtime compiles it) vs its reference module on fixed inputs."""
    import torch

    from .export_onnx import model_dims, wrapper_for
    from .parity import rel_l2

    steps, control = int(manifest["steps"]), bool(manifest["model"]["controlnet"])
    specs = {s.name: s for s in graph_specs(steps, control)}
    rows = []
    for rec in manifest["graphs"]:
        if on_graph:
            on_graph(rec["file"])
        spec = specs[rec["graph"]]
        h, w = rec["height"] or manifest["resolutions"][0][0], rec["width"] or manifest["resolutions"][0][1]
        feeds = fixed_inputs(spec, model_dims(model, h, w, steps), batch, seed=seed)
        with torch.no_grad():
            want = wrapper_for(spec, model, steps).eval()(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
        wants = [want] if isinstance(want, torch.Tensor) else list(want)
        started = time.perf_counter()
        gots = pipeline.run(rec["graph"], feeds, rec["height"], rec["width"])
        seconds = time.perf_counter() - started
        tol_rel, tol_abs_rel, why = _tolerance(rec, spec)
        for out_spec, got, ref in zip(spec.outputs, gots, wants):
            ref = ref.numpy()
            ok_shape = tuple(got.shape) == tuple(ref.shape)
            err = rel_l2(got, ref) if ok_shape else float("nan")
            max_abs = float(np.abs(got - ref).max()) if ok_shape else float("nan")
            tol_abs = tol_abs_rel * max(1.0, float(np.abs(ref).max()))
            rows.append({"file": rec["file"], "graph": spec.name, "output": out_spec.name, "batch": batch,
                         "precision": rec["precision"], "rel_l2": err, "max_abs": max_abs,
                         "ref_max_abs": float(np.abs(ref).max()), "tol_rel_l2": tol_rel,
                         "tol_max_abs": None if math.isinf(tol_abs) else tol_abs,
                         "ok": bool(ok_shape and err <= tol_rel and max_abs <= tol_abs),
                         "openvino_seconds": round(seconds, 3), "why": why})
    return rows


def end_to_end_fp32(model, manifest: dict, pipeline, on_case: Log | None = None) -> list[dict]:
    """Reference pipeline vs the OpenVINO runtime, same prompts and seed, as `parity.end_to_end_parity`."""
    from reference.pipeline import ReferencePipeline

    from .parity import PARITY_SEED, PROMPTS, psnr_uint8

    reference = ReferencePipeline(model)
    steps = int(manifest["steps"])
    rows = []
    for height, width in (tuple(r) for r in manifest["resolutions"]):
        if on_case:
            on_case(f"text2image {height}x{width}")
        want = reference(PROMPTS, steps=steps, seed=PARITY_SEED, resolution=(height, width), sampler="lcm",
                         output="pt").numpy()
        got = pipeline(PROMPTS, seed=PARITY_SEED, resolution=(height, width), output="np")
        psnr, mse = psnr_uint8(got, want)
        rows.append({"case": "text2image", "resolution": [height, width], "prompts": len(PROMPTS),
                     "seed": PARITY_SEED, "psnr_db": psnr, "mse_uint8": mse,
                     "max_abs": float(np.abs(got - want).max()), "min_psnr_db": MIN_PSNR_DB,
                     "ok": psnr is None or psnr >= MIN_PSNR_DB})
    return rows


def format_graph_table(rows: list[dict]) -> str:
    lines = [f"{'graph file':34} {'precision':44} {'rel L2':>10} {'tol':>8}  ok"]
    for r in rows:
        lines.append(f"{r['file']:34} {r['precision'][:44]:44} {r['rel_l2']:10.2e} {r['tol_rel_l2']:8.0e}  "
                     f"{'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)


def measure_ov(model, folder: Path, manifest: dict, int8, log: Log) -> dict:
    """The parity section of an OpenVINO engine: every graph vs the reference (compiled as the runtime
    compiles it); end to end as ort-cpu for fp32, the image quality gate for int8 (`int8` options)."""
    from .runtime.ov_pipeline import OvPipeline

    pipeline = OvPipeline(folder, manifest)
    graphs = graph_parity_ov(model, folder, manifest, pipeline, on_graph=lambda n: log(f"      {n}"))
    log(format_graph_table(graphs))
    parity = {"graphs": graphs, "measured_with": {"openvino": backend_versions()["openvino"],
                                                  "torch": __import__("torch").__version__}}
    if int8 is not None:
        from .quantize_ov import quality_gate

        quality = quality_gate(model, pipeline, int8, tuple(manifest["resolutions"][0]), int(manifest["steps"]), log)
        parity.update(quality=quality, end_to_end=[], ok=all(r["ok"] for r in graphs) and quality["ok"])
    else:
        e2e = end_to_end_fp32(model, manifest, pipeline, on_case=lambda n: log(f"      {n}"))
        for r in e2e:
            psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
            log(f"      end to end {r['case']} {r['resolution']}: PSNR {psnr} dB (min {MIN_PSNR_DB:.0f})")
        parity.update(end_to_end=e2e, ok=all(r["ok"] for r in graphs + e2e))
    parity["psnr_note"] = "psnr_db null means the uint8 images are identical"
    return parity


def gate_failure_message(quality: dict, out: Path) -> str:
    """One line: which quality figure fell below which threshold, and that nothing was installed."""
    q, g = quality, quality["thresholds"]
    return (f"int8 quality gate failed: mean PSNR {q['mean_psnr_db']} dB (min {g['min_mean_psnr_db']}), worst "
            f"image {q['min_psnr_db']} dB (min {g['min_image_psnr_db']}), mean SSIM {q['mean_ssim']} (min "
            f"{g['min_mean_ssim']}) over {q['pairs']} prompt/seed pairs; the engine was not installed at {out} "
            "(lower --min-psnr/--min-image-psnr/--min-ssim only if that quality is acceptable)")


def build_ov(target, model_spec: str, out: Path | None, controlnet_spec: str | None,
             resolutions: list[tuple[int, int]] | None, steps: int, lcm_spacing: str | None, verify: bool,
             force: bool, log: Log, int8=None, onnx_from: Path | None = None) -> tuple[Path, dict, bool]:
    """Build (or reuse) an OpenVINO engine folder; returns (folder, manifest, reused).

    `int8`: a `quantize_ov.Int8Options` for `ov-cpu-int8` (default options when None).
    `onnx_from`: an ort-cpu engine folder of the same model, steps and resolutions whose fp32 ONNX
    graphs are converted instead of exporting again (XL export takes many minutes; the folder is
    checked against its manifest, sha256 included, and its build key enters this one's).
    """
    from reference.loading import load_model, resolve_controlnet
    from reference.text import MAX_TEXT_LEN

    from . import compile_ov, export_onnx, identity as ident
    from .build import _swap_into_place, reuse_existing, assemble_manifest, engine_name
    from .export_tokenizer import export_tokenizer
    from .manifest import file_table, write_json_atomic

    try:
        versions = {**ident.toolchain_versions(), **backend_versions()}
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError(f"target {target.name} needs OpenVINO and NNCF: pip install 'pixart-export[openvino]' "
                        f"({exc.name} is missing)") from None
    quantise = target.name == "ov-cpu-int8"
    if quantise:
        from .quantize_ov import Int8Options, choose_and_quantize

        int8 = int8 or Int8Options()
    out = Path(out) if out is not None else Path("engines") / engine_name(target.name, model_spec, controlnet_spec)
    t0 = time.perf_counter()
    total = 7
    log(f"[1/{total}] load model {model_spec}" + (f" + ControlNet {controlnet_spec}" if controlnet_spec else ""))
    model = load_model(model_spec, controlnet=controlnet_spec, lcm_spacing=lcm_spacing)
    resolutions = resolutions or [(model.default_resolution, model.default_resolution)]
    export_onnx.check_exportable(model, resolutions, steps)
    if quantise and model.controlnet is not None:
        raise UserError("ov-cpu-int8 quantises the text-to-image graphs only; build the ControlNet engine with "
                        "--target ov-cpu")
    identity = ident.model_identity(model, resolve_controlnet(controlnet_spec) if controlnet_spec else None)
    cpu = compile_ov.cpu_info()
    options = {"target": target.name, "resolutions": [list(r) for r in resolutions], "steps": steps,
               "lcm_spacing": model.lcm_spacing, "verify": verify,
               "int8": int8.key() if quantise else None,
               # int8 choices (bf16 for the rest) are measured on this CPU: another CPU rebuilds
               "cpu": [cpu["model"], cpu["isa"]] if quantise else None}
    source = None
    if onnx_from is not None:
        source = _onnx_source(Path(onnx_from), identity, resolutions, steps)
        options["onnx_from"] = source["build_key"]
    key = ident.build_key(identity, options, versions)
    if (manifest := reuse_existing(out, key, verify, force, log)) is not None:
        return out, manifest, True

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.scratch-", dir=out.parent))
    try:
        onnx_dir, ir_dir = scratch / "onnx", scratch / "ir"
        if source is not None:
            import copy

            log(f"[2/{total}] fp32 ONNX graphs from {onnx_from} (exported and hashed by its build)")
            onnx_dir = Path(onnx_from)
            records = [{k: v for k, v in copy.deepcopy(r).items() if k not in ("optimisation",)}
                       for r in source["graphs"]]
        else:
            log(f"[2/{total}] export ONNX graphs (fp32, opset {export_onnx.OPSET})")
            records = export_onnx.export_model(model, onnx_dir, resolutions, steps,
                                               on_graph=lambda n: log(f"      {n}"))
        log(f"[3/{total}] convert to OpenVINO IR (fp32 weights) {compile_ov.openvino_version()}")
        ir_dir.mkdir()
        for rec in records:
            xml = compile_ov.ir_name(rec["file"])
            log(f"      {rec['file']} -> {xml}")
            rec["onnx_file"] = rec["file"]
            rec["file"], rec["files"] = xml, compile_ov.convert_graph(onnx_dir / rec["onnx_file"], ir_dir / xml)
            rec["precision"] = "fp32"
            rec["openvino"] = {"config": compile_config_for(target.name)}
        if source is None:
            shutil.rmtree(onnx_dir)
        quantisation = None
        if quantise:
            log(f"[4/{total}] int8: calibrate on the reference pipeline, NNCF quantise, measure")
            quantisation = choose_and_quantize(tmp, ir_dir, records, model, int8, log)
        else:
            log(f"[4/{total}] int8: not for this target")
        for rec in records:
            if not (tmp / rec["file"]).exists():
                for f in rec["files"]:
                    shutil.copy2(ir_dir / f, tmp / f)
            rec["bytes"] = sum((tmp / f).stat().st_size for f in rec["files"])
        log(f"[5/{total}] tokenizer files")
        tokenizer = export_tokenizer(model, tmp, MAX_TEXT_LEN)
        manifest = assemble_manifest(target=target, model=model, model_spec=model_spec,
                                     controlnet_spec=controlnet_spec, identity=identity, key=key, versions=versions,
                                     steps=steps, records=records, resolutions=resolutions, tokenizer=tokenizer,
                                     optimisation=[])
        manifest["backend"] = {"name": "openvino", "version": versions["openvino"]}
        manifest["device_info"] = {**cpu, "note": "the CPU the engine was built and measured on"}
        manifest["quantisation"] = quantisation
        manifest["files"] = file_table(tmp)
        if verify:
            log(f"[6/{total}] verify against the reference (parity" + (", quality gate)" if quantise else ")"))
            parity = measure_ov(model, tmp, manifest, int8 if quantise else None, log)
            manifest["parity"] = parity
            if not parity["ok"]:
                bad = [r["file"] for r in parity["graphs"] if not r["ok"]]
                if quantise and not parity["quality"]["ok"]:
                    raise UserError(gate_failure_message(parity["quality"], out))
                raise UserError(f"parity check failed ({', '.join(bad) or 'end to end'}; table above); the engine "
                                f"was not installed at {out}")
        else:
            log(f"[6/{total}] parity skipped")
        manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(tmp / "manifest.json", manifest)
        log(f"[7/{total}] install {out}")
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"built {out} in {time.perf_counter() - t0:.0f} s")
    return out, manifest, False


def _onnx_source(folder: Path, identity: dict, resolutions, steps: int) -> dict:
    """The manifest of an ort-cpu folder whose graphs may stand in for an export, or UserError."""
    import onnxruntime

    from .manifest import verify_engine

    manifest = verify_engine(folder, "onnxruntime", onnxruntime.__version__, hashes=True)
    if manifest["model"]["identity"] != identity["identity"]:
        raise UserError(f"{folder}: built from another model (identity {manifest['model']['identity'][:12]} != "
                        f"{identity['identity'][:12]}); export again without --onnx-from")
    if int(manifest["steps"]) != steps or [list(r) for r in manifest["resolutions"]] != [list(r) for r in resolutions]:
        raise UserError(f"{folder}: steps {manifest['steps']} / resolutions {manifest['resolutions']} differ from "
                        f"this build's {steps} / {[list(r) for r in resolutions]}")
    return manifest


def compile_config_for(target_name: str) -> dict:
    """The recorded compile properties of a graph before int8 measurements (always explicit f32)."""
    from .compile_ov import compile_config

    return compile_config("f32")


def add_int8_options(p) -> None:
    """`build` options of the ov-cpu-int8 quality gate and calibration (ignored by other targets)."""
    from .quantize_ov import CALIBRATION_PROMPTS, MIN_IMAGE_PSNR_DB, MIN_MEAN_PSNR_DB, MIN_MEAN_SSIM, QUALITY_PAIRS

    g = p.add_argument_group("ov-cpu-int8 (calibration and quality gate: int8 images vs the fp32 reference)")
    g.add_argument("--calibration-prompts", type=Path, default=CALIBRATION_PROMPTS, metavar="FILE",
                   help="prompts (one a line) the reference pipeline runs to collect calibration activations "
                        "(default: the shipped pixart_export/data/calibration_prompts.txt)")
    g.add_argument("--min-psnr", type=float, default=MIN_MEAN_PSNR_DB, metavar="DB",
                   help=f"fail the build below this mean image PSNR (default {MIN_MEAN_PSNR_DB:g} dB)")
    g.add_argument("--min-image-psnr", type=float, default=MIN_IMAGE_PSNR_DB, metavar="DB",
                   help=f"fail the build if any image is below this PSNR (default {MIN_IMAGE_PSNR_DB:g} dB)")
    g.add_argument("--min-ssim", type=float, default=MIN_MEAN_SSIM, metavar="S",
                   help=f"fail the build below this mean SSIM (default {MIN_MEAN_SSIM:g})")
    g.add_argument("--quality-pairs", type=int, default=QUALITY_PAIRS, metavar="N",
                   help=f"held-out prompt/seed pairs the gate compares (default {QUALITY_PAIRS}, at least 16)")


def int8_options_from_args(args):
    """An `Int8Options` from the parsed `build` arguments (None when the options are absent)."""
    from .quantize_ov import Int8Options, QualityGate

    if not hasattr(args, "min_psnr") or getattr(args, "target", None) != "ov-cpu-int8":
        return None
    if args.quality_pairs < 16:
        raise UserError(f"--quality-pairs {args.quality_pairs}: the int8 quality gate needs at least 16 pairs")
    if not Path(args.calibration_prompts).is_file():
        raise UserError(f"--calibration-prompts {args.calibration_prompts}: no such file")
    return Int8Options(calibration_prompts=Path(args.calibration_prompts),
                       gate=QualityGate(min_mean_psnr_db=args.min_psnr, min_image_psnr_db=args.min_image_psnr,
                                        min_mean_ssim=args.min_ssim, pairs=args.quality_pairs))


def parity_command(args) -> int:
    """`pixart-export parity` on an OpenVINO folder: re-measure, print, record (unless --no-write)."""
    import sys

    from . import identity as ident
    from .compile_ov import openvino_version
    from .manifest import verify_engine, write_json_atomic
    from .quantize_ov import Int8Options, QualityGate

    manifest = verify_engine(args.engine, "openvino", openvino_version())
    model, model_spec = ident.load_recorded_model(manifest, args.model, args.controlnet)
    int8 = None
    if manifest["target"] == "ov-cpu-int8":
        gate = ((manifest.get("parity") or {}).get("quality") or {}).get("thresholds")
        int8 = Int8Options(gate=QualityGate(**gate) if gate else QualityGate())
    print(f"parity of {args.engine} against {model_spec}", file=sys.stderr, flush=True)
    parity = measure_ov(model, args.engine, manifest, int8, lambda m: print(m, file=sys.stderr, flush=True))
    print(format_graph_table(parity["graphs"]))
    if "quality" in parity:
        q = parity["quality"]
        print(f"quality: mean PSNR {q['mean_psnr_db']} dB (worst {q['min_psnr_db']}), mean SSIM {q['mean_ssim']} "
              f"over {q['pairs']} pairs")
    print(f"parity: {'PASS' if parity['ok'] else 'FAIL'}")
    if not args.no_write:
        manifest["parity"] = parity
        write_json_atomic(args.engine / "manifest.json", manifest)
    return 0 if parity["ok"] else 1
