"""The `Target` registry: every row of ARCHITECTURE.md's target table, and which ones this build makes.

A target names a backend, a device and its precisions. `build --target NAME` looks the target up
here and hands it to the builder registered for its backend; a target whose builder is not written
yet says so in one line. Later issues (OpenVINO, TensorRT) add a builder and flip `implemented`.
Torch-free and backend-free: `pixart-export targets` lists them on any host.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # the runtime module that loads it: "onnxruntime" | "openvino" | "tensorrt"
    device: str
    precisions: tuple[str, ...]
    notes: str = ""
    implemented: bool = False


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("ort-cpu", "onnxruntime", "any CPU", ("fp32",), "the parity baseline: the exported graphs as they are",
           implemented=True),
    Target("ov-cpu", "openvino", "x86 CPU", ("fp32",),
           "inference precision set explicitly: OpenVINO picks bf16 by itself where the CPU has it"),
    Target("ov-cpu-int8", "openvino", "x86 CPU", ("int8 transformer (NNCF)", "int8-weight T5", "fp32 VAE"),
           "gains need VNNI/AMX; AVX2-only CPUs gain mostly size"),
    Target("trt-t4", "tensorrt", "sm_75", ("fp16", "int8 (explicit Q/DQ)")),
    Target("trt-v100", "tensorrt", "sm_70", ("fp16",), "TensorRT <= 10.4 (Volta dropped in 10.5)"),
    Target("trt-a100", "tensorrt", "sm_80", ("fp16", "bf16", "int8")),
    Target("trt-h100", "tensorrt", "sm_90", ("fp16", "int8", "fp8"), "fp8 needs sm >= 8.9"),
]}


def get_target(name: str) -> Target:
    """The target called `name`, or a UserError listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


def buildable_target(name: str) -> Target:
    """Like `get_target`, refusing targets whose builder does not exist yet."""
    target = get_target(name)
    if not target.implemented:
        ready = ", ".join(t.name for t in TARGETS.values() if t.implemented)
        raise UserError(f"target {name!r} ({target.backend}, {target.device}) is not implemented yet in this "
                        f"build; available: {ready}")
    return target
