"""Run a compiled TensorRT bundle: the same pipeline as `OrtPipeline`, with engines instead of sessions.

    from pixart_export import runtime
    pipe = runtime.load("engines/trt-t4-tiny")          # a compiled bundle (after `pixart-export compile`)
    pipe("a red circle above a blue square", seed=0)[0].save("x.png")

Imports numpy, tensorrt and cuda-python only (no torch). `load` refuses a bundle that is not compiled,
whose engines were built for another GPU architecture or TensorRT version, or whose files changed.
Device buffers are allocated once per (engine, batch) and reused; `cuda_graph=True` captures the
denoiser's enqueue in a CUDA graph on first use per batch and replays it (the denoiser is one engine
call, so the saving is the launch overhead of its few thousand kernels).
Verified only on a GPU host (tests marked `gpu`); nothing here has run in CI.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..manifest import EngineError, check_files, read_manifest
from .pipeline import OrtPipeline

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _ok(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class _Engine:
    """One deserialized engine, its execution context, and device buffers bound once per batch."""

    def __init__(self, trt, runtime, path: Path, record: dict, stream, cuda_graph: bool):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{path}: TensorRT could not deserialize it (another TensorRT version or GPU?); "
                              "recompile the bundle on this host")
        self.context = self.engine.create_execution_context()
        self.record, self.stream, self.cuda_graph = record, stream, cuda_graph
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.batch = None
        self.graphs: dict[int, object] = {}

    def _bind(self, feeds: dict[str, np.ndarray]) -> None:
        cudart = _cudart()
        batch = feeds[self.record["inputs"][0]["name"]].shape[0]  # every graph's first input leads with B
        if batch == self.batch:
            return
        for ptr, _ in self.buffers.values():
            _ok(cudart.cudaFree(ptr))
        self.buffers = {}
        for inp in self.record["inputs"]:
            self.context.set_input_shape(inp["name"], feeds[inp["name"]].shape)
        for t in self.record["inputs"] + self.record["outputs"]:
            shape = tuple(self.context.get_tensor_shape(t["name"]))
            size = int(np.prod(shape)) * np.dtype(_NP[t["dtype"]]).itemsize
            ptr = _ok(cudart.cudaMalloc(max(size, 1)))
            self.buffers[t["name"]] = (ptr, size)
            self.context.set_tensor_address(t["name"], ptr)
        self.batch = batch

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = _cudart()
        self._bind(feeds)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for inp in self.record["inputs"]:
            arr = np.ascontiguousarray(feeds[inp["name"]], dtype=_NP[inp["dtype"]])
            ptr, size = self.buffers[inp["name"]]
            _ok(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, size, h2d, self.stream))
        if self.cuda_graph:
            if self.batch not in self.graphs:
                if not self.context.execute_async_v3(self.stream):  # warm-up: TensorRT's lazy set-up
                    raise RuntimeError(f"TensorRT failed to run {self.record['file']}")  # must not be captured
                _ok(cudart.cudaStreamBeginCapture(self.stream,
                                                  cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
                self.context.execute_async_v3(self.stream)
                graph = _ok(cudart.cudaStreamEndCapture(self.stream))
                self.graphs[self.batch] = _ok(cudart.cudaGraphInstantiate(graph, 0))
            _ok(cudart.cudaGraphLaunch(self.graphs[self.batch], self.stream))
        elif not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT failed to run {self.record['file']}")
        outs = []
        for out in self.record["outputs"]:
            shape = tuple(self.context.get_tensor_shape(out["name"]))
            arr = np.empty(shape, _NP[out["dtype"]])
            ptr, size = self.buffers[out["name"]]
            _ok(cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, size, d2h, self.stream))
            outs.append(arr)
        _ok(cudart.cudaStreamSynchronize(self.stream))
        return outs


class TrtPipeline(OrtPipeline):
    """`OrtPipeline`'s prompt -> image logic over engines (`precision`: "int8" uses int8 engines where the
    bundle has them, fp16 for the rest; "fp16" uses fp16 only)."""

    def __init__(self, folder: Path, manifest: dict, precision: str = "fp16", cuda_graph: bool = False):
        import tensorrt as trt

        super().__init__(folder, {**manifest, "graphs": manifest["engines"]})
        self.precision, self.cuda_graph = precision, cuda_graph
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._stream = _ok(_cudart().cudaStreamCreate())
        self._engines: dict[str, _Engine] = {}

    def record(self, graph: str, height: int | None = None, width: int | None = None) -> dict:
        matches = [e for e in self.manifest["graphs"] if e["graph"] == graph and
                   (e["height"] is None or (e["height"], e["width"]) == (height, width))]
        order = (["int8", "fp16"] if self.precision == "int8" else ["fp16"]) + ["fp32"]  # fp32: a measured fallback
        for p in order:
            for e in matches:
                if e["precision"] == p:
                    return e
        return super().record(graph, height, width)

    def session(self, rec: dict):
        if rec["file"] not in self._engines:
            self._engines[rec["file"]] = _Engine(self._trt, self._runtime, self.folder / rec["file"], rec,
                                                 self._stream, self.cuda_graph and rec["graph"].startswith("denoiser"))
        engine = self._engines[rec["file"]]

        class _Session:  # OrtPipeline.run calls session(rec).run(None, feeds)
            @staticmethod
            def run(_names, feeds):
                return engine(feeds)

        return _Session()


def load_tensorrt(engine_dir, precision: str = "fp16", cuda_graph: bool = False, verify_hashes: bool = True):
    """Validate a compiled bundle against this host and return a `TrtPipeline`."""
    folder = Path(engine_dir)
    manifest = read_manifest(folder)
    if not isinstance(manifest.get("device"), dict):
        raise EngineError(f"{folder}: manifest 'device' does not describe a GPU (arch, sm): not a TensorRT bundle "
                          "made by `pixart-export build --target trt-*`; rebuild it")
    if manifest.get("status") != "compiled" or not manifest.get("engines"):
        raise EngineError(f"{folder}: a TensorRT bundle without engines; run `pixart-export compile {folder}` on "
                          f"a {manifest.get('device', {}).get('arch', 'target')} host first")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError("tensorrt is not installed: pip install -e '.[tensorrt]'") from exc
    if trt.__version__ != manifest["backend"].get("version"):
        raise EngineError(f"engines were built with TensorRT {manifest['backend'].get('version')}, this host has "
                          f"{trt.__version__}: engines are version-specific; run `pixart-export compile {folder}`")
    from ..compile_trt import probe_device

    device = probe_device()
    if device is None or device["sm"] != manifest["device"].get("sm"):
        raise EngineError(f"engines are for sm_{manifest['device'].get('sm')} ({manifest['device'].get('name')}); "
                          f"this host has {device and device['name']}: compile the bundle on this host")
    check_files(folder, manifest, hashes=verify_hashes)
    return TrtPipeline(folder, manifest, precision=precision, cuda_graph=cuda_graph)
