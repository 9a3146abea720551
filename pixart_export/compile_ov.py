"""Compile stage of the OpenVINO targets: fp32 ONNX graphs -> OpenVINO IR (`<graph>.xml` + `.bin`).

`ov.convert_model` reads each exported ONNX file (the same files the ort-cpu target ships, so the
graph contracts and names of `graphs.py` carry over unchanged, dynamic batch included) and
`ov.save_model` writes the IR with `compress_to_fp16=False`: OpenVINO's default stores weights as
fp16, which would silently make the "fp32" target an fp16-weight one.

Precision at run time is not in the IR but in the compile configuration: OpenVINO's CPU plugin runs
in bf16 by itself on CPUs with AVX-512 BF16 or AMX (`INFERENCE_PRECISION_HINT` defaults to bf16
there) and measured 10x the error of PyTorch's bf16 autocast on PixArt. So every graph's config is
chosen by the build, written into the manifest per graph file, and applied by the runtime as it
is; `ov-cpu` always says `f32`.

Torch-free: the runtime compiles models with `compile_config` / `compile_graph` from here.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

#: CPU ISA flags that decide int8/bf16 speed, as /proc/cpuinfo spells them.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def openvino_version() -> str:
    """The installed OpenVINO package version (`2026.4.1`), comparable with `manifest._version_tuple`."""
    return importlib.metadata.version("openvino")


def cpu_info() -> dict:
    """CPU model, logical cores and the ISA extensions that matter here (Linux /proc/cpuinfo)."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "isa": [f for f in ISA_FLAGS if f in flags]}


def has_bf16(info: dict | None = None) -> bool:
    isa = (info or cpu_info())["isa"]
    return "avx512_bf16" in isa or "amx_bf16" in isa


def convert_graph(onnx_path: Path, xml_path: Path) -> list[str]:
    """ONNX file -> IR beside `xml_path`; returns the file names written (xml, bin)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    del model
    return [xml_path.name, xml_path.with_suffix(".bin").name]


def ir_name(onnx_file: str) -> str:
    return Path(onnx_file).with_suffix(".xml").name


def compile_config(precision: str = "f32", threads: int | None = None) -> dict:
    """The CPU plugin properties a graph is compiled with. `precision`: "f32" | "bf16"."""
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def runnable_precision(precision: str, info: dict | None = None) -> str:
    """bf16 only where the CPU has native bf16; elsewhere OpenVINO would emulate it slowly, so f32."""
    return precision if precision != "bf16" or has_bf16(info) else "f32"


def compile_graph(source, config: dict, core=None):
    """`ov.CompiledModel` on the CPU with `config`, from an IR (or ONNX) path or an `ov.Model`."""
    import openvino as ov

    core = core or ov.Core()
    return core.compile_model(source if isinstance(source, ov.Model) else str(source), "CPU", config)


def run_compiled(compiled, feeds: dict) -> list:
    """Outputs of a compiled model as numpy arrays, in the model's output order."""
    request = compiled.create_infer_request()
    request.infer(feeds)
    return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
