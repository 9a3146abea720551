"""Build stages of the TensorRT targets: the exported fp32 graphs -> a bundle (graphs in their final
precision, verified on CPU, checked for the target), compiled by `finish` when this host can.

Stages, after `build.py`'s export (each a named `Stage`; the build numbers them):
  1. the fp32 graphs against the PyTorch reference, in onnxruntime (`verify.graph_parity`): what the
     prepared graphs are measured against must itself be right;
  2. calibration data: reference LCM trajectories of the calibration prompts
     (`calibration.CALIBRATION_PROMPTS`, the first `CALIBRATION_COUNT`, batch 2, seed 0) and of
     held-out prompts (`calibration.HELD_OUT_PROMPTS`, the first `HELD_OUT_COUNT`, seed 1000); with a
     ControlNet also controlled trajectories of control scenes (`calibration.control_scenes`, edge map
     and caption, conditioning scale 1: the first `CALIBRATION_COUNT` scenes to calibrate, the next
     `HELD_OUT_COUNT` held out) for the `controlnet` and `denoiser_lcm{K}_controlnet` graphs;
  3. fp16: every graph (`fp16.convert`, sensitive nodes kept fp32, decided on ranges measured on 2.),
     each measured against its fp32 graph on the held-out inputs (`verify.prepared_errors`). The text
     encoder follows the target's T5 plan (`TrtSpec.text_encoder`, `t5_plan.py`): fp16 with the overflow
     layers fp32 (T4, V100), or bf16 (`bf16.py`, measured by cast simulation: A100, H100); it ships fp32
     where that fails (`FP32_FALLBACK_GRAPHS`) only if fp32 fits the target's card, else the build stops.
     A T5 too large for the fp32 export (streamed, `exporter.direct_record`: no fp32 graph, so no row in
     1.) is written block by block in the plan's precision and measured, chained piece by piece, against
     the streamed fp32 reference (`t5_blockwise.py`); end to end, the reference stands in for its fp32 graph.
     The plan with its T5-XXL memory estimate goes to the build section (`text_encoder_plan`);
  4. int8 (where the target has it and `--trt-fp16-only` is not given): explicit Q/DQ for the transformer
     and the unrolled denoiser, and with a ControlNet for `controlnet` and `denoiser_lcm{K}_controlnet`
     (`quantize_qdq.quantize`, calibrated on 2.), fp16 outside the int8 layers
     (`quantize_qdq.to_fp16`), measured like 3.; fp8 likewise where the target prepares it
     (`quantize_fp8.py`, trt-h100: E4M3 Q/DQ on the same layers, the int8 gates; not yet the ControlNet
     graphs, which run fp16 in an fp8 engine set);
  5. end to end on CPU: the runtime `Pipeline` over the prepared graphs vs over the fp32 graphs (uint8
     PSNR, `verify.end_to_end`); the precision gate: a figure beyond `verify.TOLERANCES` stops the build;
  6. the `lcm_update` graph of the K-step loop (`loop.py`, fp32, one per bucket) in onnxruntime against
     `reference.sampling.lcm_step` at every step of the schedule (a parity row, rel L2 and max abs
     within `LCM_UPDATE_TOLERANCE`), shipped whatever the plan (`build.k_step_plan` says which runs);
  7. `check.py`: every op, dtype, Q/DQ pattern and shape against the target's parser and profile.
The bundle ships the prepared graphs only (the fp32 ones were the baseline), status "bundle". `finish`
compiles it (`compile.py`) when this host has TensorRT and the target GPU, else logs the command.

Where the manifest keeps what this backend adds: each graph's TensorRT optimisation profile in its
record's `runtime["profile"]` (what `compile` applies); what the preparation decided and measured per
graph (nodes kept fp32, the int8 settings, the fp32 fallback's reason) in its `details`; the check
report (`check`), the calibration and held-out prompts (`calibration`), the command that finishes the
bundle (`compile_command`), the text encoder's plan (`text_encoder_plan`) and the K-step plan
(`k_step_plan`, `loop.py`) in the manifest's `build` section; the figures in `parity` (graphs: fp32 vs
reference, then prepared vs fp32; end_to_end: prepared vs fp32 pipelines).

`ort-cuda` (the onnxruntime backend on the CUDA provider) ships this preparation's fp16 graphs:
`fp16_only_stages` (1, 2, 3 and 5 without int8) and `precision_verify`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import GateFailed, UserError
from ...manifest import Manifest, Parity, Precision
from ..base import Stage

#: Graphs that may ship fp32 when their fp16 graph fails its measured tolerance. T5 only: it has no
#: attention scaling, and a trained T5 can learn attention logits in the thousands, where rounding the
#: *weights* to fp16 already moves the logits by whole units (the trained `tiny`: 2.3% error on real
#: tokens with every node kept fp32 and only the weights fp16). It is a small share of an image's
#: FLOPs (one call per image); the DiT and VAE graphs never fall back, they fail the gate.
FP32_FALLBACK_GRAPHS = ("text_encoder",)
#: How many of `calibration.CALIBRATION_PROMPTS` the int8 scales and the fp16 activation ranges are
#: measured on (the `calib_prompts` build option), and how many of `calibration.HELD_OUT_PROMPTS` the
#: precision checks run on. Here, not in options.py: ort-cuda's build key hashes fp16.py and prepare.py.
CALIBRATION_COUNT = 16
HELD_OUT_COUNT = 4
#: Seeds of the calibration and held-out trajectories (`calibration.collect`: batch i uses seed + i).
CALIBRATION_SEED = 0
HELD_OUT_SEED = 1000
AGAINST = "fp32 graphs (onnxruntime, CPU)"
#: Latent channels of the PixArt VAE (graphs.LATENTS: [B, 4, h, w]).
LATENT_CHANNELS = 4


def prepared_name(record: dict, precision: str) -> str:
    return record["file"].replace(".onnx", f".{precision}.onnx")


def compile_command(folder: Path) -> str:
    return f"pixart-export compile {folder}"


@dataclass
class _Work:
    """What the stages of one build hand each other (never shipped): calibration feeds, measured
    ranges, the rows measured so far."""

    int8: bool
    fp8: bool = False
    calib: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)  # {fp32 file: {value: max |value|}}
    simulated: dict = field(default_factory=dict)  # {prepared file: folder of its onnxruntime simulation}
    fp32_rows: list = field(default_factory=list)  # fp32 graphs vs the reference
    rows: list = field(default_factory=list)  # prepared graphs vs their fp32 graphs
    base: Manifest | None = None  # the fp32 graphs as a manifest (for runners and pipelines)


# -- the stage lists -----------------------------------------------------------------------------------------
def stages(backend, ctx) -> list[Stage]:
    """The TensorRT bundle's stages (module docstring); status "bundle", default precision fp16."""
    work = _Work(
        int8=bool(ctx.options.get("int8", Precision.INT8 in ctx.target.trt.prepared)),
        fp8=bool(ctx.options.get("fp8", Precision.FP8 in ctx.target.trt.prepared)),
    )
    ctx.status = "bundle"
    ctx.default_precision = Precision.FP16
    ctx.build_info["compile_command"] = compile_command(ctx.out)
    from .loop import PLANS, plan_record

    ctx.build_info["k_step_plan"] = plan_record(ctx.request.steps, ctx.options.get("k_step_plan", PLANS[0]))
    out = _common_stages(ctx, work)
    if work.int8:
        out.append(
            Stage("int8 Q/DQ graphs (symmetric, per-channel weights, calibrated MinMax)", lambda c: _int8(c, work))
        )
    if work.fp8:
        out.append(
            Stage("fp8 Q/DQ graphs (E4M3, layers chosen by measured error, calibrated MinMax)", lambda c: _fp8(c, work))
        )
    out.append(
        Stage(
            "end to end on CPU (onnxruntime): prepared graphs vs fp32 graphs, uint8 PSNR; precision gate",
            lambda c: _end_to_end(c, work),
        )
    )
    out.append(Stage("lcm_update graphs (the K-step loop's update, fp32) vs the reference LCM step", _lcm_update))
    out.append(Stage(f"check: TensorRT parser ops, dtypes, Q/DQ patterns, profile shapes ({ctx.target.name})", _check))
    return out


