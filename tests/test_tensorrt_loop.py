"""backends/tensorrt/loop.py: the K-step plan (one-step engine x K in one CUDA graph) without a GPU.

The LCM coefficients and the `lcm_update` graph against the reference sampler; then `StepLoop` over the
real `TrtRunner` with fake `tensorrt` and `cudart` modules: device memory is simulated, engines compute a
known function of their inputs, and a CUDA graph records what is enqueued while capturing and replays
it. The loop's result must equal the reference LCM loop with the same function as the model."""

from __future__ import annotations

import ctypes
import dataclasses
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pixart_export import manifest as M
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
    # the manifest keeps alpha-bar at the K timesteps only: the same coefficients from that
    lcm = types.SimpleNamespace(
        num_train_timesteps=1000, timesteps=tuple(int(t) for t in ts), alphas_cumprod=[float(acp[int(t)]) for t in ts]
    )
    np.testing.assert_allclose(loop.record_coefficients(lcm), coef, rtol=1e-6)
    sess = ort.InferenceSession(loop.lcm_update_model(4, 4, 4).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x, eps, noise = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3))
    for k, t in enumerate(ts):
        last = k == len(ts) - 1
        nxt, n = (None, None) if last else (int(ts[k + 1]), torch.from_numpy(noise))
        want = lcm_step(torch.from_numpy(eps), torch.from_numpy(x), int(t), nxt, acp, n)[0].numpy()
        got = sess.run(None, {"latents": x, "noise_pred": eps, "step_noise": noise, "coef": coef[k]})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_plan_record_says_which_plan_the_bundle_runs():
    rec = loop.plan_record(4)
    assert rec["plan"] == "loop" and rec["default"] == loop.K_STEP_PLAN and rec["runs"] == loop.K_STEP_PLAN
    assert rec["why"].startswith("loop: weights once by construction") and "not measured on a GPU" in rec["why"]
    assert rec["graphs"] == ["transformer", "lcm_update"]
    unrolled = loop.plan_record(4, "unrolled")
    assert unrolled["runs"] == loop.UNROLLED and unrolled["graphs"] == ["denoiser_lcm4"]
    with pytest.raises(ValueError, match="not one of loop, unrolled"):
        loop.plan_record(4, "fast")


def test_build_option_picks_the_plan_default_loop():
    from pixart_export.backends.tensorrt import options
    from pixart_export.targets import TARGETS

    target = TARGETS["trt-t4"]
    assert options.options_from_args(None, target, types.SimpleNamespace())["k_step_plan"] == "loop"
    args = types.SimpleNamespace(trt_k_step_plan="unrolled")
    assert options.options_from_args(None, target, args)["k_step_plan"] == "unrolled"


