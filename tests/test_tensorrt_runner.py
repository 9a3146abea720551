"""backends/tensorrt/runner.py without a GPU: buffers and CUDA graphs against fake `tensorrt` and cudart
modules that keep device memory in host bytearrays and replay captured kernels with the addresses they
were captured with; the host probe's CUDA error messages."""

from __future__ import annotations

import ctypes
import enum
import sys
import types

import numpy as np
import pytest

from pixart_export.backends.tensorrt import runner
from pixart_export.manifest import EngineError, GraphRecord, Precision, TensorRecord


class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


OK = Err.cudaSuccess


class FakeCudart:
    """Device memory as bytearrays at fake addresses; a captured stream records kernels instead of running
    them; a graph launch runs them, and each kernel asserts its buffers are still allocated."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)

    def __init__(self):
        self.memory: dict[int, bytearray] = {}
        self.freed: set[int] = set()
        self.next = 0x1000
        self.capturing: list | None = None
        self.log: list[tuple] = []

    def live(self, ptr: int, size: int) -> bytearray:
        assert ptr not in self.freed, f"use of freed device memory at {ptr:#x}"
        assert ptr in self.memory and size <= len(self.memory[ptr]), f"{size} bytes at {ptr:#x}: out of bounds"
        return self.memory[ptr]

    def cudaMalloc(self, size):
        ptr, self.next = self.next, self.next + size + 0x100
        self.memory[ptr] = bytearray(size)
        self.log.append(("malloc", ptr, size))
        return OK, ptr

    def cudaFree(self, ptr):
        self.live(ptr, 0)
        del self.memory[ptr]
        self.freed.add(ptr)
        self.log.append(("free", ptr))
        return (OK,)

    def cudaMemcpyAsync(self, dst, src, size, kind, stream):
        if kind == 1:
            self.live(dst, size)[:size] = ctypes.string_at(src, size)
        else:
            ctypes.memmove(dst, bytes(self.live(src, size)[:size]), size)
        return (OK,)

    def cudaStreamCreate(self):
        return OK, "stream"

    def cudaStreamSynchronize(self, stream):
        return (OK,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return OK, graph

    def cudaGraphInstantiate(self, graph, flags):
        self.log.append(("instantiate", len(graph)))
        return OK, {"kernels": list(graph)}

    def cudaGraphDestroy(self, graph):
        return (OK,)

    def cudaGraphLaunch(self, graph, stream):
        self.log.append(("launch",))
        for kernel in graph["kernels"]:
            kernel()
        return (OK,)

    def cudaGraphExecDestroy(self, graph):
        self.log.append(("destroy_graph",))
        return (OK,)


MAX_BATCH = 2


class FakeContext:
    """y = 2 x + 1 over [B, 3] float32, profile batch 1..MAX_BATCH; records what TensorRT would check."""

    def __init__(self, cudart: FakeCudart):
        self.cudart = cudart
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape):
        if len(shape) != 2 or not 1 <= shape[0] <= MAX_BATCH or shape[1] != 3:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        x_ptr, y_ptr, batch, cudart = self.addresses["x"], self.addresses["y"], self.shapes["x"][0], self.cudart

        def kernel():  # what a captured kernel does: the addresses and sizes of its capture
            n = batch * 3 * 4
            x = np.frombuffer(bytes(cudart.live(x_ptr, n)[:n]), np.float32)
            cudart.live(y_ptr, n)[:n] = (2 * x + 1).astype(np.float32).tobytes()

        if self.cudart.capturing is not None:
            self.cudart.capturing.append(kernel)
        else:
            kernel()
        return True


class FakeEngine:
    def __init__(self, cudart):
        self.cudart = cudart

    def create_execution_context(self):
        return FakeContext(self.cudart)

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 3), (1, 3), (MAX_BATCH, 3)]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    cudart = FakeCudart()
    trt = types.ModuleType("tensorrt")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: FakeEngine(cudart))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(runner, "_cudart", lambda: cudart)
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "d.plan").write_bytes(b"PLAN")
    record = GraphRecord(
        graph="denoiser_lcm4",
        file="engines/d.plan",
        files=("engines/d.plan",),
        precision=Precision.FP16,
        height=128,
        width=128,
        inputs=(TensorRecord("x", "float32", ("B", 3)),),
        outputs=(TensorRecord("y", "float32", ("B", 3)),),
    )
    return cudart, tmp_path, record


def test_batch_1_2_1_with_cuda_graphs_replays_on_live_buffers(fake):
    cudart, folder, record = fake
    trt_runner = runner.TrtRunner(folder, cuda_graph=True)
    rng = np.random.default_rng(0)
    for batch in (1, 2, 1, 2):
        x = rng.standard_normal((batch, 3)).astype(np.float32)
        (y,) = trt_runner.run(record, {"x": x})
        np.testing.assert_allclose(y, 2 * x + 1, rtol=1e-6)  # the replay read this call's input
    mallocs = [e for e in cudart.log if e[0] == "malloc"]
    assert [m[2] for m in mallocs] == [MAX_BATCH * 3 * 4] * 2  # x and y once, for the profile's max batch
    assert not cudart.freed  # nothing freed while graphs that point into it exist
    assert [e[0] for e in cudart.log].count("instantiate") == 2  # one graph per batch, replayed after
    assert [e[0] for e in cudart.log].count("launch") == 4
    trt_runner.close()
    kinds = [e[0] for e in cudart.log]
    assert kinds.index("destroy_graph") < kinds.index("free") and len(cudart.freed) == 2


def test_batch_above_the_profile_is_refused_clearly(fake):
    cudart, folder, record = fake
    trt_runner = runner.TrtRunner(folder, cuda_graph=False)
    trt_runner.run(record, {"x": np.ones((2, 3), np.float32)})
    with pytest.raises(EngineError, match=r"shape \(3, 3\), above the engine's optimisation profile .*batch <= 2"):
        trt_runner.run(record, {"x": np.ones((3, 3), np.float32)})
    (y,) = trt_runner.run(record, {"x": np.ones((1, 3), np.float32)})  # still usable after the refusal
    np.testing.assert_allclose(y, 3.0)


def test_refused_shape_and_address_are_errors(fake, monkeypatch):
    cudart, folder, record = fake
    monkeypatch.setattr(FakeContext, "set_tensor_address", lambda self, name, ptr: False)
    with pytest.raises(EngineError, match="refused the buffer address of x"):
        runner.TrtRunner(folder).run(record, {"x": np.ones((1, 3), np.float32)})
    monkeypatch.setattr(FakeContext, "set_input_shape", lambda self, name, shape: False)
    with pytest.raises(EngineError, match=r"TensorRT refused shape \(2, 3\) for input x"):
        runner.TrtRunner(folder).run(record, {"x": np.ones((1, 3), np.float32)})


class ProbeCudart:
    def __init__(self, count_err=OK, count=1, driver=12040):
        self.count_err, self.count, self.driver = count_err, count, driver

    def cudaGetDeviceCount(self):
        return self.count_err, self.count

    def cudaDriverGetVersion(self):
        return OK, self.driver

    def cudaGetDeviceProperties(self, index):
        return OK, types.SimpleNamespace(name=b"Tesla T4\x00", major=7, minor=5)


def test_probe_names_the_cuda_error_and_what_to_install(monkeypatch):
    """cuda-python 13 on a CUDA 12.4 driver (R550): error 35, named, with the cu12 extra as the remedy."""
    monkeypatch.setattr(runner, "cuda_stack", lambda: {"tensorrt_cuda": 13, "cuda_python": "13.0.1"})
    monkeypatch.setattr(runner, "_cudart", lambda: ProbeCudart(Err.cudaErrorInsufficientDriver, 0, 12040))
    device, why = runner.device_status()
    assert device is None and runner.probe_device() is None
    assert why.startswith("cudaGetDeviceCount failed with cudaErrorInsufficientDriver (35): ")
    assert "driver supports CUDA 12.4, cuda-python 13.0.1 needs CUDA 13 (R580+)" in why
    assert "pip install 'pixart-export[tensorrt-cu12]'" in why
    monkeypatch.setattr(runner, "_cudart", lambda: ProbeCudart(Err.cudaErrorInsufficientDriver, 0, 11080))
    assert "update the driver to R525 or newer" in runner.device_status()[1]
    monkeypatch.setattr(runner, "_cudart", lambda: ProbeCudart(Err.cudaErrorNoDevice, 0))
    assert runner.no_device_reason() == (
        "cudaGetDeviceCount failed with cudaErrorNoDevice (100): no CUDA-capable GPU is visible "
        "(CUDA_VISIBLE_DEVICES, or a container started without GPUs)"
    )
    monkeypatch.setattr(runner, "_cudart", lambda: ProbeCudart())
    assert runner.device_status() == ({"name": "Tesla T4", "sm": 75, "driver": "12.4"}, "")


def test_probe_without_cuda_python(monkeypatch):
    def missing():
        raise ImportError("No module named 'cuda'")

    monkeypatch.setattr(runner, "_cudart", missing)
    assert runner.device_status() == (
        None,
        "cuda-python is not installed: pip install 'pixart-export[tensorrt-cu12]' (or tensorrt-cu13)",
    )


def test_cuda_error_text_and_stack_rules():
    assert runner.cuda_error_text(Err.cudaErrorInsufficientDriver) == "cudaErrorInsufficientDriver (35)"
    with pytest.raises(RuntimeError, match=r"CUDA error cudaErrorNoDevice \(100\)"):
        runner._ok((Err.cudaErrorNoDevice, None))
    assert runner.cuda_stack_problem({"tensorrt_cuda": 12, "cuda_python": "12.9.0"}) is None
    assert "one CUDA major" in runner.cuda_stack_problem({"tensorrt_cuda": 13, "cuda_python": "12.9.0"})
    assert runner.cuda_majors(("10.0", "10.4")) == (12,) and runner.cuda_majors(("10.0", None)) == (12, 13)
    assert runner.cuda_majors(("10.0", "10.13")) == (12, 13)
    assert set(runner.cuda_stack()) == {"tensorrt_cuda", "cuda_python"}  # this host: whatever is installed