def fp16_only_stages(ctx) -> list[Stage]:
    """ort-cuda: the fp16 graphs of this preparation, verified in onnxruntime on the CPU as the bundle's
    fp16 graphs are (no int8, no TensorRT check)."""
    work = _Work(int8=False)
    ctx.default_precision = Precision.FP16
    out = _common_stages(ctx, work)
    if ctx.request.verify:
        out.append(
            Stage(
                "end to end on CPU (onnxruntime): fp16 graphs vs fp32 graphs, uint8 PSNR; precision gate",
                lambda c: _end_to_end(c, work),
            )
        )
    return out


def _common_stages(ctx, work: _Work) -> list[Stage]:
    return [
        Stage("fp32 graphs vs the PyTorch reference (onnxruntime)", lambda c: _fp32_parity(c, work)),
        Stage(
            "calibration data: reference LCM trajectories of the calibration and held-out prompts",
            lambda c: _calibrate(c, work),
        ),
        Stage("fp16 graphs (sensitive nodes kept fp32 by rule and by measured range)", lambda c: _fp16(c, work)),
    ]


def verify(backend, ctx) -> Parity:
    return precision_verify(ctx)


def precision_verify(ctx) -> Parity:
    """The parity the stages measured (graphs: fp32 vs reference, then prepared vs fp32; end to end:
    prepared vs fp32 pipelines). The end-to-end stage computed and gated it."""
    if ctx.parity is None:
        raise RuntimeError("the TensorRT preparation's end-to-end stage did not run")  # a pipeline bug
    return ctx.parity


# -- helpers ---------------------------------------------------------------------------------------------------
def _fp32_manifest(ctx, work: _Work) -> Manifest:
    if work.base is None:
        work.base = ctx.assemble(records=ctx.fp32_records, folder=ctx.fp32_dir)
    return work.base


def _spec_dims(ctx, rec: dict):
    from ...export.exporter import model_dims
    from ...graphs import spec_for_record

    steps = ctx.request.steps
    spec = spec_for_record(rec, steps, ctx.model.controlnet is not None)
    h, w = rec["height"] or ctx.resolutions[0][0], rec["width"] or ctx.resolutions[0][1]
    return spec, model_dims(ctx.model, h, w, steps), (h, w) == tuple(ctx.resolutions[0])


def _errors(ctx, fp32_rec: dict, rec: dict, spec, dims, feeds_list, prepared_dir: Path | None = None) -> list[dict]:
    """`verify.prepared_errors` with runners made for this graph only (freed after: XL graphs are large);
    `prepared_dir` holds what onnxruntime runs in place of the prepared file (the bf16 simulation)."""
    from ...manifest import graph_record
    from ...verify import prepared_errors
    from ..onnxruntime.runner import OrtRunner

    return prepared_errors(
        OrtRunner(ctx.fp32_dir),
        OrtRunner(prepared_dir or ctx.staging),
        graph_record(fp32_rec),
        graph_record(rec),
        spec,
        dims,
        feeds_list,
    )


def _prepared(rec: dict, name: str, files: list[str], precision: str, **details) -> dict:
    new = {**rec, "file": name, "files": list(files), "precision": precision, **details}
    new.pop("export_seconds", None)
    return new