def test_update_graph_is_the_graph_contract():
    from pixart_export.graphs import LCM_UPDATE, OPSET, spec_for_record

    model = loop.lcm_update_model(4, 4, 4)
    assert [i.name for i in model.graph.input] == LCM_UPDATE.input_names
    assert [o.name for o in model.graph.output] == LCM_UPDATE.output_names
    assert model.opset_import[0].version == OPSET  # what every TensorRT the targets allow parses
    rec = {"graph": "lcm_update", "inputs": [{"name": n} for n in LCM_UPDATE.input_names]}
    assert spec_for_record(rec, 4, False) is LCM_UPDATE and not LCM_UPDATE.torch_reference


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
        self.h2d_bytes = 0  # host -> device bytes copied (what a call moves)
        self.events: list[tuple] = []  # engines deserialized and destroyed, in order

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
        self.mem[ptr] = bytearray(b"\xff" * n)  # uninitialised device memory: NaN as float32
        return 0, ptr

    def cudaFree(self, ptr):  # freed memory is gone: a graph replayed on it fails loudly
        assert ptr in self.mem, f"double free of {ptr:#x}"
        del self.mem[ptr]
        self.freed.append(ptr)
        return (0,)

    def cudaMemsetAsync(self, ptr, value, n, stream):
        self.run(lambda: self.write(ptr, bytes([value]) * n))
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            assert self.capturing is None, "a host copy inside a captured graph would replay stale host memory"
            self.write(dst, ctypes.string_at(src, n))
            self.h2d_bytes += n
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
        if name == "prompt_embeds" and self.engine.kind == "text":  # the text encoder's output
            return (self.shapes["input_ids"][0], 3, 8)
        return self.shapes[name] if name in self.shapes else self.shapes["latents"]  # outputs: like the latents

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        self.runs += 1
        self.engine.cudart.run(self._compute)
        return True

    def _compute(self):
        cu = self.engine.cudart
        if self.engine.kind == "text":  # prompt_embeds = input_ids broadcast over 8 channels
            ids = cu.read(self.addr["input_ids"], 12 * self.shapes["input_ids"][0], np.float32)
            cu.write(self.addr["prompt_embeds"], np.repeat(ids, 8).astype(np.float32).tobytes())
            return
        b = self.shapes["latents"]
        n = int(np.prod(b)) * 4

        def get(name, count=n):
            return cu.read(self.addr[name], count, np.float32)

        x = get("latents").reshape(b)
        if self.engine.kind == "transformer":
            out = _eps(x, get("timestep", 4 * b[0]))
            cu.write(self.addr["noise_pred"], out.tobytes())
        elif self.engine.kind == "denoiser":  # the unrolled engine: any other function will do
            cu.write(self.addr["denoised"], (2.0 * x).astype(np.float32).tobytes())
        else:
            a, bb, c = get("coef", 12)
            out = a * x + bb * get("noise_pred").reshape(b) + c * get("step_noise").reshape(b)
            cu.write(self.addr["latents_next"], out.astype(np.float32).tobytes())


class FakeEngine:
    def __init__(self, kind, cudart, max_shapes, events=None):
        self.kind, self.cudart, self.max_shapes, self.events = kind, cudart, max_shapes, events

    def deserialized(self, events: list):
        """A fresh engine object, as `deserialize_cuda_engine` gives, that logs its own destruction."""
        events.append(("deserialize", self.kind))
        return FakeEngine(self.kind, self.cudart, self.max_shapes, events)

    def __del__(self):
        if self.events is not None:
            self.events.append(("destroy", self.kind))

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
        b"transformer-residuals": FakeEngine(
            "transformer",
            cu,
            {"latents": (maxb, 4, 4, 4), "timestep": (maxb,), "prompt_embeds": (maxb, 3, 8)}
            | {"control_residuals": (1, maxb, 4, 8)},
        ),
        b"text_encoder": FakeEngine("text", cu, {"input_ids": (maxb, 3)}),
        b"denoiser": FakeEngine(
            "denoiser",
            cu,
            {"latents": (maxb, 4, 4, 4), "step_noise": (3, maxb, 4, 4, 4), "prompt_embeds": (maxb, 3, 8)},
        ),
    }
    trt = types.SimpleNamespace(
        __version__="10.8.0",
        Logger=types.SimpleNamespace(WARNING=2, __call__=None),
        Runtime=lambda logger: types.SimpleNamespace(
            deserialize_cuda_engine=lambda data: engines[data].deserialized(cu.events)
        ),
    )
    trt.Logger = lambda level=None: None
    trt.Logger.WARNING = 2
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(runner, "_cudart", lambda: cu)
    (tmp_path / "transformer.plan").write_bytes(b"transformer")
    (tmp_path / "lcm_update.plan").write_bytes(b"lcm_update")
    (tmp_path / "transformer-residuals.plan").write_bytes(b"transformer-residuals")
    (tmp_path / "denoiser.plan").write_bytes(b"denoiser")
    (tmp_path / "text_encoder.plan").write_bytes(b"text_encoder")
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


