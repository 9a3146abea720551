"""Build stages and verification of the OpenVINO targets.

- convert: each exported fp32 ONNX graph -> OpenVINO IR (`<graph>.xml` + `.bin`) with
  `ov.convert_model` (the same files the ort-cpu target ships, so the graph contracts and names of
  `graphs.py` carry over unchanged, dynamic batch included) and `ov.save_model(...,
  compress_to_fp16=False)`: OpenVINO's default stores weights as fp16, which would silently make the
  "fp32" target an fp16-weight one. Every record gets its compile properties in
  `runtime["config"]`, `INFERENCE_PRECISION_HINT=f32` (OpenVINO would pick bf16 by itself on CPUs
  with it); the runner applies them as recorded.
- int8 (`ov-cpu-int8` only): NNCF, calibrated on the reference pipeline, settings chosen by
  measurement (`quantize.py`); the quantised graphs' records say what was chosen. With a ControlNet,
  its `controlnet` and `denoiser_lcm{K}_controlnet` graphs are quantised too (calibrated on control
  scenes, `calibration.control_scenes`).
- verify: `ov-cpu` as ort-cpu (`verify.measure`: every graph and the whole pipeline against the
  reference, run through OpenVINO with the very configuration the runtime uses); `ov-cpu-int8`: the
  graph rows and the image quality gate over held-out prompt/seed pairs (`verify.quality_gate`), no
  end-to-end rows (the gate is the end-to-end check of an int8 engine); with a ControlNet also the
  control gate (`verify.control_gate`: the same quality thresholds over fixed control scenes, and
  int8 vs fp32 control IoU within `verify.CONTROL_IOU_TOLERANCE` where the model is the miniature whose
  domain the scenes are, `verify.scenes_domain`; recorded as not applicable, with the reason, for
  other models), in `parity.quality["controlnet"]`.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from ...backends.base import Stage
from ...manifest import Manifest, Parity, Precision


def ir_name(onnx_file: str) -> str:
    return Path(onnx_file).with_suffix(".xml").name


def convert_graph(onnx_path: Path, xml_path: Path) -> list[str]:
    """ONNX file -> IR beside `xml_path` (fp32 weights); returns the file names written (xml, bin)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    del model
    return [xml_path.name, xml_path.with_suffix(".bin").name]


def convert_direct(t5_dir: Path, xml_path: Path, signature: dict, meter=None) -> list[str]:
    """A T5 too large for the fp32 export -> IR with bf16 weights computed in fp32 (`export/t5_direct.py`),
    named and shaped as the `text_encoder` contract says; the int8 stage then compresses its weights.

    Runs in a child process: the bf16 model (8.9 GiB for T5-XXL; `ov.convert_model` shares its tensors
    rather than copying them) is not returned to the OS by the tracer and converter when they are done
    with it (measured: the build process stayed at +9 GiB after the conversion and reached 22.9 GiB
    converting the next graph); a child's memory goes back when it exits."""
    import concurrent.futures
    import multiprocessing

    from ...resources import current_rss, release_freed_memory

    release_freed_memory()  # what this process holds while the child runs is what it still uses
    parent = current_rss()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        files, child_peak = pool.submit(_convert_direct, Path(t5_dir), Path(xml_path), signature).result()
    if meter is not None:  # the stage's figure: parent + child at once (`StageMeter.child_ran`)
        meter.child_ran(child_peak, parent)
    return files


def _convert_direct(t5_dir: Path, xml_path: Path, signature: dict) -> tuple[list[str], int]:
    """In the child: convert, save; (files, this process's peak RSS)."""
    from ...resources import _vm_hwm

    files = _convert_in_process(t5_dir, xml_path, signature)
    return files, _vm_hwm() or 0


def _convert_in_process(t5_dir: Path, xml_path: Path, signature: dict) -> list[str]:
    import openvino as ov
    import torch

    from ...export.t5_direct import load_bf16_weights
    from ...export.wrappers import TextEncoderGraph

    (ids, mask), (out,) = signature["inputs"], signature["outputs"]
    length = ids["shape"][1]
    example = {
        ids["name"]: torch.zeros(1, length, dtype=torch.int64),
        mask["name"]: torch.ones(1, length, dtype=torch.int64),
    }
    module = TextEncoderGraph(load_bf16_weights(t5_dir)).eval()
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example, input=[ov.PartialShape([-1, length])] * 2)
    for port, spec in zip(model.inputs, (ids, mask)):
        port.get_tensor().set_names({spec["name"]})
    model.outputs[0].get_tensor().set_names({out["name"]})
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    del model, module
    return [xml_path.name, xml_path.with_suffix(".bin").name]


def stages(backend, ctx) -> list[Stage]:
    version = backend.installed_version()
    out = [Stage(f"convert to OpenVINO IR (fp32 weights), openvino {version}", lambda c: _convert(backend, c))]
    if backend.int8:
        out.append(Stage("int8: calibrate on the reference pipeline, NNCF quantise, measure", _quantise))
        out.append(Stage("VAE decoder precision: fp32, bf16, int8 measured, the fastest that passes", _decoder))
    return out


def _decoder(ctx) -> None:
    from .decoder import stage

    stage(ctx)


def _ir_dir(backend, ctx) -> Path:
    """Where the fp32 IR goes: straight into the folder for ov-cpu; for int8 into scratch (the quantiser's
    reference), moved into the folder where a graph stays fp32."""
    return ctx.scratch / "ir" if backend.int8 else ctx.staging