def fp32_fallback(rec: dict, src_dir: Path, dst_dir: Path, row: dict, fp16_files: list[str]) -> dict:
    """The fp32 graph shipped in place of a failed fp16 one (precision "fp32", reason recorded); the
    failed fp16 file is removed and its error row marked `replaced_by_fp32` (kept in the report, not
    gated: `verify.gated_rows`)."""
    name = prepared_name(rec, "fp32")
    shutil.copy2(Path(src_dir) / rec["file"], Path(dst_dir) / name)
    for extra in rec.get("files", [])[1:]:
        shutil.copy2(Path(src_dir) / extra, Path(dst_dir) / extra)
    for f in fp16_files:
        (Path(dst_dir) / f).unlink(missing_ok=True)
    row["replaced_by_fp32"] = True
    return _prepared(
        rec,
        name,
        [name, *rec.get("files", [])[1:]],
        "fp32",
        fp32_fallback=f"fp16 measured rel L2 {row['rel_l2']:.2e} > tolerance {row['tol_rel_l2']:.0e}",
    )


def _range_feeds(spec, dims, calib: dict | None) -> list[dict]:
    from ...graphs import fixed_inputs

    feeds = (calib or {}).get(spec.name)
    return feeds if feeds else [fixed_inputs(spec, dims, 2, seed=s) for s in (11, 12)]


def _gate_now(ctx, parity: Parity, what: str) -> None:
    from ...verify import failures, format_table

    if not parity.ok:
        ctx.log(format_table(parity))
        raise GateFailed(
            f"{ctx.target.name}: {what}: "
            + "; ".join(failures(parity))
            + f". Nothing was installed at {ctx.out}; the figures are in the table above"
        )


# -- stages ------------------------------------------------------------------------------------------------------
def _fp32_parity(ctx, work: _Work) -> None:
    from ...verify import graph_parity
    from ..onnxruntime.runner import OrtRunner

    base = _fp32_manifest(ctx, work)  # a T5 exported directly has no fp32 graph: measured in the fp16 stage
    exported = dataclasses.replace(base, graphs=tuple(g for g in base.graphs if not g.details.get("direct_from")))
    work.fp32_rows = graph_parity(
        ctx.model, OrtRunner(ctx.fp32_dir), exported, on_graph=lambda n: ctx.log(f"      {n}")
    )
    for r in work.fp32_rows:
        r["against"] = "PyTorch reference"
    _gate_now(
        ctx,
        Parity(ok=all(r["ok"] for r in work.fp32_rows), graphs=tuple(work.fp32_rows), end_to_end=()),
        "the fp32 export does not match the reference",
    )


def _calibrate(ctx, work: _Work) -> None:
    from ...calibration import CALIBRATION_PROMPTS, HELD_OUT_PROMPTS, collect, read_prompts

    prompts = read_prompts(CALIBRATION_PROMPTS)[: int(ctx.options.get("calib_prompts", CALIBRATION_COUNT))]
    held = read_prompts(HELD_OUT_PROMPTS)[:HELD_OUT_COUNT]
    ctx.log(f"      {len(prompts)} calibration prompts, {len(held)} held-out prompts")
    work.calib = collect(ctx.model, prompts, ctx.resolutions[0], ctx.request.steps, seed=CALIBRATION_SEED)
    work.heldout = collect(ctx.model, held, ctx.resolutions[0], ctx.request.steps, seed=HELD_OUT_SEED)
    scenes = None
    if ctx.model.controlnet is not None:  # the ControlNet graphs: controlled trajectories of control scenes
        from ...calibration import CONTROL_CALIBRATION_SEED, control_scenes

        count, size = len(prompts), max(ctx.resolutions[0])
        controls, captions = control_scenes(count + HELD_OUT_COUNT, size=size)
        ctx.log(f"      ControlNet: {count} calibration scenes, {HELD_OUT_COUNT} held-out scenes")
        for into, part, seed in (
            (work.calib, slice(0, count), CALIBRATION_SEED),
            (work.heldout, slice(count, None), HELD_OUT_SEED),
        ):
            into.update(
                collect(
                    ctx.model, captions[part], ctx.resolutions[0], ctx.request.steps, seed=seed, controls=controls[part]
                )
            )
        scenes = {
            "source": "calibration.control_scenes (edge map as control image, caption as prompt, scale 1)",
            "scene_seed": CONTROL_CALIBRATION_SEED,
            "scenes": count,
            "held_out_scenes": HELD_OUT_COUNT,
        }
    ctx.build_info["calibration"] = {
        "prompts": prompts,
        "seed": CALIBRATION_SEED,
        "file": CALIBRATION_PROMPTS.name,
        "held_out": held,
        "held_out_seed": HELD_OUT_SEED,
        "held_out_file": HELD_OUT_PROMPTS.name,
        "resolution": list(ctx.resolutions[0]),
        "used_for": "fp16 activation ranges and int8 scales (calibration); precision checks (held out)",
        **({"controlnet": scenes} if scenes else {}),
    }