# -- the runner: a compiled folder's `denoiser_lcm4` request through the loop (or the unrolled engine) -------
def _compiled(plan: str, residuals: bool = True) -> M.Manifest:
    """A compiled manifest with the transformer (whose `control_residuals` the denoiser request lacks),
    lcm_update and unrolled denoiser engines, and `plan` in `build.k_step_plan`."""
    f = lambda n, *s: TensorRecord(n, "float32", s)  # noqa: E731
    step, update = _records()
    if residuals:
        step = dataclasses.replace(
            step, file="transformer-residuals.plan", inputs=(*step.inputs, f("control_residuals", 1, "B", 4, 8))
        )
    denoiser = dataclasses.replace(
        step,
        graph="denoiser_lcm4",
        file="denoiser.plan",
        files=("denoiser.plan",),
        inputs=(f("latents", "B", 4, 4, 4), f("step_noise", 3, "B", 4, 4, 4), f("prompt_embeds", "B", 3, 8)),
        outputs=(f("denoised", "B", 4, 4, 4),),
    )
    engines = (step, update, denoiser)
    return M.Manifest(
        schema_version=M.SCHEMA_VERSION,
        toolchain={},
        target="trt-t4",
        backend=M.BackendInfo("tensorrt", "10.8.0", ("10.0", None)),
        device=M.Device(kind="gpu", arch="sm_75", sm=75),
        model=M.ModelRecord("tiny", None, "tiny", False, "c", "w", "i"),
        build_key="k",
        status="compiled",
        steps=4,
        lcm=M.LcmRecord(
            "diffusers",
            1000,
            tuple(int(t) for t in lcm_timesteps(4)),
            (0.0,) * 4,
            (1.0,) * 4,
            tuple(float(alphas_cumprod()[int(t)]) for t in lcm_timesteps(4)),  # at the K timesteps, as built
        ),  # fmt: skip
        resolutions=((32, 32),),
        latent_channels=4,
        vae_scale_factor=8,
        tokenizer=M.TokenizerRecord("tokenizers", "tokenizer", 120, 0, "T5"),
        graphs=(),
        engines=engines,
        default_precision=M.Precision.FP16,
        parity=None,
        files={},
        build={"k_step_plan": loop.plan_record(4, plan)},
    )


def _request(batch: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 4, 4, 4)).astype(np.float32)
    noise = rng.standard_normal((3, batch, 4, 4, 4)).astype(np.float32)
    return {"latents": x, "step_noise": noise, "prompt_embeds": np.zeros((batch, 3, 8), np.float32)}


def test_runner_runs_the_denoiser_request_through_the_loop(fake_gpu):
    cu, _, engines = fake_gpu
    manifest = _compiled("loop")
    trt_runner = runner.TrtRunner(fake_gpu[1].folder, manifest=manifest)
    denoiser = manifest.record("denoiser_lcm4", 32, 32)
    assert loop.uses_loop(manifest, denoiser)
    for batch, seed in ((2, 3), (1, 4), (2, 5)):
        feeds = _request(batch, seed)
        (got,) = trt_runner.run(denoiser, feeds)
        want = _reference(feeds["latents"], feeds["step_noise"], lcm_timesteps(4))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    k_loop = trt_runner.step_loop(denoiser)
    assert k_loop.step.record.graph == "transformer" and k_loop.update.record.graph == "lcm_update"
    assert sorted(k_loop.graphs) == [(1,), (2,)] and cu.launches == 3  # one CUDA graph per batch
    assert "denoiser.plan" not in trt_runner._engines  # the unrolled engine was never loaded
    residuals = trt_runner.engine(k_loop.step.record).buffers["control_residuals"]
    assert not cu.read(residuals[0], residuals[1], np.float32).any()  # zeros: no ControlNet in this request
    trt_runner.close()
    assert not trt_runner._loops and not trt_runner._engines


def test_runner_runs_the_unrolled_engine_where_the_plan_says_so(fake_gpu):
    cu, _, _ = fake_gpu
    manifest = _compiled("unrolled")
    trt_runner = runner.TrtRunner(fake_gpu[1].folder, manifest=manifest)
    denoiser = manifest.record("denoiser_lcm4", 32, 32)
    assert not loop.uses_loop(manifest, denoiser) and trt_runner.step_loop(denoiser) is None
    feeds = _request(2, 6)
    (got,) = trt_runner.run(denoiser, feeds)
    np.testing.assert_array_equal(got, 2.0 * feeds["latents"])
    assert cu.launches == 0 and list(trt_runner._engines) == ["denoiser.plan"]
    # a folder compiled without an lcm_update engine (an older bundle) runs the unrolled engine too
    older = dataclasses.replace(
        _compiled("loop"), engines=tuple(e for e in manifest.engines if e.graph != "lcm_update")
    )
    assert not loop.uses_loop(older, denoiser)


