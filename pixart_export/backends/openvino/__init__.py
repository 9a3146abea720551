"""The OpenVINO backend: `ov-cpu` runs fp32 IR converted from the exported graphs, with the inference
precision set explicitly (f32); `ov-cpu-int8` runs NNCF int8 transformer graphs, an int8-weight T5,
the VAE decoder in the precision measured fastest within its image gate (`decoder.py`) and the fp32 VAE
encoder, with the choices measured on the build host's CPU.

Parts, as every backend has them: `prepare.py` (build stages: convert to IR, int8, the decoder's
precision (`decoder.py`); verification),
`quantize.py` (NNCF), `runner.py` (the runtime's graph runner: one compiled model per graph file and
input shapes), `options.py` (the ov-cpu-int8 `build` options). Heavy imports happen inside methods,
so the registry and `--help` work without OpenVINO installed.

One class, two registry objects: `OpenVino(int8=False)` for ov-cpu, `OpenVino(int8=True)` for
ov-cpu-int8; what differs between the two targets is decided by `int8`, never by the target's name.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ...manifest import BackendInfo, Device, EngineError, Manifest, check_backend_version
from ..base import BackendBase, dist_version

_HERE = "pixart_export/backends/openvino"


class OpenVino(BackendBase):
    package = __name__
    name = "openvino"
    extra = "openvino"
    statuses = ("ready",)
    #: What a graph record's `runtime` may hold (`targets.check_runtime_settings`): the compile properties
    #: the build writes, with the values it writes. No CACHE_DIR or other path: the manifest cannot make
    #: OpenVINO read or write outside the folder (and no compiled-model cache is kept).
    runtime_settings = {"config": {"INFERENCE_PRECISION_HINT": ("f32", "bf16"), "PERFORMANCE_HINT": ("LATENCY",)}}
    # the prompt files decide the int8 calibration and the quality gate
    code = (_HERE, "pixart_export/data/calibration_prompts.txt", "pixart_export/data/quality_prompts.txt")

    def __init__(self, int8: bool = False):
        self.int8 = bool(int8)
        # a T5 too large for the fp32 export (T5-XXL) is converted from bf16 weights and compressed to
        # int8 weights: only where the target quantises those weights anyway (`prepare.convert_direct`)
        self.direct_text_encoder = self.int8

    def __repr__(self) -> str:
        return f"OpenVino(int8={self.int8})"

    # -- versions and host ------------------------------------------------------------------------------
    def installed_version(self) -> str:
        try:
            return importlib.metadata.version("openvino")
        except importlib.metadata.PackageNotFoundError:
            raise EngineError(f"openvino is not installed: pip install 'pixart-export[{self.extra}]'") from None

    def versions(self) -> dict[str, str]:
        versions = {"openvino": self.installed_version()}
        if self.int8:
            hint = f"ov-cpu-int8 quantises with NNCF: pip install 'pixart-export[{self.extra}]'"
            versions["nncf"] = dist_version("nncf", hint)
        return versions

    def backend_info(self, target, versions: dict[str, str]) -> BackendInfo:
        return BackendInfo(self.name, versions["openvino"])

    def device(self, target) -> Device:
        from .runner import cpu_info

        cpu = cpu_info()
        return Device(
            kind="cpu",
            arch="x86_64",
            name=cpu["model"],
            isa=tuple(cpu["isa"]),
            note=f"the CPU the engine was built and measured on ({cpu['logical_cores']} logical cores)",
        )

    def check_host(self, folder: Path, manifest: Manifest) -> None:
        import platform

        from .runner import is_x86

        check_backend_version(manifest, self.installed_version())
        if not is_x86():
            raise EngineError(
                f"{folder}: engine target {manifest.target!r} is for x86 CPUs; this host is "
                f"{platform.machine()}: use the ort-cpu target here"
            )

    # -- runtime -----------------------------------------------------------------------------------------------
    def runner(
        self,
        folder: Path,
        manifest: Manifest,
        threads: int | None = None,
        inference_precision: str | None = None,
        static_shapes: bool = True,
        files=None,
    ):
        """`threads`: INFERENCE_NUM_THREADS; `inference_precision` ("f32" | "bf16"): override every graph's
        recorded inference precision, for measurements; `static_shapes=False`: compile the dynamic IR;
        `files`: the folder's checked files held open (`manifest.HeldFiles`), which graphs load from."""
        from .runner import OvRunner

        return OvRunner(
            folder,
            threads=threads,
            inference_precision=inference_precision,
            static_shapes=static_shapes,
            files=files,
        )
