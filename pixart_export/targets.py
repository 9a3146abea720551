"""The `Target` registry: every row of ARCHITECTURE.md's target table. A target holds its backend object
(not a name), so `build`, `run`, `parity` and the manifest checks ask the target's backend and never
branch on a backend's name.

Torch-free and backend-free: the backend objects import their heavy libraries lazily, so
`pixart-export targets` lists every row on any host.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends.onnxruntime import OnnxRuntime
from .backends.openvino import OpenVino
from .backends.tensorrt import TensorRT
from .errors import UserError
from .manifest import SEAL, EngineError, Manifest, Precision, check_runnable, read_manifest


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
    """What a TensorRT target needs beyond the table row.

    `sm`: compute capability x10 (75 = sm_75). `tensorrt`: the TensorRT versions (inclusive range, None =
    open) that still build for this architecture. `prepared`: the precisions a bundle carries as graphs.
    `cuda`: the CUDA majors with a TensorRT in that range (the `tensorrt-cu<N>` wheels; tensorrt-cu13
    starts at 10.13, so a range ending at 10.4 is CUDA 12 only); `compile` refuses other stacks.
    `text_encoder`: the T5 precision plan (backends/tensorrt/t5_plan.py: fp16 with the overflow layers
    fp32 where the card has 16 GB and no bf16, bf16 where it has bf16); `memory_gib`: the usable memory of
    the smallest card of the row, which the plan's T5-XXL estimate is checked against.
    """

    sm: int
    tensorrt: tuple[str, str | None]
    prepared: tuple[Precision, ...]
    profile: TrtProfile = TrtProfile()
    cuda: tuple[int, ...] = (12, 13)
    text_encoder: Precision = Precision.FP16
    memory_gib: float = 15.0

    @property
    def arch(self) -> str:
        return f"sm_{self.sm}"


@dataclass(frozen=True)
class Target:
    name: str
    backend: object  # a `backends.base.Backend`
    device: str
    precisions: tuple[str, ...]
    notes: str = ""
    verified: str = "CPU"  # where its figures were measured: "CPU" (CI), "GPU only" (a GPU host)
    trt: TrtSpec | None = None  # TensorRT targets only


ORT_CPU = OnnxRuntime("cpu")
ORT_CUDA = OnnxRuntime("cuda")
OPENVINO = OpenVino(int8=False)
OPENVINO_INT8 = OpenVino(int8=True)
TENSORRT = TensorRT()

#: Where the TensorRT rows' figures are measured: graphs on the CPU (CI), engines on a GPU host only.
TRT_VERIFIED = "CPU (graphs); engines on GPU only"
FP16_INT8 = (Precision.FP16, Precision.INT8)


def _trt(
    name: str,
    sm: int,
    tensorrt: tuple,
    prepared: tuple,
    batch: tuple,
    precisions: tuple,
    notes: str,
    cuda: tuple = (12, 13),
    text_encoder: Precision = Precision.FP16,
    memory_gib: float = 15.0,
):
    """A TensorRT row: device sm_<sm>, the TensorRT range (and CUDA majors) that still build for it, what a
    bundle carries, the text encoder's precision plan and the card's usable memory."""
    spec = TrtSpec(sm, tensorrt, prepared, TrtProfile(batch), cuda, text_encoder, memory_gib)
    return Target(name, TENSORRT, spec.arch, precisions, notes, verified=TRT_VERIFIED, trt=spec)


_ROWS = [
    Target("ort-cpu", ORT_CPU, "any CPU", ("fp32",), "the parity baseline: the exported graphs as they are"),
    Target(
        "ort-cuda",
        ORT_CUDA,
        "NVIDIA GPU",
        ("fp16",),
        "onnxruntime-gpu's CUDA execution provider on fp16 graphs (the TensorRT fp16 preparation)",
        verified="GPU only",
    ),
    Target(
        "ov-cpu",
        OPENVINO,
        "x86 CPU",
        ("fp32",),
        "inference precision set explicitly: OpenVINO picks bf16 by itself where the CPU has it",
    ),
    Target(
        "ov-cpu-int8",
        OPENVINO_INT8,
        "x86 CPU",
        ("int8 transformer (NNCF)", "int8-weight T5", "fp32 VAE"),
        "gains need VNNI/AMX; AVX2-only CPUs gain mostly size",
    ),
    # TensorRT: precision lives in the graphs (fp16 types, Q/DQ) because TensorRT 11 builds strongly
    # typed networks only; the bundle carries `prepared` precisions, the rest are what the GPU supports.
    # Batch limits by memory: a T4 has 16 GB, a V100 16/32 GB, A100/H100 40-80 GB.
    # Usable memory (nvidia-smi): T4 15360 MiB, V100-16GB 16160 MiB, A100-40GB 40960 MiB, H100-80GB 81559 MiB.
    _trt(
        "trt-t4",
        75,
        ("10.0", None),
        FP16_INT8,
        (1, 1, 2),
        ("fp16", "int8"),
        "T4 (Turing); int8 as explicit Q/DQ; T5 fp16, its `wo` fp32",
    ),
    _trt(
        "trt-v100",
        70,
        ("10.0", "10.4"),
        (Precision.FP16,),
        (1, 1, 4),
        ("fp16",),
        "TensorRT <= 10.4 on CUDA 12 (Volta dropped in 10.5); no int8 tensor cores; T5 fp16, its `wo` fp32",
        cuda=(12,),
        memory_gib=15.7,
    ),
    _trt(
        "trt-a100",
        80,
        ("10.0", None),
        FP16_INT8,
        (1, 1, 8),
        ("fp16", "bf16", "int8"),
        "A100 (Ampere); T5 in bf16",
        text_encoder=Precision.BF16,
        memory_gib=40.0,
    ),
    _trt(
        "trt-h100",
        90,
        ("10.0", None),
        (*FP16_INT8, Precision.FP8),
        (1, 1, 8),
        ("fp16", "bf16", "int8", "fp8"),
        "fp8 needs sm >= 8.9: E4M3 Q/DQ graphs prepared beside int8; T5 in bf16",
        text_encoder=Precision.BF16,
        memory_gib=79.6,
    ),
]
TARGETS: dict[str, Target] = {t.name: t for t in _ROWS}


def get_target(name: str) -> Target:
    """The target called `name`, or a UserError listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