def _convert(backend, ctx) -> None:
    from .runner import compile_config

    ir_dir = _ir_dir(backend, ctx)
    ir_dir.mkdir(parents=True, exist_ok=True)
    ctx.records = []
    for fp32 in ctx.fp32_records:
        rec = copy.deepcopy(fp32)
        if rec.get("direct_from"):  # no fp32 ONNX: converted from the weights (`exporter.direct_record`)
            xml = f"{rec['graph']}.xml"
            ctx.log(f"      {rec['direct_from']} (bf16 weights, fp32 compute) -> {xml}")
            meter = getattr(ctx, "stage_meter", None)
            rec["file"], rec["files"] = xml, convert_direct(Path(rec["direct_from"]), ir_dir / xml, rec, meter)
            rec["source_weights"] = "bf16"
            rec.pop("direct_from")
        else:
            xml = ir_name(rec["file"])
            ctx.log(f"      {rec['file']} -> {xml}")
            rec["onnx_file"] = rec["file"]
            rec["file"], rec["files"] = xml, convert_graph(ctx.fp32_dir / rec["onnx_file"], ir_dir / xml)
        rec["precision"] = Precision.FP32.value
        rec["runtime"] = {"config": compile_config("f32")}
        ctx.records.append(rec)
    # the exported ONNX is not shipped and can be large (XL's T5: ~19 GB): free it once converted
    if ctx.scratch in Path(ctx.fp32_dir).parents:
        shutil.rmtree(ctx.fp32_dir, ignore_errors=True)
    if not backend.int8:
        _sizes(ctx)


def _quantise(ctx) -> None:
    from .quantize import choose_and_quantize

    ir_dir = ctx.scratch / "ir"  # `_ir_dir` of an int8 backend
    ctx.quantisation = choose_and_quantize(ctx.staging, ir_dir, ctx.records, ctx.model, ctx.options, ctx.log)
    ctx.default_precision = Precision.INT8  # what `run` uses unless told otherwise
    for rec in ctx.records:  # graphs that stay fp32 (the VAE) ship as converted
        for name in rec["files"]:
            if not (ctx.staging / name).exists():
                os.replace(ir_dir / name, ctx.staging / name)
    _sizes(ctx)


def _sizes(ctx) -> None:
    for rec in ctx.records:
        rec["bytes"] = sum((ctx.staging / f).stat().st_size for f in rec["files"])


# -- verification ----------------------------------------------------------------------------------------------
def _versions(backend) -> dict:
    import torch

    return {"openvino": backend.installed_version(), "torch": torch.__version__}


def verify(backend, ctx) -> Parity:
    from .options import gate_from

    return _measure(
        backend, ctx.staging, ctx.assemble(), ctx.model, ctx.log, gate_from(ctx.options) if backend.int8 else None
    )


def remeasure(backend, folder: Path, manifest: Manifest, model, log) -> Parity:
    """`pixart-export parity` on an OpenVINO folder: the build's measurement again (an int8 folder with
    the quality-gate thresholds it was built with)."""
    from ...verify import QualityGate

    gate = None
    if backend.int8:
        thresholds = (manifest.parity.quality or {}).get("thresholds") if manifest.parity else None
        gate = QualityGate(**thresholds) if thresholds else QualityGate()
    return _measure(backend, folder, manifest, model, log, gate)


def _measure(backend, folder: Path, manifest: Manifest, model, log, gate) -> Parity:
    from ...calibration import HELD_OUT_PROMPTS, read_prompts
    from ...runtime.pipeline import Pipeline
    from ...verify import (
        control_gate,
        graph_parity,
        measure,
        pipeline_images,
        quality_gate,
        reference_images,
        scenes_domain,
    )

    runner = backend.runner(folder, manifest)
    pipeline = Pipeline(folder, manifest, runner)
    if gate is None:
        return measure(model, runner, pipeline, manifest, log, _versions(backend))
    graphs = graph_parity(model, runner, manifest, on_graph=lambda n: log(f"      {n}"))
    reference, engine = reference_images(model, manifest.steps), pipeline_images(pipeline)
    resolution = tuple(manifest.resolutions[0])
    quality = quality_gate(reference, engine, read_prompts(HELD_OUT_PROMPTS), gate, resolution, log)
    if manifest.model.controlnet:
        quality["controlnet"] = control_gate(reference, engine, gate, resolution, log, scenes_domain(model))
    return Parity(
        ok=all(r["ok"] for r in graphs) and quality["ok"] and quality.get("controlnet", {"ok": True})["ok"],
        graphs=tuple(graphs),
        end_to_end=(),
        quality=quality,
        measured_with=_versions(backend),
        note="int8: images are gated by the quality figures (held-out prompt/seed pairs against the "
        "fp32 reference), not by end-to-end PSNR against it",
    )


def check_request(backend, ctx) -> None:
    """Refuse what this backend cannot build: a non-x86 host; for int8, bad options."""
    import platform

    from ...errors import UserError
    from .runner import is_x86

    if not is_x86():
        raise UserError(
            f"{ctx.target.name} is built and measured on the x86 CPU it is for; this host is {platform.machine()}"
        )
    if backend.int8:
        from .options import check

        check(ctx.options)
