"""Prompt -> images from an OpenVINO engine folder (targets `ov-cpu`, `ov-cpu-int8`).

The same pipeline as `OrtPipeline` (tokenizer, `text_encoder`, unrolled `denoiser_lcm{K}`,
`vae_decoder`; names, files and shapes from the manifest); only how one graph runs differs: each IR
is compiled on the CPU with the properties the build recorded for it (`openvino.config` of the
graph's manifest record: the inference precision, always explicit), plus the thread count asked for
here. No torch, no `reference`.

The IR keeps the batch axis dynamic (one file serves every batch), but each graph is compiled for
the concrete input shapes of the call (`Model.reshape`, then compile; one compiled model per shape
set, kept), so the CPU plugin can pick its kernels and memory plan for those shapes (on tiny it
fuses the elementwise chains it leaves unfused in the dynamic model). Measured on the XL int8 step
(512 px, 2-core AVX-512 VNNI CPU, idle): 2.19 s static vs 2.25 s dynamic; the VAE decoder the same
(12.4 s). A small gain, kept. `static_shapes=False` compiles the dynamic model once instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..compile_ov import compile_config, compile_graph, cpu_info, runnable_precision, run_compiled
from .pipeline import OrtPipeline


class OvPipeline(OrtPipeline):
    """Holds one compiled OpenVINO model per graph file, compiled on first use."""

    def __init__(self, folder: Path, manifest: dict, threads: int | None = None,
                 precision: str | None = None, providers: Sequence[str] | None = None, static_shapes: bool = True):
        super().__init__(folder, manifest, providers=providers, threads=threads)
        self.precision_override = precision
        self.static_shapes = static_shapes
        self._core = None
        self._cpu = cpu_info()

    def graph_config(self, rec: dict) -> dict:
        """The compile properties for one graph: as built, the thread count and override applied."""
        recorded = dict((rec.get("openvino") or {}).get("config") or compile_config("f32"))
        precision = self.precision_override or recorded.get("INFERENCE_PRECISION_HINT", "f32")
        recorded["INFERENCE_PRECISION_HINT"] = runnable_precision(precision, self._cpu)
        if self.threads:
            recorded["INFERENCE_NUM_THREADS"] = int(self.threads)
        return recorded

    def session(self, rec: dict, feeds: dict[str, np.ndarray] | None = None):
        """The compiled model for one graph: for the shapes of `feeds` when static, else the dynamic IR."""
        shapes = tuple((n, tuple(a.shape)) for n, a in sorted(feeds.items())) if self.static_shapes and feeds else None
        key = (rec["file"], shapes)
        if key not in self._sessions:
            import openvino as ov

            self._core = self._core or ov.Core()
            model = self._core.read_model(str(self.folder / rec["file"]))
            if shapes:
                model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes})
            self._sessions[key] = compile_graph(model, self.graph_config(rec), self._core)
        return self._sessions[key]

    def run(self, graph: str, feeds: dict[str, np.ndarray], height: int | None = None,
            width: int | None = None) -> list[np.ndarray]:
        rec = self.record(graph, height, width)
        feeds = {t["name"]: feeds[t["name"]] for t in rec["inputs"]}
        return run_compiled(self.session(rec, feeds), feeds)


def load_openvino(engine_dir: str | Path, threads: int | None = None, verify_hashes: bool = True,
                  precision: str | None = None, static_shapes: bool = True) -> OvPipeline:
    """Validate an OpenVINO engine folder (manifest, OpenVINO version, sha256, x86 CPU) and load it.

    `precision` overrides the recorded inference precision of every graph ("f32" | "bf16"), for
    measurements; the default runs the engine as built.
    """
    import platform

    from ..manifest import EngineError, verify_engine

    try:
        from ..compile_ov import openvino_version

        version = openvino_version()
    except Exception as exc:  # PackageNotFoundError, or a broken install
        raise EngineError("openvino is not installed: pip install openvino (or pixart-export[openvino])") from exc
    manifest = verify_engine(Path(engine_dir), "openvino", version, hashes=verify_hashes)
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        raise EngineError(f"engine target {manifest['target']!r} is for x86 CPUs; this host is {machine}: "
                          "use the ort-cpu target here")
    return OvPipeline(Path(engine_dir), manifest, threads=threads, precision=precision, static_shapes=static_shapes)