def _fp16(ctx, work: _Work) -> None:
    from . import fp16

    ctx.records = []
    for rec in ctx.fp32_records:
        if rec.get("direct_from"):  # a T5 too large for the fp32 export (`exporter.direct_record`)
            ctx.records.append(_direct_text_encoder(ctx, work, rec))
            continue
        spec, dims, first_bucket = _spec_dims(ctx, rec)
        src = ctx.fp32_dir / rec["file"]
        ranges = fp16.activation_ranges(src, _range_feeds(spec, dims, work.calib if first_bucket else None))
        work.ranges[rec["file"]] = ranges
        trt = getattr(ctx.target, "trt", None)  # None for ort-cuda (this preparation's fp16 graphs only)
        low = trt.text_encoder if trt is not None and rec["graph"] == "text_encoder" else Precision.FP16
        name = prepared_name(rec, str(low))
        sim_dir = None
        if low == Precision.BF16:  # the T5 plan of bf16 targets (t5_plan.py), verified by cast simulation
            from . import bf16

            conv = bf16.convert(src, ctx.staging / name, spec.name)
            sim_dir = ctx.scratch / "bf16-simulation"
            sim_dir.mkdir(parents=True, exist_ok=True)
            import onnx

            onnx.save(bf16.simulation(ctx.staging / name), str(sim_dir / name))
            work.simulated[name] = sim_dir
        else:
            conv = fp16.convert(src, ctx.staging / name, spec.name, ranges)
        reasons: dict[str, int] = {}
        for reason in conv["kept_fp32"].values():
            kind = fp16.reason_kind(reason)
            reasons[kind] = reasons.get(kind, 0) + 1
        new = _prepared(
            rec,
            name,
            conv["files"],
            str(low),
            kept_fp32=len(conv["kept_fp32"]),
            kept_fp32_reasons=reasons,
            fp16_keep=conv["keep"],
            casts=conv["casts"],
            fp16_matmul_share=round(fp16.fp16_share(ctx.staging / name), 3) if sim_dir is None else None,
            max_activation=max((v for v in ranges.values() if v != float("inf")), default=0.0),
            **({"verified_by": BF16_SIMULATION} if sim_dir is not None else {}),
        )
        rows = _errors(ctx, rec, new, spec, dims, work.heldout.get(spec.name) if first_bucket else None, sim_dir)
        if sim_dir is not None:
            rows = [{**r, "simulated": BF16_SIMULATION} for r in rows]
        work.rows += rows
        row = rows[-1]
        ctx.log(f"      {name}: {len(conv['kept_fp32'])} nodes kept fp32, rel L2 {row['rel_l2']:.2e}")
        if not row["ok"] and rec["graph"] in FP32_FALLBACK_GRAPHS:
            refused = _fallback_refused(ctx, rec)
            if refused:
                raise GateFailed(
                    f"{ctx.target.name}: {rec['graph']} in {low} measured rel L2 {row['rel_l2']:.2e} > "
                    f"{row['tol_rel_l2']:.0e}, and its fp32 fallback does not fit: {refused}. Nothing was "
                    f"installed at {ctx.out}"
                )
            new = fp32_fallback(rec, ctx.fp32_dir, ctx.staging, row, new["files"])
            new["fp32_fallback"] = new["fp32_fallback"].replace("fp16", str(low), 1)
            ctx.log(
                f"      {rec['graph']}: {low} rel L2 {row['rel_l2']:.2e} > {row['tol_rel_l2']:.0e}: "
                f"shipping it fp32 ({new['file']})"
            )
        if trt is not None and rec["graph"] == "text_encoder":
            ctx.build_info["text_encoder_plan"] = _t5_plan_record(ctx, trt, new, reasons)
        ctx.records.append(new)


def _direct_text_encoder(ctx, work: _Work, rec: dict) -> dict:
    """The text encoder of a streamed T5 (too large for the fp32 export), written block by block in the
    target's T5 plan precision (`t5_blockwise.py`; ranges from the streamed reference on the calibration
    prompts) and measured, chained piece by piece, against the streamed fp32 reference on the held-out
    prompts (that row goes to the parity table with the prepared-vs-fp32 rows). Where it fails its
    tolerance it ships fp32, made the same way, only if fp32 fits the target's card (the fp16 plan's
    cards do not fit T5-XXL in fp32: `t5_plan.py`)."""
    from reference.t5_streamed import fp32_bytes

    from . import fp16, t5_blockwise
    from .t5_plan import GIB

    trt = ctx.target.trt
    low = trt.text_encoder
    streamed = ctx.model.text_encoder
    spec, dims, _ = _spec_dims(ctx, rec)
    shapes = {t["name"]: t["shape"] for t in rec["inputs"] + rec["outputs"]}
    calib = _range_feeds(spec, dims, work.calib)
    held = work.heldout.get(spec.name) or _range_feeds(spec, dims, None)
    pieces_dir = ctx.scratch / "t5-pieces"
    ctx.log(f"      {rec['direct_from']}: {streamed.num_parameters() / 1e9:.2f} B parameters, exported in {low}")

    def made(precision: Precision) -> tuple[dict, dict]:
        name = f"{rec['graph']}.{precision}.onnx"
        info = t5_blockwise.build(streamed, ctx.staging / name, precision, calib, pieces_dir, shapes, log=ctx.log)
        row, per_block = t5_blockwise.verify(streamed, ctx.staging / name, precision, held, pieces_dir)
        reasons: dict[str, int] = {}
        for reason in info["kept_fp32"].values():
            reasons[fp16.reason_kind(reason)] = reasons.get(fp16.reason_kind(reason), 0) + 1
        new = _prepared(
            rec,
            name,
            info["files"],
            str(precision),
            bytes=sum((ctx.staging / f).stat().st_size for f in info["files"]),
            kept_fp32=len(info["kept_fp32"]),
            kept_fp32_reasons=reasons,
            fp16_keep=info["keep"],
            casts=info["casts"],
            fp16_matmul_share=round(fp16.fp16_share(ctx.staging / name), 3) if precision == Precision.FP16 else None,
            max_activation=info["max_activation"],
            exported_directly={
                "from": rec["direct_from"],
                "precision": str(precision),
                "how": t5_blockwise.HOW,
                "pieces": len(info["pieces"]),
                "seconds": info["seconds"],
                "per_block_rel_l2": per_block,
            },
            verified_by=t5_blockwise.VERIFIED_BY,
        )
        new.pop("direct_from", None)
        ctx.log(f"      {name}: {len(info['kept_fp32'])} nodes kept fp32, rel L2 {row['rel_l2']:.2e} vs the reference")
        return new, row

    new, row = made(low)
    work.rows.append(row)
    if not row["ok"]:
        need = fp32_bytes(Path(rec["direct_from"])) / GIB + 0.5
        if need > trt.memory_gib:
            raise GateFailed(
                f"{ctx.target.name}: text_encoder in {low} measured rel L2 {row['rel_l2']:.2e} > "
                f"{row['tol_rel_l2']:.0e}, and its fp32 fallback does not fit: {need:.1f} GiB in fp32 > "
                f"{trt.memory_gib} GiB on {ctx.target.name}'s card. Nothing was installed at {ctx.out}"
            )
        for f in new["files"]:
            (ctx.staging / f).unlink(missing_ok=True)
        row["replaced_by_fp32"] = True
        failed = row
        new, row = made(Precision.FP32)
        work.rows.append(row)
        new["fp32_fallback"] = f"{low} measured rel L2 {failed['rel_l2']:.2e} > tolerance {failed['tol_rel_l2']:.0e}"
        ctx.log(f"      text_encoder: {new['fp32_fallback']}: shipping it fp32 ({new['file']})")
    ctx.build_info["text_encoder_plan"] = _t5_plan_record(ctx, trt, new, new["kept_fp32_reasons"])
    return new