# -- issue #23: no replay on freed memory, --steps 1, no per-call zero upload, released engines -----------
def _loop_feeds(rng, batch: int, k: int = 4) -> dict[str, np.ndarray]:
    return {
        "latents": rng.standard_normal((batch, 4, 4, 4)).astype(np.float32),
        "prompt_embeds": np.zeros((batch, 3, 8), np.float32),
        "step_noise": rng.standard_normal((k - 1, batch, 4, 4, 4)).astype(np.float32),
    }


@pytest.mark.parametrize("batches", [(1, 2, 1), (2, 1, 2), (1, 3, 2, 4, 1)])
def test_step_loop_graphs_stay_valid_whatever_the_batch_order(fake_gpu, batches):
    """A batch larger than an earlier one must not move a buffer an earlier graph replays (finding 1: on
    this fake GPU 1 -> 2 -> 1 replayed batch 1's graph on freed memory). Nothing is freed while the loop
    lives, and every call equals the reference."""
    cu, trt_runner, _ = fake_gpu
    step, update = _records()
    ts = lcm_timesteps(4)
    k_loop = loop.StepLoop(trt_runner, step, update, ts, alphas_cumprod().numpy())
    rng = np.random.default_rng(7)
    for batch in batches:
        feeds = _loop_feeds(rng, batch)
        got = k_loop(feeds)
        np.testing.assert_allclose(got, _reference(feeds["latents"], feeds["step_noise"], ts), rtol=1e-4, atol=1e-5)
    assert not cu.freed and sorted(k_loop.graphs) == sorted((b,) for b in set(batches))
    assert cu.launches == len(batches)


def test_runner_loop_walks_one_two_one_and_chunked_calls(fake_gpu):
    """Through `TrtRunner.run` as the pipeline calls it: 1 -> 2 -> 1, then chunked calls of 3 images at a
    maximum batch of 2 (2, 1, 2, 1)."""
    cu, _, _ = fake_gpu
    manifest = _compiled("loop")
    trt_runner = runner.TrtRunner(fake_gpu[1].folder, manifest=manifest)
    denoiser = manifest.record("denoiser_lcm4", 32, 32)
    for i, batch in enumerate((1, 2, 1, 2, 1, 2, 1)):
        feeds = _request(batch, 20 + i)
        (got,) = trt_runner.run(denoiser, feeds)
        want = _reference(feeds["latents"], feeds["step_noise"], lcm_timesteps(4))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not cu.freed


def test_one_step_loop_reads_no_uninitialised_noise(fake_gpu):
    """`--steps 1` (finding 4): no step noise is ever copied, and fresh device memory here is NaN; the
    update's `c = 0` times that buffer must still give the denoised latents."""
    _cu, trt_runner, _ = fake_gpu
    step, update = _records()
    ts = lcm_timesteps(1)
    k_loop = loop.StepLoop(trt_runner, step, update, ts, alphas_cumprod().numpy())
    rng = np.random.default_rng(8)
    for batch in (1, 2):
        feeds = _loop_feeds(rng, batch, k=1)
        got = k_loop(feeds)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, _reference(feeds["latents"], feeds["step_noise"], ts), rtol=1e-4, atol=1e-5)


def test_loop_uploads_no_control_residual_zeros(fake_gpu):
    """Finding 5: per call only x_T, the captions and the step noise go host -> device; the one-step
    engine's `control_residuals` are zeroed once on the device. Measured in bytes by the fake GPU."""
    cu, _, _ = fake_gpu
    manifest = _compiled("loop")
    trt_runner = runner.TrtRunner(fake_gpu[1].folder, manifest=manifest)
    denoiser = manifest.record("denoiser_lcm4", 32, 32)
    trt_runner.run(denoiser, _request(2, 30))  # set-up and capture
    for batch, first in ((1, True), (2, False), (1, False)):
        feeds = _request(batch, 31)
        before = cu.h2d_bytes
        trt_runner.run(denoiser, feeds)
        moved = cu.h2d_bytes - before
        want = feeds["latents"].nbytes + feeds["prompt_embeds"].nbytes + feeds["step_noise"].nbytes
        assert moved == want + (feeds["latents"].nbytes if first else 0)  # a capturing call puts x_T back
        assert trt_runner.step_loop(denoiser).bytes_in == moved
    step_engine = trt_runner.step_loop(denoiser).step
    ptr, size = step_engine.buffers["control_residuals"]
    assert not cu.read(ptr, size, np.float32).any()


