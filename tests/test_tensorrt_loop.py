"""backends/tensorrt/loop.py: the K-step plan (one-step engine x K in one CUDA graph) without a GPU.

The LCM coefficients and the `lcm_update` graph against the reference sampler; then `StepLoop` over the
real `TrtRunner` with fake `tensorrt` and `cudart` modules: device memory is simulated, engines compute a
known function of their inputs, and a CUDA graph records what is enqueued while capturing and replays
it. The loop's result must equal the reference LCM loop with the same function as the model."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pixart_export.backends.tensorrt import loop, runner
from pixart_export.manifest import GraphRecord, TensorRecord
from reference.sampling import lcm_step
from reference.schedules import alphas_cumprod, lcm_timesteps

SHAPE = (2, 4, 4, 4)  # B, C, h, w


def _eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """What the fake transformer engine computes (any smooth function of its inputs will do)."""
    return (0.3 * x + 1e-3 * t.reshape(-1, 1, 1, 1)).astype(np.float32)


def _reference(x: np.ndarray, noises: np.ndarray, ts) -> np.ndarray:
    acp = alphas_cumprod()
    xt = torch.from_numpy(x).double()
    denoised = xt
    for i, t in enumerate(ts):
        last = i == len(ts) - 1
        eps = torch.from_numpy(_eps(xt.float().numpy(), np.full(x.shape[0], float(t), np.float32))).double()
        xt, denoised = lcm_step(
            eps,
            xt,
            int(t),
            None if last else int(ts[i + 1]),
            acp.double(),
            None if last else torch.from_numpy(noises[i]),
        )
    return denoised.float().numpy()


def test_coefficients_and_update_graph_match_the_reference_step():
    ts = lcm_timesteps(4)
    acp = alphas_cumprod()
    coef = loop.lcm_coefficients(ts, acp.numpy())
    assert coef.shape == (4, 3) and coef[-1, 2] == 0.0  # the last step adds no noise
    sess = ort.InferenceSession(loop.lcm_update_model(4, 4, 4).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x, eps, noise = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3))
    for k, t in enumerate(ts):
        last = k == len(ts) - 1
        nxt, n = (None, None) if last else (int(ts[k + 1]), torch.from_numpy(noise))
        want = lcm_step(torch.from_numpy(eps), torch.from_numpy(x), int(t), nxt, acp, n)[0].numpy()
        got = sess.run(None, {"latents": x, "noise_pred": eps, "step_noise": noise, "coef": coef[k]})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_plan_record_says_what_the_bundle_runs():
    rec = loop.plan_record(4)
    assert rec["default"] == loop.K_STEP_PLAN and rec["runs"] == loop.UNROLLED and "does not carry" in rec["why"]
    assert loop.plan_record(4, bundle_has_loop=True)["runs"] == loop.K_STEP_PLAN


# -- fakes: device memory, CUDA graphs, TensorRT engines ---------------------------------------------------
class FakeCudart:
    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = 1, 2, 3

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeGlobal = 0

    def __init__(self):
        self.mem: dict[int, bytearray] = {}
        self.next = 1 << 32
        self.capturing: list | None = None
        self.launches = 0
        self.freed: list[int] = []

    def _find(self, ptr: int) -> tuple[bytearray, int]:
        for base, buf in self.mem.items():
            if base <= ptr < base + len(buf):
                return buf, ptr - base
        raise AssertionError(f"pointer {ptr:#x} is not device memory")

    def read(self, ptr: int, nbytes: int, dtype) -> np.ndarray:
        buf, off = self._find(ptr)
        return np.frombuffer(bytes(buf[off : off + nbytes]), dtype=dtype).copy()

    def write(self, ptr: int, data: bytes) -> None:
        buf, off = self._find(ptr)
        buf[off : off + len(data)] = data

    def run(self, op):  # an operation now, or into the graph being captured
        if self.capturing is not None:
            self.capturing.append(op)
        else:
            op()

    def cudaMalloc(self, n):
        ptr, self.next = self.next, self.next + (1 << 32)
        self.mem[ptr] = bytearray(n)
        return 0, ptr

    def cudaFree(self, ptr):
        self.freed.append(ptr)
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            assert self.capturing is None, "a host copy inside a captured graph would replay stale host memory"
            self.write(dst, ctypes.string_at(src, n))
        elif kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            assert self.capturing is None
            ctypes.memmove(dst, bytes(self._find(src)[0][self._find(src)[1] : self._find(src)[1] + n]), n)
        else:
            self.run(lambda: self.write(dst, self.read(src, n, np.uint8).tobytes()))
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        ops, self.capturing = self.capturing, None
        return 0, ops

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph):
        return (0,)

    def cudaGraphLaunch(self, graph, stream):
        self.launches += 1
        for op in graph:
            op()
        return (0,)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addr, self.runs = engine, {}, {}, 0

    def set_input_shape(self, name, shape):
        if any(s > m for s, m in zip(shape, self.engine.max_shapes[name])):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes.get(name, self.shapes["latents"])  # the output is shaped like the latents

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        self.runs += 1
        self.engine.cudart.run(self._compute)
        return True

    def _compute(self):
        cu, b = self.engine.cudart, self.shapes["latents"]
        n = int(np.prod(b)) * 4

        def get(name, count=n):
            return cu.read(self.addr[name], count, np.float32)

        x = get("latents").reshape(b)
        if self.engine.kind == "transformer":
            out = _eps(x, get("timestep", 4 * b[0]))
            cu.write(self.addr["noise_pred"], out.tobytes())
        else:
            a, bb, c = get("coef", 12)
            out = a * x + bb * get("noise_pred").reshape(b) + c * get("step_noise").reshape(b)
            cu.write(self.addr["latents_next"], out.astype(np.float32).tobytes())


class FakeEngine:
    def __init__(self, kind, cudart, max_shapes):
        self.kind, self.cudart, self.max_shapes = kind, cudart, max_shapes

    def create_execution_context(self):
        return FakeContext(self)

    def get_tensor_profile_shape(self, name, profile):
        hi = self.max_shapes[name]
        return hi, hi, hi


def _records():
    f = lambda n, *s: TensorRecord(n, "float32", s)  # noqa: E731
    step = GraphRecord(
        graph="transformer",
        file="transformer.plan",
        files=("transformer.plan",),
        precision="fp16",
        height=32,
        width=32,
        inputs=(f("latents", "B", 4, 4, 4), f("timestep", "B"), f("prompt_embeds", "B", 3, 8)),
        outputs=(f("noise_pred", "B", 4, 4, 4),),
        bytes=1,
        runtime={},
    )
    update = GraphRecord(
        graph="lcm_update",
        file="lcm_update.plan",
        files=("lcm_update.plan",),
        precision="fp32",
        height=32,
        width=32,
        inputs=(f("latents", "B", 4, 4, 4), f("noise_pred", "B", 4, 4, 4), f("step_noise", "B", 4, 4, 4), f("coef", 3)),
        outputs=(f("latents_next", "B", 4, 4, 4),),
        bytes=1,
        runtime={},
    )
    return step, update


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    cu = FakeCudart()
    maxb = 4
    engines = {
        b"transformer": FakeEngine(
            "transformer", cu, {"latents": (maxb, 4, 4, 4), "timestep": (maxb,), "prompt_embeds": (maxb, 3, 8)}
        ),
        b"lcm_update": FakeEngine(
            "update",
            cu,
            {n: (maxb, 4, 4, 4) for n in ("latents", "noise_pred", "step_noise")} | {"coef": (3,)},
        ),
    }
    trt = types.SimpleNamespace(
        __version__="10.8.0",
        Logger=types.SimpleNamespace(WARNING=2, __call__=None),
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engines[data]),
    )
    trt.Logger = lambda level=None: None
    trt.Logger.WARNING = 2
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(runner, "_cudart", lambda: cu)
    (tmp_path / "transformer.plan").write_bytes(b"transformer")
    (tmp_path / "lcm_update.plan").write_bytes(b"lcm_update")
    return cu, runner.TrtRunner(tmp_path), engines


def test_step_loop_is_the_lcm_loop_in_one_cuda_graph(fake_gpu):
    cu, trt_runner, engines = fake_gpu
    step, update = _records()
    ts = lcm_timesteps(4)
    k_loop = loop.StepLoop(trt_runner, step, update, ts, alphas_cumprod().numpy())
    rng = np.random.default_rng(1)
    for batch in (2, 1, 2):  # a new batch captures its own graph; a seen one replays
        x = rng.standard_normal((batch, 4, 4, 4)).astype(np.float32)
        noise = rng.standard_normal((3, batch, 4, 4, 4)).astype(np.float32)
        feeds = {"latents": x, "prompt_embeds": np.zeros((batch, 3, 8), np.float32), "step_noise": noise}
        got = k_loop(feeds)
        np.testing.assert_allclose(got, _reference(x, noise, ts), rtol=1e-4, atol=1e-5)
    assert sorted(k_loop.graphs) == [(1,), (2,)] and cu.launches == 3
    # per step: 2 enqueues + 6 device copies (timestep, latents, noise_pred, noise, coef, latents back), all
    # in the graph; the last step copies no noise
    assert len(k_loop.graphs[(2,)]) == 4 * 8 - 1
    # the engines' buffers were bound once (the runner's), never rebound by the loop
    step_engine = trt_runner.engine(step)
    assert step_engine.context.addr["latents"] == step_engine.buffers["latents"][0]
    k_loop.close()
    assert not k_loop.graphs and len(cu.freed) == 3


def test_step_loop_refuses_a_batch_above_the_profile(fake_gpu):
    _cu, trt_runner, _ = fake_gpu
    step, update = _records()
    k_loop = loop.StepLoop(trt_runner, step, update, lcm_timesteps(4), alphas_cumprod().numpy())
    feeds = {
        "latents": np.zeros((5, 4, 4, 4), np.float32),
        "prompt_embeds": np.zeros((5, 3, 8), np.float32),
        "step_noise": np.zeros((3, 5, 4, 4, 4), np.float32),
    }
    with pytest.raises(Exception, match="above the engine's optimisation profile"):
        k_loop(feeds)
