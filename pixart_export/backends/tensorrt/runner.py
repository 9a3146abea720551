"""Runs the engines of a compiled TensorRT folder: `TrtRunner.run(record, feeds)` for `runtime.Pipeline`.

    from pixart_export import runtime
    pipe = runtime.load("engines/trt-t4-tiny")          # a compiled bundle (after `pixart-export compile`)
    pipe("a red circle above a blue square", seed=0)[0].save("x.png")

Imports numpy, tensorrt and cuda-python only (no torch), and only when used: the host probes
(`probe_tensorrt`, `probe_device`) live here so that `runtime.load` never imports the compile stage.
The host checks (the bundle is compiled, its
engines were built for this GPU architecture and TensorRT version) are `TensorRT.check_host`'s, run by
`runtime.load` before a runner is made. The records it runs are the manifest's `engines` (the
pipeline picks fp16 or int8 ones through `Manifest.record`). Device buffers are allocated once per
(engine, batch) and reused; `cuda_graph=True` captures the denoiser's enqueue in a CUDA graph on first
use per batch and replays it (the denoiser is one engine call, so the saving is the launch overhead of
its few thousand kernels).
Verified only on a GPU host (tests marked `gpu`); nothing here has run in CI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...manifest import EngineError, GraphRecord

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


def probe_tensorrt():
    """The `tensorrt` module, or None when it is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt

    return tensorrt


def probe_device() -> dict | None:
    """{"name", "sm", "driver"} of GPU 0 via cuda-python, or None without a GPU/driver."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
    except ImportError:
        return None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None
    err, driver = cudart.cudaDriverGetVersion()
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name, "sm": props.major * 10 + props.minor, "driver": f"{driver // 1000}.{driver % 1000 // 10}"}


class _Engine:
    """One deserialized engine, its execution context, and device buffers bound once per batch."""

    def __init__(self, runtime, path: Path, record: GraphRecord, stream, cuda_graph: bool):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(
                f"{path}: TensorRT could not deserialize it (another TensorRT version or GPU?); "
                "recompile the bundle on this host"
            )
        self.context = self.engine.create_execution_context()
        self.record, self.stream, self.cuda_graph = record, stream, cuda_graph
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.batch = None
        self.graphs: dict[int, object] = {}

    def _bind(self, feeds: dict[str, np.ndarray]) -> None:
        cudart = _cudart()
        batch = feeds[self.record.inputs[0].name].shape[0]  # every graph's first input leads with B
        if batch == self.batch:
            return
        for ptr, _ in self.buffers.values():
            _ok(cudart.cudaFree(ptr))
        self.buffers = {}
        for inp in self.record.inputs:
            self.context.set_input_shape(inp.name, feeds[inp.name].shape)
        for t in self.record.inputs + self.record.outputs:
            shape = tuple(self.context.get_tensor_shape(t.name))
            size = int(np.prod(shape)) * np.dtype(_NP[t.dtype]).itemsize
            ptr = _ok(cudart.cudaMalloc(max(size, 1)))
            self.buffers[t.name] = (ptr, size)
            self.context.set_tensor_address(t.name, ptr)
        self.batch = batch

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = _cudart()
        self._bind(feeds)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for inp in self.record.inputs:
            arr = np.ascontiguousarray(feeds[inp.name], dtype=_NP[inp.dtype])
            ptr, size = self.buffers[inp.name]
            _ok(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, size, h2d, self.stream))
        if self.cuda_graph:
            if self.batch not in self.graphs:
                if not self.context.execute_async_v3(self.stream):  # warm-up: TensorRT's lazy set-up
                    raise RuntimeError(f"TensorRT failed to run {self.record.file}")  # must not be captured
                _ok(
                    cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
                )
                self.context.execute_async_v3(self.stream)
                graph = _ok(cudart.cudaStreamEndCapture(self.stream))
                self.graphs[self.batch] = _ok(cudart.cudaGraphInstantiate(graph, 0))
            _ok(cudart.cudaGraphLaunch(self.graphs[self.batch], self.stream))
        elif not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT failed to run {self.record.file}")
        outs = []
        for out in self.record.outputs:
            shape = tuple(self.context.get_tensor_shape(out.name))
            arr = np.empty(shape, _NP[out.dtype])
            ptr, size = self.buffers[out.name]
            _ok(cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, size, d2h, self.stream))
            outs.append(arr)
        _ok(cudart.cudaStreamSynchronize(self.stream))
        return outs


class TrtRunner:
    """The `GraphRunner` of a compiled folder: one engine per plan file, deserialized on first use, all
    on one CUDA stream. `cuda_graph=True`: the denoiser's enqueue is captured and replayed per batch."""

    def __init__(self, folder: Path, cuda_graph: bool = False):
        import tensorrt as trt

        self.folder = Path(folder)
        self.cuda_graph = cuda_graph
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._stream = _ok(_cudart().cudaStreamCreate())
        self._engines: dict[str, _Engine] = {}

    def engine(self, record: GraphRecord) -> _Engine:
        if record.file not in self._engines:
            self._engines[record.file] = _Engine(
                self._runtime,
                self.folder / record.file,
                record,
                self._stream,
                self.cuda_graph and record.graph.startswith("denoiser"),
            )
        return self._engines[record.file]

    def run(self, record: GraphRecord, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.engine(record)(feeds)