def backends() -> list:
    """Every distinct backend object of the registry, in table order."""
    out: list = []
    for t in TARGETS.values():
        if all(t.backend is not b for b in out):
            out.append(t.backend)
    return out


def read_engine(folder) -> tuple[Manifest, Target]:
    """Read an engine folder's manifest (validated) and check it against the registry: a target this
    version knows, served by the backend the manifest names, in a status that backend writes."""
    source = f"{folder}/manifest.json"
    manifest = read_manifest(folder)
    target = TARGETS.get(manifest.target)
    if target is None:
        raise EngineError(
            f"{source}: target {manifest.target!r} is unknown to this pixart-export "
            f"(known: {', '.join(TARGETS)}); rebuild the engine"
        )
    if target.backend.name != manifest.backend.name:
        raise EngineError(
            f"{source}: target {manifest.target} runs on {target.backend.name}, but the manifest "
            f"says backend {manifest.backend.name!r}; the folder was edited or is corrupt: rebuild it"
        )
    measured = manifest.parity.measured_with if manifest.parity is not None else {}
    verified = (measured.get("target"), measured.get("backend"))
    if manifest.parity is not None and verified != (manifest.target, manifest.backend.name):
        raise EngineError(
            f"{source}: says target {manifest.target} on {manifest.backend.name}, but its parity was "
            f"verified for {verified[0]} on {verified[1]}; the folder was edited: rebuild it"
        )
    sealed = manifest.build.get(SEAL)
    sealed = (sealed.get("target"), sealed.get("backend")) if isinstance(sealed, dict) else (None, None)
    if sealed != (manifest.target, manifest.backend.name):
        raise EngineError(
            f"{source}: says target {manifest.target} on {manifest.backend.name}, but build.{SEAL} says "
            f"{sealed[0]} on {sealed[1]}; the folder was edited or written by an older pixart-export: rebuild it"
        )
    check_runtime_settings(manifest, target.backend, source)
    if manifest.status not in target.backend.statuses:
        raise EngineError(
            f"{source}: status {manifest.status!r} is not one of {', '.join(target.backend.statuses)} "
            f"for {manifest.target}; rebuild the engine"
        )
    check_runnable(manifest, source)
    return manifest, target


def check_runtime_settings(manifest: Manifest, backend, source: str) -> None:
    """Every graph record's `runtime` holds only what its backend allows (`backend.runtime_settings`):
    a key maps to a type, or to {property: allowed values} for backend properties (OpenVINO's compile
    configuration). A cache folder or any other path a backend would read or write (OpenVINO CACHE_DIR)
    is refused here, before anything is loaded."""
    allowed = backend.runtime_settings
    for kind, records in (("graphs", manifest.graphs), ("engines", manifest.engines)):
        for i, rec in enumerate(records):
            for key, value in rec.runtime.items():
                where = f"{source}: {kind}[{i}].runtime.{key}"
                rule = allowed.get(key)
                if rule is None:
                    raise EngineError(
                        f"{where}: not a setting {backend.name} folders carry "
                        f"({', '.join(allowed) or 'none'}); the folder was edited: rebuild it"
                    )
                if not isinstance(rule, dict):
                    if not isinstance(value, rule):
                        raise EngineError(f"{where}: expected {rule.__name__}; the folder was edited: rebuild it")
                    continue
                if not isinstance(value, dict):
                    raise EngineError(f"{where}: expected an object; the folder was edited: rebuild it")
                for prop, setting in value.items():
                    if prop not in rule:
                        raise EngineError(
                            f"{where}.{prop}: not a property {backend.name} engines are run with (allowed: "
                            f"{', '.join(rule)}); the folder was edited: rebuild it"
                        )
                    if setting not in rule[prop]:
                        raise EngineError(
                            f"{where}.{prop}: {setting!r} is not one of {', '.join(map(str, rule[prop]))}; "
                            "the folder was edited: rebuild it"
                        )
