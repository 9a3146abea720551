"""Build stages and verification of the ONNX Runtime targets.

ort-cpu ships the exported fp32 graphs, each replaced by onnxruntime's basic offline optimisation
only where that measured faster (`optimize.py`), and verifies every graph and the whole pipeline
against the PyTorch reference (`verify.measure`). ort-cuda ships the TensorRT preparation's fp16
graphs and verifies them as TensorRT's are: against the fp32 graphs in ONNX Runtime on the CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ...backends.base import Stage
from ...manifest import Manifest, Parity


def stages(backend, ctx) -> list[Stage]:
    if backend.device_kind == "cuda":
        from ..tensorrt.prepare import fp16_only_stages

        return fp16_only_stages(ctx)
    if ctx.options.get("optimise", True):
        return [Stage("onnxruntime offline optimisation (kept only where measured faster)", _optimise)]
    return [Stage("ship the fp32 graphs as exported (optimisation off)", _ship_fp32)]


def _ship_fp32(ctx) -> None:
    from ...engine_folder import copy_graph_files

    ctx.records = [copy.deepcopy(r) for r in ctx.fp32_records]
    for rec in ctx.records:
        copy_graph_files(rec, ctx.fp32_dir, ctx.staging)


def _optimise(ctx) -> None:
    from .optimize import optimise_graphs

    _ship_fp32(ctx)
    decisions = optimise_graphs(ctx.staging, ctx.records, on_graph=lambda n: ctx.log(f"      {n}"))
    for d in decisions:
        ctx.log(f"      {d['file']}: {d['reason']}")
    ctx.build_info["optimisation"] = decisions


def _versions() -> dict:
    import onnxruntime
    import torch

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def verify(backend, ctx) -> Parity:
    if backend.device_kind == "cuda":
        from ..tensorrt.prepare import precision_verify

        return precision_verify(ctx)
    return _measure(backend, ctx.staging, ctx.assemble(), ctx.model, ctx.log)


def remeasure(backend, folder: Path, manifest: Manifest, model, log) -> Parity:
    if backend.device_kind == "cuda":
        from ...errors import UserError

        raise UserError(
            "ort-cuda folders are verified by `build` (fp16 vs fp32 graphs on the CPU); re-measuring "
            "needs the fp32 graphs: build --target ort-cpu and compare with it"
        )
    return _measure(backend, folder, manifest, model, log)


def _measure(backend, folder: Path, manifest: Manifest, model, log) -> Parity:
    from ...runtime.pipeline import Pipeline
    from ...verify import measure

    runner = backend.runner(folder, manifest)
    return measure(model, runner, Pipeline(folder, manifest, runner), manifest, log, _versions())