def test_release_destroys_the_text_encoder_before_the_denoiser_loads(fake_gpu):
    """Finding 6 (`--low-memory`): `release(["text_encoder"])` destroys its context and engine and frees its
    buffers before the loop's engines are deserialized; a released graph loads again on its next run, and
    releasing the denoiser releases the K-step loop's engines."""
    cu, _, _ = fake_gpu
    manifest = _compiled("loop")
    f = lambda n, *sh: TensorRecord(n, "float32", sh)  # noqa: E731
    text = dataclasses.replace(
        manifest.engines[0],
        graph="text_encoder",
        file="text_encoder.plan",
        files=("text_encoder.plan",),
        inputs=(f("input_ids", "B", 3),),
        outputs=(f("prompt_embeds", "B", 3, 8),),
    )
    manifest = dataclasses.replace(manifest, engines=(*manifest.engines, text))
    trt_runner = runner.TrtRunner(fake_gpu[1].folder, manifest=manifest)
    ids = np.arange(6, dtype=np.float32).reshape(2, 3)
    (embeds,) = trt_runner.run(text, {"input_ids": ids})
    np.testing.assert_array_equal(embeds, np.repeat(ids, 8).reshape(2, 3, 8))
    text_buffers = [p for p, _ in trt_runner.engine(text).buffers.values()]
    assert trt_runner.loaded == {"text_encoder"}
    trt_runner.release(["text_encoder"])
    assert trt_runner.loaded == set()
    assert cu.events == [("deserialize", "text"), ("destroy", "text")]
    assert set(text_buffers) <= set(cu.freed) and "text_encoder.plan" not in trt_runner._engines
    denoiser = manifest.record("denoiser_lcm4", 32, 32)
    feeds = _request(2, 40) | {"prompt_embeds": embeds}
    (got,) = trt_runner.run(denoiser, feeds)
    want = _reference(feeds["latents"], feeds["step_noise"], lcm_timesteps(4))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert cu.events[2:] == [("deserialize", "transformer"), ("deserialize", "update")]
    assert trt_runner.loaded == {"denoiser_lcm4", "transformer", "lcm_update"}
    trt_runner.release(["denoiser_lcm4"])
    assert trt_runner.loaded == set()
    assert sorted(cu.events[4:]) == [("destroy", "transformer"), ("destroy", "update")]
    assert not trt_runner._engines and not trt_runner._loops
    (again,) = trt_runner.run(text, {"input_ids": ids})  # lazily loaded again
    np.testing.assert_array_equal(again, embeds)
    assert cu.events[-1] == ("deserialize", "text")


def test_an_enqueue_failing_inside_the_capture_falls_back_to_eager(fake_gpu, monkeypatch):
    """Finding 8: an enqueue inside the capture is checked; on failure the capture is ended and discarded
    (a half-captured graph is never launched) and the loop, or the unrolled engine, runs eagerly."""
    cu, _, _ = fake_gpu
    real = FakeContext.execute_async_v3

    def refuses_capture(self, stream):
        return False if cu.capturing is not None else real(self, stream)

    monkeypatch.setattr(FakeContext, "execute_async_v3", refuses_capture)
    for plan in ("loop", "unrolled"):
        trt_runner = runner.TrtRunner(fake_gpu[1].folder, manifest=_compiled(plan), cuda_graph=True)
        denoiser = trt_runner.manifest.record("denoiser_lcm4", 32, 32)
        for batch in (2, 1, 2):
            feeds = _request(batch, 70 + batch)
            (got,) = trt_runner.run(denoiser, feeds)
            if plan == "loop":
                want = _reference(feeds["latents"], feeds["step_noise"], lcm_timesteps(4))
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            else:
                np.testing.assert_array_equal(got, 2.0 * feeds["latents"])
        assert cu.capturing is None and cu.launches == 0
        held = trt_runner.step_loop(denoiser) or trt_runner.engine(denoiser)
        assert not held.graphs
