"""The TensorRT backend: `trt-t4`, `trt-v100`, `trt-a100`, `trt-h100`.

TensorRT 11 builds strongly typed networks only, so precision lives in the graphs: `build` makes fp16
and int8 (Q/DQ) ONNX graphs on the CPU, verifies them in onnxruntime against the fp32 graphs and checks
them statically for the target (a "bundle"); `compile` turns a bundle into engines on the target GPU.
Parts, as every backend has them: `prepare.py` (build stages and verification, with `fp16.py`,
`quantize_qdq.py`, `check.py`), `compile.py` (engines, on the GPU host), `runner.py` (the runtime's
graph runner over the engines), `options.py` (its `build` options and the `check`/`compile`
arguments). Heavy imports happen inside methods, so the registry and `--help` work without onnx,
onnxruntime or TensorRT installed.
"""

from __future__ import annotations

from pathlib import Path

from ...manifest import BackendInfo, Device, EngineError, Manifest
from ..base import BackendBase, dist_version

_HERE = "pixart_export/backends/tensorrt"


class TensorRT(BackendBase):
    package = __name__
    name = "tensorrt"
    extra = "tensorrt-cu12"
    statuses = ("bundle", "compiled")
    #: What a record's `runtime` may hold: the shape profile `compile` applies, and on engine records the
    #: graph it was built from and its timing-cache key (a hash; the cache folder is the host's, never
    #: the manifest's); on a K-step loop's denoiser record, the two engine files that run it (listed
    #: engines of the folder: `compile.loop_records`, issue #23).
    runtime_settings = {"profile": dict, "source": str, "timing_cache": str, "k_step_loop": dict}
    code = (_HERE,)
    #: a T5 too large for the fp32 export is exported block by block in its plan's precision (`t5_blockwise.py`)
    direct_text_encoder = True

    def __repr__(self) -> str:
        return "TensorRT()"

    # -- versions and host ------------------------------------------------------------------------------
    def installed_version(self) -> str:
        """The installed TensorRT's version (what `compile` records in the manifest)."""
        from .runner import probe_tensorrt

        trt = probe_tensorrt()
        if trt is None:
            raise EngineError(
                f"tensorrt is not installed: pip install 'pixart-export[{self.extra}]' (or tensorrt-cu13 for CUDA 13)"
            )
        return trt.__version__

    def versions(self) -> dict[str, str]:
        """The bundle is made on the CPU: onnxruntime verifies it, onnxconverter-common makes its fp16
        graphs. TensorRT itself enters the manifest when `compile` runs."""
        versions = {}
        for dist, key in (("onnxruntime", "onnxruntime"), ("onnxconverter-common", "onnxconverter_common")):
            hint = f"a TensorRT bundle is prepared with {dist}: pip install 'pixart-export[export]'"
            versions[key] = dist_version(dist, hint)
        return versions

    def backend_info(self, target, versions: dict[str, str]) -> BackendInfo:
        return BackendInfo(self.name, None, requires=target.trt.tensorrt)

    def device(self, target) -> Device:
        return Device(kind="gpu", arch=target.trt.arch, sm=target.trt.sm)

    def check_host(self, folder: Path, manifest: Manifest) -> None:
        """A compiled folder, engines built with this TensorRT version (inside the target's range), TensorRT
        and cuda-python of one CUDA major, and this GPU's architecture."""
        folder = Path(folder)
        if manifest.device.kind != "gpu" or manifest.device.sm is None:
            raise EngineError(
                f"{folder}: manifest 'device' does not describe a GPU (arch, sm): not a TensorRT "
                "bundle made by `pixart-export build --target trt-*`; rebuild it"
            )
        if manifest.status != "compiled" or not manifest.engines:
            raise EngineError(
                f"{folder}: a TensorRT bundle without engines; run `pixart-export compile {folder}` "
                f"on a {manifest.device.arch} host first"
            )
        from .runner import cuda_majors, cuda_stack, cuda_stack_problem, pip_tensorrt, version_allowed

        installed = self.installed_version()
        allowed = (manifest.backend.requires[0] or "0", manifest.backend.requires[1])
        if not version_allowed(installed, allowed):
            raise EngineError(
                f"TensorRT {installed} cannot run {manifest.target} engines: it needs TensorRT >= {allowed[0]}"
                + (f" and <= {allowed[1]}" if allowed[1] else "")
                + f"; {pip_tensorrt(allowed, max(cuda_majors(allowed)))}"
            )
        problem = cuda_stack_problem(cuda_stack())
        if problem:
            raise EngineError(problem)
        if installed != manifest.backend.version:
            raise EngineError(
                f"engines were built with TensorRT {manifest.backend.version}, this host has "
                f"{installed}: engines are version-specific; run `pixart-export compile {folder}`"
            )
        from .runner import no_device_reason, probe_device

        device = probe_device()
        if device is None:
            raise EngineError(
                f"engines are for sm_{manifest.device.sm} ({manifest.device.name}); this host has no usable GPU: "
                f"{no_device_reason()}"
            )
        if device["sm"] != manifest.device.sm:
            raise EngineError(
                f"engines are for sm_{manifest.device.sm} ({manifest.device.name}); this host has "
                f"{device['name']}: compile the bundle on this host"
            )

    # -- runtime -----------------------------------------------------------------------------------------------
    def runner(
        self, folder: Path, manifest: Manifest, cuda_graph: bool = False, threads: int | None = None, files=None
    ):
        """`threads` (the CPU backends' option, `run --threads`) does not apply to engines on a GPU. `files`:
        the folder's checked files held open (`manifest.HeldFiles`), which engine plans load from."""
        from .runner import TrtRunner

        return TrtRunner(folder, cuda_graph=cuda_graph, manifest=manifest, files=files)
