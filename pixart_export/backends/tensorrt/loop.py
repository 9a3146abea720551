"""K LCM steps on TensorRT in one CUDA graph: the one-step `transformer` engine enqueued K times, the LCM
update between steps as a small elementwise engine, all captured once per batch and replayed.

Why (issue #16, point 7): the unrolled `denoiser_lcm{K}` graph shares its weights once in ONNX, but a
TensorRT engine built from it may hold one copy per step, and each engine owns its activation memory
(tight on a T4). Running the one-step engine K times holds the weights once by construction; capturing
the K steps in one CUDA graph removes the per-step launch cost that the unrolled engine avoids. So this
is the default K-step plan of the TensorRT targets (`K_STEP_PLAN`); the unrolled engine is used only
where a GPU measurement shows it faster (`benchmarks/gpu_acceptance.py` measures both), and the
manifest's build section says which a bundle runs (`plan_record`).

The LCM step (`reference.sampling.lcm_step`) is affine in (x, eps, noise) with scalars that depend on
the step only: x_next = a_k x + b_k eps + c_k noise_k, where with alpha-bar a, (c_skip, c_out) of t_k
and a' = alpha-bar of t_{k+1}: a_k = sqrt(a')(c_skip + c_out / sqrt(a)), b_k = -sqrt(a') c_out
sqrt(1 - a) / sqrt(a), c_k = sqrt(1 - a'); the last step has a' = 1 and c = 0 and gives the denoised
sample. `lcm_coefficients` computes them (numpy, no torch: this module is runtime code),
`lcm_update_model` writes the update as an ONNX graph (x, noise_pred, step_noise, coef[3] -> x_next)
for TensorRT to compile like the other graphs.

`StepLoop` drives the two engines through the runner's own engine objects (`TrtRunner.engine`): their
buffers are allocated once for the profile's maximum batch and bound once, so the loop never rebinds an
address; it moves data between them with device-to-device copies, which CUDA graphs capture like kernels.
Per batch: the first call runs the 2K enqueues eagerly (TensorRT's lazy set-up must not be captured),
then captures them into one graph; later calls replay it.

Wiring: a `trt-*` build writes the `lcm_update` graph (fp32, `graphs.LCM_UPDATE`, one per bucket) beside
the `transformer` graphs and checks it in onnxruntime against the reference LCM step (prepare.py);
`compile` builds its engine like the others; the build option `--trt-k-step-plan loop|unrolled` (default
loop) goes to the manifest's `build.k_step_plan` (`plan_record`), and `TrtRunner.run` sends a
`denoiser_lcm{K}` request through `StepLoop` where that plan is "loop" (`uses_loop`). The unrolled engine
stays in the bundle: the plan "unrolled" runs it, and so does the ControlNet denoiser (the loop has no
per-step ControlNet call). Verified with fake `tensorrt`/`cudart` modules (tests/test_tensorrt_loop.py);
not yet measured on a GPU.
"""

from __future__ import annotations

import numpy as np

#: The default K-step plan of the TensorRT targets, and the alternative kept where measured better.
K_STEP_PLAN = "one-step engine x K in one CUDA graph"
UNROLLED = "unrolled denoiser engine"
#: `build --trt-k-step-plan` values (`plan_record`'s "plan"), the first the default.
PLANS = ("loop", "unrolled")
#: LCM boundary-condition constants (reference.schedules: LCM_TIMESTEP_SCALING, LCM_SIGMA_DATA).
TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5


def lcm_coefficients(
    timesteps, alphas_cumprod, timestep_scaling: float = TIMESTEP_SCALING, sigma_data: float = SIGMA_DATA
) -> np.ndarray:
    """[K, 3] float32: (a_k, b_k, c_k) of x_next = a_k x + b_k eps + c_k noise_k (module docstring)."""
    acp = np.asarray(alphas_cumprod, np.float64)
    out = np.zeros((len(timesteps), 3), np.float64)
    for k, t in enumerate(timesteps):
        scaled = float(t) * timestep_scaling
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
        a = acp[int(t)]
        a_next = acp[int(timesteps[k + 1])] if k + 1 < len(timesteps) else 1.0
        out[k] = (
            np.sqrt(a_next) * (c_skip + c_out / np.sqrt(a)),
            -np.sqrt(a_next) * c_out * np.sqrt(1.0 - a) / np.sqrt(a),
            np.sqrt(1.0 - a_next),
        )
    return out.astype(np.float32)