#: How the bf16 graphs' error is measured (onnxruntime has no CPU bf16 kernels): bf16.simulation.
BF16_SIMULATION = "cast simulation in onnxruntime: bf16 storage rounding, fp32 arithmetic (bf16.py)"


def _fallback_refused(ctx, rec: dict) -> str | None:
    """Why the fp32 text encoder would not fit the target's card (weights + the CUDA context), or None."""
    from .t5_plan import GIB

    trt = getattr(ctx.target, "trt", None)
    if trt is None:
        return None
    need = sum((ctx.fp32_dir / f).stat().st_size for f in rec.get("files") or [rec["file"]]) / GIB + 0.5
    if need <= trt.memory_gib:
        return None
    return f"{need:.1f} GiB in fp32 > {trt.memory_gib} GiB on {ctx.target.name}'s card"


def _t5_plan_record(ctx, trt, shipped: dict, reasons: dict) -> dict:
    """The build section's `text_encoder_plan`: the target's plan with the T5-XXL memory estimate
    (t5_plan.py, from parameter counts) and what this build shipped for its own text encoder."""
    from .t5_plan import memory_estimate

    return {
        **memory_estimate(trt.text_encoder, trt.memory_gib),
        "this_build": {
            "shipped": shipped["precision"],
            "fp32_fallback": shipped.get("fp32_fallback"),
            "fp32_nodes_by_rule": reasons,
        },
    }


def _quantisable(ctx, work: _Work, what: str):
    """(fp32 record, spec, dims, calibration feeds) of each graph that gets int8/fp8 Q/DQ: the transformer
    and the unrolled denoiser, and for int8 the ControlNet's two graphs too (`controlnet`, the one-step
    transformer's counterpart, and `denoiser_lcm{K}_controlnet`); calibration exists for the first
    resolution bucket only."""
    from . import quantize_qdq

    for rec in ctx.fp32_records:
        control = rec["graph"] == "controlnet" or rec["graph"].endswith("_controlnet")
        if not (quantize_qdq.wants_int8(rec["graph"]) or control) or (control and what != "int8"):
            continue
        spec, dims, first_bucket = _spec_dims(ctx, rec)
        feeds = work.calib.get(spec.name) if first_bucket else None
        if not feeds:
            raise UserError(f"no calibration data for {rec['file']}: {what} needs the first resolution bucket")
        yield rec, spec, dims, feeds


def _choose_int8(ctx, work: _Work, graphs: list):
    """The int8 settings: every `quantize_qdq.INT8_CANDIDATES` entry (MinMax, SmoothQuant 0.8) made on the
    unrolled denoiser and measured against fp32 on the calibration trajectories, chosen as fp8's are
    (`quantize_fp8.choose`: the first within `SELECT_FRACTION` of the int8 tolerance, else the lowest);
    every candidate's figures in `build.int8_choice` (issue #23)."""
    from ...verify import tolerance
    from . import quantize_fp8, quantize_qdq

    loop = [g for g in graphs if g[0]["graph"].startswith("denoiser_lcm") and not g[0]["graph"].endswith("_controlnet")]
    if not loop:
        return quantize_qdq.INT8_CANDIDATES[0]
    rec, spec, dims, feeds = loop[0]
    name = prepared_name(rec, "int8")
    limit = quantize_fp8.SELECT_FRACTION * tolerance(spec.name, Precision.INT8).rel_l2
    rows = []
    for i, cand in enumerate(quantize_qdq.INT8_CANDIDATES):
        folder = ctx.scratch / "int8-candidates" / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        q = quantize_qdq.quantize(ctx.fp32_dir / rec["file"], folder / f"qdq.{name}", feeds, settings=cand)
        conv = quantize_qdq.to_fp16(folder / f"qdq.{name}", folder / name, spec.name, work.ranges.get(rec["file"]))
        err = _errors(ctx, rec, _prepared(rec, name, conv["files"], "int8"), spec, dims, feeds, prepared_dir=folder)
        rows.append(
            {"settings": dataclasses.asdict(cand), "smoothquant": q["smoothquant"], "rel_l2": err[-1]["rel_l2"]}
        )
        ctx.log(f"      int8 candidate {cand.name}: rel L2 {err[-1]['rel_l2']:.2e} on the calibration trajectories")
    chosen = quantize_qdq.INT8_CANDIDATES[quantize_fp8.choose([r["rel_l2"] for r in rows], limit)]
    ctx.build_info["int8_choice"] = {
        "chosen": chosen.name,
        "graph": rec["file"],
        "rule": f"first of quantize_qdq.INT8_CANDIDATES with rel L2 <= {quantize_fp8.SELECT_FRACTION} x the int8 "
        f"tolerance ({limit:.2g}) on the calibration trajectories, else the lowest",
        "candidates": rows,
    }
    ctx.log(f"      int8 chosen: {chosen.name}")
    return chosen


