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
class TrtProfile:
    """TensorRT optimisation profile limits of a target: batch (min, opt, max) and the image sizes
    (pixels, each side) an engine may be built for. Latent size is static per resolution bucket
    (graphs.py), so the profile's only dynamic axis is the batch."""

    batch: tuple[int, int, int] = (1, 1, 4)
    min_px: int = 128
    max_px: int = 1024


@dataclass(frozen=True)
class TrtSpec:
    """What a TensorRT target needs beyond the table row (issue #6; used by build_trt/trt_check/compile_trt).

    `sm`: compute capability x10 (75 = sm_75). `tensorrt`: the TensorRT versions (inclusive range, None =
    open) that still build for this architecture. `prepared`: the precisions a bundle carries as graphs.
    """

    sm: int
    tensorrt: tuple[str, str | None]
    prepared: tuple[str, ...]
    profile: TrtProfile = TrtProfile()

    @property
    def arch(self) -> str:
        return f"sm_{self.sm}"


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # the runtime module that loads it: "onnxruntime" | "openvino" | "tensorrt"
    device: str
    precisions: tuple[str, ...]
    notes: str = ""
    implemented: bool = False
    trt: TrtSpec | None = None  # TensorRT targets only


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("ort-cpu", "onnxruntime", "any CPU", ("fp32",), "the parity baseline: the exported graphs as they are",
           implemented=True),
    Target("ov-cpu", "openvino", "x86 CPU", ("fp32",),
           "inference precision set explicitly: OpenVINO picks bf16 by itself where the CPU has it",
           implemented=True),
    Target("ov-cpu-int8", "openvino", "x86 CPU", ("int8 transformer (NNCF)", "int8-weight T5", "fp32 VAE"),
           "gains need VNNI/AMX; AVX2-only CPUs gain mostly size", implemented=True),
    # TensorRT: precision lives in the graphs (fp16 types, Q/DQ) because TensorRT 11 builds strongly
    # typed networks only; the bundle carries `prepared` precisions, the rest are what the GPU supports.
    # Batch limits by memory: a T4 has 16 GB, a V100 16/32 GB, A100/H100 40-80 GB.
    Target("trt-t4", "tensorrt", "sm_75", ("fp16", "int8"), "T4 (Turing); int8 as explicit Q/DQ",
           implemented=True, trt=TrtSpec(75, ("10.0", None), ("fp16", "int8"), TrtProfile((1, 1, 2)))),
    Target("trt-v100", "tensorrt", "sm_70", ("fp16",), "TensorRT <= 10.4 (Volta dropped in 10.5); no int8 "
           "tensor cores", implemented=True, trt=TrtSpec(70, ("10.0", "10.4"), ("fp16",), TrtProfile((1, 1, 4)))),
    Target("trt-a100", "tensorrt", "sm_80", ("fp16", "bf16", "int8"), "A100 (Ampere)",
           implemented=True, trt=TrtSpec(80, ("10.0", None), ("fp16", "int8"), TrtProfile((1, 1, 8)))),
    Target("trt-h100", "tensorrt", "sm_90", ("fp16", "int8", "fp8"), "fp8 needs sm >= 8.9 (not prepared yet)",
           implemented=True, trt=TrtSpec(90, ("10.0", None), ("fp16", "int8"), TrtProfile((1, 1, 8)))),
]}

#: fp8 tensor cores exist from compute capability 8.9 (Ada) on.
FP8_MIN_SM = 89


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
