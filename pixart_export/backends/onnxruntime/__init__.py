"""The ONNX Runtime backend: `ort-cpu` runs the exported fp32 graphs as they are (the parity baseline);
`ort-cuda` runs fp16 graphs (the TensorRT fp16 preparation) on the CUDA execution provider of
onnxruntime-gpu.

Parts, as every backend has them: `prepare.py` (build stages and verification), `runner.py` (the
runtime's graph runner), `options.py` (its `build` options). Heavy imports happen inside methods,
so the registry and `--help` work without onnxruntime installed.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ...manifest import BackendInfo, Device, EngineError, Manifest, check_backend_version
from ..base import BackendBase

_HERE = "pixart_export/backends/onnxruntime"


class OnnxRuntime(BackendBase):
    package = __name__
    name = "onnxruntime"
    statuses = ("ready",)
    #: What a graph record's `runtime` may hold: ort-cuda's fp16 graphs keep the TensorRT preparation's
    #: shape profile (read by nothing here); no session option comes from the manifest.
    runtime_settings = {"profile": dict}

    def __init__(self, device: str):
        if device not in ("cpu", "cuda"):
            raise ValueError(device)
        self.device_kind = device
        self.extra = "ort" if device == "cpu" else "ort-gpu"
        # ort-cuda's graphs are the TensorRT fp16 preparation's: that code decides its artifacts too
        self.code = (
            (_HERE,)
            if device == "cpu"
            else (_HERE, "pixart_export/backends/tensorrt/fp16.py", "pixart_export/backends/tensorrt/prepare.py")
        )

    def __repr__(self) -> str:
        return f"OnnxRuntime({self.device_kind!r})"

    # -- versions and host ------------------------------------------------------------------------------
    def installed_version(self) -> str:
        for dist in ("onnxruntime", "onnxruntime-gpu"):
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        raise EngineError(f"onnxruntime is not installed: pip install 'pixart-export[{self.extra}]'")

    def versions(self) -> dict[str, str]:
        versions = {"onnxruntime": self.installed_version()}
        if self.device_kind == "cuda":
            try:
                versions["onnxconverter_common"] = importlib.metadata.version("onnxconverter-common")
            except importlib.metadata.PackageNotFoundError:
                raise EngineError(
                    "ort-cuda prepares fp16 graphs with onnxconverter-common: pip install 'pixart-export[export]'"
                ) from None
        return versions

    def backend_info(self, target, versions: dict[str, str]) -> BackendInfo:
        return BackendInfo(self.name, versions["onnxruntime"])

    def device(self, target) -> Device:
        if self.device_kind == "cuda":
            return Device(kind="gpu", arch="cuda", note="any NVIDIA GPU onnxruntime-gpu's CUDA provider runs on")
        return Device(kind="cpu", arch="any")

    def check_host(self, folder: Path, manifest: Manifest) -> None:
        check_backend_version(manifest, self.installed_version())
        if self.device_kind == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise EngineError(
                    f"{folder}: an ort-cuda engine needs onnxruntime-gpu with a visible NVIDIA GPU "
                    "(CUDAExecutionProvider is not available here): pip install "
                    "'pixart-export[ort-gpu]', or build --target ort-cpu for this host"
                )

    # -- runtime -----------------------------------------------------------------------------------------------
    def runner(self, folder: Path, manifest: Manifest, providers=None, threads: int | None = None, files=None):
        """`files`: the folder's checked files held open (`manifest.HeldFiles`), which graphs load from."""
        from .runner import OrtRunner

        if providers is None and self.device_kind == "cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return OrtRunner(folder, providers=providers, threads=threads, files=files)