def _int8(ctx, work: _Work) -> None:
    from . import fp16, quantize_qdq

    graphs = list(_quantisable(ctx, work, "int8"))
    settings = _choose_int8(ctx, work, graphs)
    for rec, spec, dims, feeds in graphs:
        name = prepared_name(rec, "int8")
        qdq32 = ctx.scratch / name  # Q/DQ with fp32 around it: an intermediate, not shipped
        q = quantize_qdq.quantize(ctx.fp32_dir / rec["file"], qdq32, feeds, settings=settings)
        conv = quantize_qdq.to_fp16(qdq32, ctx.staging / name, spec.name, work.ranges.get(rec["file"]))
        new = _prepared(
            rec,
            name,
            conv["files"],
            "int8",
            int8=q,
            opset=quantize_qdq.QDQ_FP16_OPSET,
            kept_fp32=len(conv["kept_fp32"]),
            fp16_matmul_share=round(fp16.fp16_share(ctx.staging / name), 3),
        )
        ctx.records.append(new)
        rows = _errors(ctx, rec, new, spec, dims, work.heldout.get(spec.name))
        work.rows += rows
        ctx.log(
            f"      {name}: {q['int8_layers']} int8 layers, {q['float_layers']} float, rel L2 {rows[-1]['rel_l2']:.2e}"
        )


def _fp8(ctx, work: _Work) -> None:
    """fp8 (E4M3) Q/DQ graphs of the graphs that get int8 (`quantize_fp8`), measured against fp32 with
    the int8 gates (`verify.TOLERANCES`). Which layers run fp8 is chosen first, by measurement on the
    unrolled denoiser (`_choose_fp8`), and applied to the one-step transformer alike (the K-step loop
    runs that one K times)."""
    from . import fp16, quantize_fp8

    graphs = list(_quantisable(ctx, work, "fp8"))
    settings, chosen_files = _choose_fp8(ctx, work, graphs)
    for rec, spec, dims, feeds in graphs:
        name = prepared_name(rec, "fp8")
        src = ctx.fp32_dir / rec["file"]
        if rec["file"] in chosen_files:  # the denoiser: the chosen candidate's graph, already made
            folder, q = chosen_files[rec["file"]]
            for f in q["files"]:
                shutil.move(str(folder / f), str(ctx.staging / f))
        else:
            q = quantize_fp8.quantize(src, ctx.staging / name, spec.name, feeds, work.ranges.get(rec["file"]), settings)
        new = _prepared(
            rec,
            name,
            q["files"],
            "fp8",
            fp8=q["fp8"],
            opset=quantize_fp8.OPSET,
            kept_fp32=len(q["kept_fp32"]),
            fp16_keep=q["keep"],
            fp16_matmul_share=round(fp16.fp16_share(ctx.staging / name), 3),
        )
        ctx.records.append(new)
        rows = _errors(ctx, rec, new, spec, dims, work.heldout.get(spec.name))
        work.rows += rows
        ctx.log(f"      {name}: {q['fp8']['fp8_layers']} fp8 layers, rel L2 {rows[-1]['rel_l2']:.2e}")
    shutil.rmtree(ctx.scratch / "fp8-candidates", ignore_errors=True)


def _choose_fp8(ctx, work: _Work, graphs: list) -> tuple:
    """The fp8 settings: every `quantize_fp8.CANDIDATES` entry (most fp8 MACs first; with and without fp8
    attention) made on the unrolled denoiser and measured against fp32 on the *calibration* trajectories
    (the gate measures the held-out ones after); the first within `SELECT_FRACTION` of the fp8 tolerance
    wins, else the one with the lowest error (`quantize_fp8.choose`; the gate decides). Every candidate's
    figures go to `build.fp8_choice` (issue #23).
    Returns (settings, {fp32 file: (folder, quantize record) of the chosen denoiser graph})."""
    from ...verify import tolerance
    from . import quantize_fp8

    loop = [g for g in graphs if g[0]["graph"].startswith("denoiser_lcm")]
    if not loop:
        return quantize_fp8.CANDIDATES[0], {}
    rec, spec, dims, feeds = loop[0]
    src, name = ctx.fp32_dir / rec["file"], prepared_name(rec, "fp8")
    trials = ctx.scratch / "fp8-candidates"
    limit = quantize_fp8.SELECT_FRACTION * tolerance(spec.name, Precision.FP8).rel_l2
    rows, made = [], {}
    for i, cand in enumerate(quantize_fp8.CANDIDATES):
        folder = trials / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        q = quantize_fp8.quantize(src, folder / name, spec.name, feeds, work.ranges.get(rec["file"]), cand)
        trial = _prepared(rec, name, q["files"], "fp8")
        err = _errors(ctx, rec, trial, spec, dims, feeds, prepared_dir=folder)[-1]
        rows.append(
            {
                "settings": dataclasses.asdict(cand),
                "fp8_layers": q["fp8"]["fp8_layers"],
                "attention_matmuls_fp8": q["fp8"].get("attention_matmuls_fp8", 0),
                "fp8_weight_share": round(quantize_fp8.fp8_weight_share(src, cand), 3),
                "rel_l2": err["rel_l2"],
            }
        )
        made[i] = (folder, q)
        ctx.log(f"      fp8 candidate {cand.name}: rel L2 {err['rel_l2']:.2e} on the calibration trajectories")
    chosen = quantize_fp8.choose([r["rel_l2"] for r in rows], limit)
    settings = quantize_fp8.CANDIDATES[chosen]
    ctx.build_info["fp8_choice"] = {
        "chosen": settings.name,
        "graph": rec["file"],
        "rule": f"first of quantize_fp8.CANDIDATES with rel L2 <= {quantize_fp8.SELECT_FRACTION} x the fp8 "
        f"tolerance ({limit:.2g}) on the calibration trajectories, else the lowest",
        "measured_on": f"{len(feeds)} calibration batches (not the held-out gate's)",
        "candidates": rows,
    }
    ctx.log(f"      fp8 chosen: {settings.name}")
    return settings, {rec["file"]: made[chosen]}