def record_coefficients(lcm) -> np.ndarray:
    """`lcm_coefficients` from a manifest's `lcm` record, which keeps alpha-bar at its K timesteps only
    (aligned with `timesteps`): what the runtime and the build's check both use."""
    table = np.ones(lcm.num_train_timesteps, np.float64)
    table[[int(t) for t in lcm.timesteps]] = lcm.alphas_cumprod
    return lcm_coefficients(lcm.timesteps, table)


def lcm_update_model(channels: int, height: int, width: int):
    """ONNX graph `lcm_update` (`graphs.LCM_UPDATE`): latents, noise_pred, step_noise [B, C, h, w] and
    coef [3] -> latents_next, at the opset of the exported graphs."""
    from onnx import TensorProto, helper

    from ...graphs import LCM_UPDATE, OPSET

    shape = ["B", channels, height, width]

    def value(t):
        return helper.make_tensor_value_info(t.name, TensorProto.FLOAT, shape if len(t.dims) > 1 else list(t.dims))

    latents, eps, noise, coef = LCM_UPDATE.input_names
    nodes = [helper.make_node("Split", [coef], ["a", "b", "c"], axis=0, name="/lcm_update/Split")]  # 3 equal parts
    for src, k in ((latents, "a"), (eps, "b"), (noise, "c")):
        nodes.append(helper.make_node("Mul", [src, k], [f"{k}_term"], name=f"/lcm_update/Mul_{k}"))
    (out,) = LCM_UPDATE.output_names
    nodes.append(helper.make_node("Sum", ["a_term", "b_term", "c_term"], [out], name="/lcm_update/Sum"))
    graph = helper.make_graph(
        nodes, LCM_UPDATE.name, [value(t) for t in LCM_UPDATE.inputs], [value(t) for t in LCM_UPDATE.outputs]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def plan_record(k: int, plan: str = PLANS[0]) -> dict:
    """The build section's `k_step_plan`: which plan this bundle runs, and why."""
    if plan not in PLANS:
        raise ValueError(f"K-step plan {plan!r} is not one of {', '.join(PLANS)}")
    return {
        "plan": plan,
        "steps": k,
        "default": K_STEP_PLAN,
        "alternative": UNROLLED + " (where measured faster on the GPU: benchmarks/gpu_acceptance.py)",
        "runs": K_STEP_PLAN if plan == "loop" else UNROLLED,
        "why": "loop: weights once by construction; unrolled only where measured better, not measured on a GPU yet",
        "graphs": ["transformer", "lcm_update"] if plan == "loop" else [f"denoiser_lcm{k}"],
        "controlnet": UNROLLED + " (the loop has no per-step ControlNet call)",
    }


def uses_loop(manifest, record) -> bool:
    """Does this compiled folder run `record` (a `denoiser_lcm{K}` request) through `StepLoop`?

    Folders compiled since issue #23 say so in the record itself: `runtime["k_step_loop"]` names the
    transformer and lcm_update engines (`compile.loop_records`), and a denoiser record without it is the
    unrolled engine (built with `--both-plans`). Older folders: the plan "loop" and an lcm_update engine."""
    if "k_step_loop" in (record.runtime or {}):
        return True
    if any("k_step_loop" in (r.runtime or {}) for r in manifest.runnable):
        return False
    plan = (manifest.build or {}).get("k_step_plan") or {}
    return (
        plan.get("plan") == "loop"
        and record.graph == f"denoiser_lcm{manifest.steps}"
        and any(r.graph == "lcm_update" for r in manifest.runnable)
    )


def loop_engines(manifest, record):
    """(transformer record, lcm_update record) that run the `denoiser_lcm{K}` request `record`."""
    names = (record.runtime or {}).get("k_step_loop")
    if names:
        by_file = {r.file: r for r in manifest.runnable if r.graph != record.graph}
        return by_file[names["transformer"]], by_file[names["lcm_update"]]
    step = manifest.record("transformer", record.height, record.width, record.precision)
    return step, manifest.record("lcm_update", record.height, record.width)


class StepLoop:
    """K LCM steps through a `TrtRunner`: the `transformer` engine and the `lcm_update` engine, captured in
    one CUDA graph per batch (module docstring). `__call__(feeds)` takes the transformer's inputs (x_T as
    `latents`; `timestep` is set per step) plus `step_noise` [K-1, B, C, h, w] and returns the denoised
    latents [B, C, h, w]. The step coefficients: `coef` [K, 3] (`record_coefficients`), else computed from
    the full `alphas_cumprod` table."""

    #: Inputs of the one-step engine that the loop keeps at zero on the device: zeroed once when its buffers
    #: are set up, never uploaded per call (the loop has no ControlNet call; finding 5 of issue #23).
    RESIDENT_ZEROS = ("control_residuals",)

    def __init__(
        self, runner, transformer_record, update_record, timesteps, alphas_cumprod=None, coef=None, graph=None
    ):
        self.graph = graph  # the denoiser graph this loop runs (what `TrtRunner.release` names)
        self.cudart, self.ok = runner.cuda()  # runner.py's, through the runner: no import cycle
        self.capture = runner.capture
        self.use_graphs = True  # False once an enqueue failed inside a capture: eager from then on
        self.np_dtypes = runner.dtypes
        self.step = runner.engine(transformer_record)
        self.update = runner.engine(update_record)
        self.stream = self.step.stream
        self.timesteps = [float(t) for t in timesteps]
        self.coef = np.ascontiguousarray(
            coef if coef is not None else lcm_coefficients(timesteps, alphas_cumprod), np.float32
        )
        self.graphs: dict[tuple, object] = {}
        self._const: dict[str, tuple[int, int]] = {}  # loop-owned device buffers: name -> (ptr, bytes)
        self.max_batch = 0
        self.bytes_in = 0  # host -> device bytes of the last call (what a call moves, measured)

    def _h2d(self, ptr: int, arr: np.ndarray) -> None:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.ok(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
        self.bytes_in += arr.nbytes

    def _zero(self, ptr: int, nbytes: int) -> None:
        self.ok(self.cudart.cudaMemsetAsync(ptr, 0, nbytes, self.stream))

    def _setup(self) -> None:
        """Once per loop, before any capture: the engines' buffers (profile maximum, the runner's), the
        loop's own buffers for the profile's maximum batch, the constants uploaded, and the inputs no call
        writes zeroed. Nothing is allocated or freed after this, so every captured graph stays valid
        (finding 1 of issue #23: a buffer reallocated for a larger batch left the smaller batch's graph
        replaying on freed memory)."""
        cudart, ok = self.cudart, self.ok
        for engine in (self.step, self.update):
            if not engine.buffers:
                engine._allocate()
        k = len(self.timesteps)
        self.max_batch = int(self.step.max_shapes["latents"][0])
        image_bytes = int(np.prod(self.step.max_shapes["latents"][1:])) * 4
        sizes = {
            "timesteps": k * self.max_batch * 4,
            "coef": self.coef.nbytes,
            "step_noise": max(k - 1, 1) * self.max_batch * image_bytes,
        }
        for name, nbytes in sizes.items():
            self._const[name] = (ok(cudart.cudaMalloc(nbytes)), nbytes)
        # per step k, the batch's timesteps start at row k of a [K, max batch] table: one upload, any batch
        table = np.repeat(np.asarray(self.timesteps, np.float32)[:, None], self.max_batch, axis=1)
        self._h2d(self._const["timesteps"][0], np.ascontiguousarray(table))
        self._h2d(self._const["coef"][0], self.coef)
        # with K = 1 no step noise is ever copied: the update reads c = 0 times this buffer, which must not
        # be uninitialised memory (0 * NaN is NaN; finding 4 of issue #23)
        self._zero(*self.update.buffers["step_noise"])
        for name in self.RESIDENT_ZEROS:
            if name in self.step.buffers:
                self._zero(*self.step.buffers[name])
        ok(cudart.cudaStreamSynchronize(self.stream))

    def _copy(self, dst: int, src: int, nbytes: int) -> None:
        d2d = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.ok(self.cudart.cudaMemcpyAsync(dst, src, nbytes, d2d, self.stream))

    def _enqueue(self, engine) -> bool:
        return bool(engine.context.execute_async_v3(self.stream))

    def _run_eagerly(self, batch: int, latent_bytes: int) -> None:
        if not self._steps(batch, latent_bytes):
            raise RuntimeError(f"TensorRT failed to run {self.step.record.file} or {self.update.record.file}")

    def _steps(self, batch: int, latent_bytes: int) -> bool:
        """The 2K enqueues and their copies (what is captured); False as soon as an enqueue fails."""
        s, u = self.step.buffers, self.update.buffers
        t_ptr, c_ptr, n_ptr = self._const["timesteps"][0], self._const["coef"][0], self._const["step_noise"][0]
        t_bytes, row = 4 * batch, 4 * self.max_batch
        for k in range(len(self.timesteps)):
            self._copy(s["timestep"][0], t_ptr + k * row, t_bytes)
            if not self._enqueue(self.step):
                return False
            self._copy(u["latents"][0], s["latents"][0], latent_bytes)
            self._copy(u["noise_pred"][0], s["noise_pred"][0], latent_bytes)
            if k + 1 < len(self.timesteps):  # the last step has c = 0: any finite noise will do, keep the last
                self._copy(u["step_noise"][0], n_ptr + k * latent_bytes, latent_bytes)
            self._copy(u["coef"][0], c_ptr + k * 12, 12)
            if not self._enqueue(self.update):
                return False
            self._copy(s["latents"][0], u["latents_next"][0], latent_bytes)
        return True

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        cudart, ok = self.cudart, self.ok
        if not self._const:
            self._setup()
        self.bytes_in = 0
        x = np.ascontiguousarray(feeds["latents"], np.float32)
        batch, latent_bytes = x.shape[0], x.nbytes
        resident = {i.name: i for i in self.step.record.inputs if i.name in self.RESIDENT_ZEROS}
        fed = [i for i in self.step.record.inputs if i.name != "timestep" and i.name not in resident]
        step_feeds = {i.name: feeds[i.name] for i in fed}
        shapes = {n: a.shape for n, a in step_feeds.items()} | {"timestep": (batch,)}
        for name, inp in resident.items():  # their batch axis follows the call's; the zeros are already there
            shapes[name] = tuple(batch if d == "B" else int(d) for d in inp.shape)
        self.step._check_shapes(shapes)
        for inp in self.step.record.inputs:
            self.step._set_shape(inp.name, shapes[inp.name])
        for inp in self.update.record.inputs:
            self.update._set_shape(inp.name, (3,) if inp.name == "coef" else x.shape)
        dtypes = {i.name: self.np_dtypes[i.dtype] for i in self.step.record.inputs}
        for name, arr in step_feeds.items():  # x_T, captions, mask into the step engine's buffers
            self._h2d(self.step.buffers[name][0], np.ascontiguousarray(arr, dtype=dtypes[name]))
        noise = np.ascontiguousarray(feeds["step_noise"], np.float32)
        if noise.size:
            self._h2d(self._const["step_noise"][0], noise)
        key = (batch,)
        if self.use_graphs and key not in self.graphs:
            self._run_eagerly(batch, latent_bytes)  # eager first: TensorRT's lazy set-up must not be captured
            ok(cudart.cudaStreamSynchronize(self.stream))  # the eager run moved the latents: put x_T back
            self._h2d(self.step.buffers["latents"][0], x)
            graph = self.capture(cudart, self.stream, lambda: self._steps(batch, latent_bytes))
            if graph is None:  # an enqueue failed inside the capture (ended, discarded): eager from now on
                self.use_graphs = False
            else:
                self.graphs[key] = graph
        if self.use_graphs:
            ok(cudart.cudaGraphLaunch(self.graphs[key], self.stream))
        else:
            self._run_eagerly(batch, latent_bytes)
        out = np.empty_like(x)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ok(cudart.cudaMemcpyAsync(out.ctypes.data, self.step.buffers["latents"][0], out.nbytes, d2h, self.stream))
        ok(cudart.cudaStreamSynchronize(self.stream))
        return out

    def close(self) -> None:
        for g in self.graphs.values():
            self.ok(self.cudart.cudaGraphExecDestroy(g))
        self.graphs = {}
        for ptr, _ in self._const.values():
            self.ok(self.cudart.cudaFree(ptr))
        self._const = {}