class _TwoFolders:
    """A runner over the fp32 graphs (in `fp32_dir`) and the prepared ones (in the staging folder)."""

    def __init__(
        self,
        fp32_dir: Path,
        staging: Path,
        prepared: set[str],
        simulated: dict | None = None,
        direct: dict | None = None,
    ):
        from ..onnxruntime.runner import OrtRunner

        self.fp32, self.prepared, self.files = OrtRunner(fp32_dir), OrtRunner(staging), prepared
        self.simulated = {f: OrtRunner(d) for f, d in (simulated or {}).items()}  # bf16: its simulation
        self.direct = direct or {}  # a T5 exported directly: its fp32 side (None) and prepared file

    def run(self, record, feeds):
        if record.details.get("direct_from") and None in self.direct:  # no fp32 graph: the streamed reference
            return self.direct[None].run(record, feeds)
        if record.file in self.direct:
            return self.direct[record.file].run(record, feeds)
        if record.file in self.simulated:
            return self.simulated[record.file].run(record, feeds)
        return (self.prepared if record.file in self.files else self.fp32).run(record, feeds)


def _end_to_end(ctx, work: _Work) -> None:
    from ...manifest import graph_record
    from ...runtime.pipeline import Pipeline
    from ...verify import end_to_end, gated_rows, pipeline_images

    base = _fp32_manifest(ctx, work)
    fp32 = [graph_record(r) for r in ctx.fp32_records]
    prepared = [graph_record(r) for r in ctx.records]
    runner = _TwoFolders(ctx.fp32_dir, ctx.staging, {r.file for r in prepared}, work.simulated, _direct_runners(ctx))
    want = pipeline_images(Pipeline(ctx.staging, dataclasses.replace(base, graphs=tuple(fp32)), runner))

    def case(records, precision: Precision, controlnet: bool) -> list[dict]:
        by_graph = {(r.graph, r.height, r.width): r for r in records}
        mixed = [by_graph.get((r.graph, r.height, r.width), r) for r in fp32]
        view = dataclasses.replace(base, graphs=tuple(mixed))
        rows = end_to_end(
            want,
            pipeline_images(Pipeline(ctx.staging, view, runner)),
            view,
            precision,
            controlnet,
            AGAINST,
            on_case=lambda n: ctx.log(f"      end to end {precision} {n}"),
        )
        graphs = sorted(r.file for r in mixed if r.precision == precision)
        return [{**r, "graphs": graphs} for r in rows]

    controlnet = ctx.model.controlnet is not None
    floats = (Precision.FP16, Precision.BF16, Precision.FP32)  # the bf16 text encoder of bf16 targets
    e2e = case([r for r in prepared if r.precision in floats], Precision.FP16, controlnet)
    for low, wanted in ((Precision.INT8, work.int8), (Precision.FP8, work.fp8)):
        if not wanted:  # int8 (fp8) where there is such a graph, fp16 elsewhere: what that engine set runs
            continue
        low_graphs = {r.graph for r in prepared if r.precision == low}
        mix = [r for r in prepared if r.precision == low or (r.precision in floats and r.graph not in low_graphs)]
        e2e += case(mix, low, controlnet and low == Precision.INT8)  # fp8: no ControlNet graphs yet
    graphs = work.fp32_rows + work.rows
    ctx.parity = Parity(
        ok=all(r["ok"] for r in gated_rows(graphs) + e2e),
        graphs=tuple(graphs),
        end_to_end=tuple(e2e),
        measured_with=_versions(ctx),
        note="prepared graphs in onnxruntime on the CPU against the fp32 graphs, the fp32 graphs "
        "against the PyTorch reference; engines are not measured by the build",
    )
    _gate_now(
        ctx,
        ctx.parity,
        "precision check failed (build with --trt-fp16-only to ship fp16 graphs only)"
        if work.int8 or work.fp8
        else "precision check failed",
    )


def _direct_runners(ctx) -> dict:
    """{None: the streamed reference, prepared file: its chained runner} for a T5 exported directly (the
    end-to-end pipelines' text encoder: fp32 has no graph, the prepared one runs piece by piece)."""
    from . import t5_blockwise

    out = {}
    for r in ctx.records:
        if r.get("exported_directly"):
            n = len(ctx.model.text_encoder.model.encoder.block)
            path = ctx.staging / r["file"]
            out[r["file"]] = t5_blockwise.ChainedRunner(path, r["precision"], n, ctx.scratch / "t5-pieces")
            out[None] = t5_blockwise.ReferenceRunner(ctx.model.text_encoder)
    return out


#: The lcm_update graph vs the reference LCM step: the same affine step in fp32 with the coefficients
#: folded in float64 first, so they differ by a few fp32 roundings (tests/test_tensorrt_loop.py: 1e-5).
LCM_UPDATE_TOLERANCE = 1e-5


def _lcm_update(ctx) -> None:
    """Write `lcm_update_<H>x<W>.fp32.onnx` per bucket into the bundle and check it (module docstring, 6.)."""
    import onnx
    import onnxruntime as ort
    import torch

    from reference.sampling import lcm_step
    from reference.schedules import alphas_cumprod

    from ...export.exporter import io_signature, model_dims
    from ...graphs import LCM_UPDATE, OPSET
    from ...verify import Tolerance, _row
    from .loop import lcm_update_model, record_coefficients

    lcm = ctx.assemble(records=ctx.fp32_records, folder=ctx.fp32_dir).lcm
    ts, coef = list(lcm.timesteps), record_coefficients(lcm)  # what the runtime uses (the manifest's values)
    acp = alphas_cumprod().double()  # the reference schedule, in full
    tol = Tolerance(LCM_UPDATE_TOLERANCE, LCM_UPDATE_TOLERANCE, math.inf, LCM_UPDATE.why)
    rows = []
    for h, w in ctx.resolutions:
        dims = model_dims(ctx.model, h, w, ctx.request.steps)
        name = prepared_name({"file": LCM_UPDATE.filename(h, w)}, "fp32")  # lcm_update_<H>x<W>.fp32.onnx
        onnx.save(lcm_update_model(LATENT_CHANNELS, dims.h, dims.w), str(ctx.staging / name))
        sess = ort.InferenceSession(str(ctx.staging / name), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1234)
        x, eps, noise = (rng.standard_normal((2, LATENT_CHANNELS, dims.h, dims.w)).astype(np.float32) for _ in range(3))
        pairs = []
        for k, t in enumerate(ts):
            last = k == len(ts) - 1
            nxt, n = (None, None) if last else (int(ts[k + 1]), torch.from_numpy(noise))
            want = lcm_step(torch.from_numpy(eps), torch.from_numpy(x), int(t), nxt, acp, n)[0]
            got = sess.run(None, {"latents": x, "noise_pred": eps, "step_noise": noise, "coef": coef[k]})[0]
            pairs.append((got, want.double().numpy()))
        row = _row(LCM_UPDATE.name, LCM_UPDATE.output_names[0], name, Precision.FP32, pairs, tol, batch=2)
        rows.append({**row, "inputs": f"random latents, every step of {ts}", "against": "reference.sampling.lcm_step"})
        ctx.records.append(
            {
                "graph": LCM_UPDATE.name,
                "file": name,
                "files": [name],
                "precision": "fp32",
                "height": h,
                "width": w,
                "opset": OPSET,
                **io_signature(LCM_UPDATE, dims),
                "bytes": (ctx.staging / name).stat().st_size,
            }
        )
        ctx.log(f"      {name}: rel L2 {row['rel_l2']:.2e} vs the reference LCM step")
    ctx.parity = dataclasses.replace(
        ctx.parity, ok=ctx.parity.ok and all(r["ok"] for r in rows), graphs=ctx.parity.graphs + tuple(rows)
    )
    _gate_now(ctx, ctx.parity, "the lcm_update graph does not match the reference LCM step")


def _versions(ctx) -> dict:
    import onnxruntime

    return {
        "onnxruntime": onnxruntime.__version__,
        **{k: ctx.versions[k] for k in ("torch", "onnxconverter_common") if k in ctx.versions},
    }


def _check(ctx) -> None:
    from ...manifest import graph_record
    from .check import check_file, format_reports
    from .compile import profiles_for

    profiles = profiles_for(ctx.target, ctx.records)
    ctx.records = [{**r, "runtime": {**r.get("runtime", {}), "profile": profiles[r["file"]]}} for r in ctx.records]
    reports = [check_file(ctx.staging / r["file"], ctx.target, graph_record(r)) for r in ctx.records]
    ctx.log(format_reports(reports, ctx.target))
    if not all(r.ok for r in reports):
        raise GateFailed(
            f"the graphs would not build for {ctx.target.name} (problems listed above); nothing was "
            f"installed at {ctx.out}"
        )
    ctx.build_info["check"] = {"ok": True, "files": {r.file: r.ops for r in reports}}


# -- checks before the build, after install, and on re-measuring ----------------------------------------------
def check_request(backend, ctx) -> None:
    target = ctx.target
    if not ctx.request.verify:
        raise UserError(
            f"{target.name}: TensorRT bundles are always verified (fp16/int8 graphs ship only with "
            "their measured error); use `pixart-export build`"
        )
    if ctx.options.get("int8") and Precision.INT8 not in target.trt.prepared:
        raise UserError(
            f"{target.name} ({target.trt.arch}) has no int8 in this toolchain; build it with --trt-fp16-only"
        )
    p = target.trt.profile
    for h, w in ctx.resolutions:
        if not (p.min_px <= h <= p.max_px and p.min_px <= w <= p.max_px):
            raise UserError(f"resolution {h}x{w} is outside {target.name}'s profile ({p.min_px}-{p.max_px} px)")


def finish(backend, target, folder: Path, manifest: Manifest, log) -> Manifest:
    """Compile the installed bundle when this host has TensorRT and the target GPU; else say how."""
    from .compile import compile_bundle, host_can_compile

    ready, why = host_can_compile(target)
    if not ready:
        log(
            f"bundle ready: {folder} (graphs verified on CPU, checked for {target.name}). Engines were NOT built: "
            f"{why}. On a {target.trt.arch} host with TensorRT, run:\n    {compile_command(folder)}"
        )
        return manifest
    log(f"compile engines on this host ({why})")
    return compile_bundle(folder, target, log=log)


def remeasure(backend, folder: Path, manifest: Manifest, model, log) -> Parity:
    """`pixart-export parity` on a compiled folder (on its GPU host): every engine and the whole pipeline
    against the reference. A bundle is verified by `build` only (its graphs are for another device)."""
    from ...runtime.pipeline import Pipeline
    from ...verify import measure

    if manifest.status != "compiled":
        raise UserError(
            f"{folder}: a TensorRT bundle is verified by `build` (its fp16/int8 graphs against the fp32 "
            f"ones, on the CPU); compile it on a {manifest.device.arch} host (`{compile_command(folder)}`) "
            "to measure its engines"
        )
    runner = backend.runner(folder, manifest)
    return measure(
        model, runner, Pipeline(folder, manifest, runner), manifest, log, {"tensorrt": backend.installed_version()}
    )
