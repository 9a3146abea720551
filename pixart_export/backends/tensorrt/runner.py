"""Runs the engines of a compiled TensorRT folder: `TrtRunner.run(record, feeds)` for `runtime.Pipeline`.

    from pixart_export import runtime
    pipe = runtime.load("engines/trt-t4-tiny")          # a compiled bundle (after `pixart-export compile`)
    pipe("a red circle above a blue square", seed=0)[0].save("x.png")

Imports numpy, tensorrt and cuda-python only (no torch), and only when used: the host probes
(`probe_tensorrt`, `probe_device`, `cuda_stack`) live here so that `runtime.load` never imports the
compile stage. The host checks (the bundle is compiled, its engines were built for this GPU
architecture and TensorRT version, TensorRT and cuda-python are of one CUDA major) are
`TensorRT.check_host`'s, run by `runtime.load` before a runner is made. The records it runs are the
manifest's `engines` (the pipeline picks fp16 or int8 ones through `Manifest.record`).

Buffers: each engine's device buffers are allocated once, for its optimisation profile's largest
shapes (the maximum batch), and their addresses are bound once; a call sets its input shapes (return
values checked) and copies only the bytes of its batch. A batch above the profile is refused before
anything runs. So a buffer never moves while the engine lives, and a CUDA graph captured at any batch
stays valid: `cuda_graph=True` captures the denoiser's enqueue on first use per batch and replays it
(the denoiser is one engine call, so the saving is the launch overhead of its few thousand kernels).
Tested against fake `tensorrt`/cudart modules (tests/test_tensorrt_runner.py, batch 1 -> 2 -> 1 with
CUDA graphs); on a GPU only in the tests marked `gpu`.

CUDA stacks: TensorRT comes per CUDA major (`tensorrt-cu12`, `tensorrt-cu13`) and cuda-python must be
of the same major; cuda-python 13 needs an R580+ driver, and on an older one every CUDA call fails with
cudaErrorInsufficientDriver (35). `device_status` says so, with the extra to install for the driver.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...manifest import EngineError, GraphRecord, version_tuple

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
#: The extra of each CUDA major (pyproject.toml): TensorRT and cuda-python of that major.
EXTRAS = {12: "tensorrt-cu12", 13: "tensorrt-cu13"}
#: The first TensorRT with wheels for each CUDA major (tensorrt-cu13 starts at 10.13).
FIRST_TENSORRT = {12: "10.0", 13: "10.13"}
#: Oldest driver branch per CUDA major (NVIDIA's CUDA compatibility table: minor-version compatibility).
MIN_DRIVER = {12: "R525", 13: "R580"}
#: cudaError_t codes whose cause is the host set-up, and what that means.
CUDA_ERRORS = {
    3: "the driver could not initialise (is the GPU visible in this container?)",
    34: "only the CUDA stub library was found: no NVIDIA driver is installed or mounted",
    35: "the NVIDIA driver is older than this cuda-python's CUDA runtime needs",
    100: "no CUDA-capable GPU is visible (CUDA_VISIBLE_DEVICES, or a container started without GPUs)",
}


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def cuda_error_text(err) -> str:
    """`cudaErrorInsufficientDriver (35)`: a cudaError_t's name and code."""
    name = getattr(err, "name", None)
    if not name:
        try:
            got = _cudart().cudaGetErrorName(err)
            raw = got[1] if isinstance(got, tuple) else got
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
        except Exception:  # noqa: BLE001 - a name is a nicety; the code is what matters
            name = "cudaError"
    return f"{name} ({int(err)})"


def _ok(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {cuda_error_text(err)}")
    return rest[0] if len(rest) == 1 else rest


def version_allowed(version: str, allowed: tuple[str, str | None]) -> bool:
    """`allowed` = (min, max or None), inclusive, compared on the leading components given
    (max "10.4" admits 10.4.0.26 but not 10.5)."""
    lo, hi = allowed
    v = version_tuple(version)
    if v[: len(version_tuple(lo))] < version_tuple(lo):
        return False
    return hi is None or v[: len(version_tuple(hi))] <= version_tuple(hi)


def cuda_majors(allowed: tuple[str, str | None]) -> tuple[int, ...]:
    """The CUDA majors that have a TensorRT inside `allowed` (min, max or None)."""
    hi = allowed[1]
    return tuple(m for m, first in FIRST_TENSORRT.items() if hi is None or version_allowed(first, ("0", hi)))


def pip_tensorrt(allowed: tuple[str, str | None], cuda_major: int) -> str:
    """`pip install ...` for a TensorRT inside `allowed` with the cuda-python of `cuda_major`."""
    lo, hi = allowed
    if hi is None:
        return f"pip install 'pixart-export[{EXTRAS[cuda_major]}]'"
    below = f"{hi.split('.')[0]}.{int(hi.split('.')[1]) + 1}"
    return f"pip install 'tensorrt-cu{cuda_major}>={lo},<{below}' 'cuda-python>={cuda_major},<{cuda_major + 1}'"


def probe_tensorrt():
    """The `tensorrt` module, or None when it is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt

    return tensorrt


def cuda_stack() -> dict:
    """{"tensorrt_cuda": CUDA major of the installed TensorRT wheels or None, "cuda_python": version or
    None}, from the installed distributions' names (`tensorrt-cu12-bindings`, `cuda-python`, ...)."""
    import importlib.metadata

    majors, cuda_python = set(), None
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())
        m = re.fullmatch(r"tensorrt-cu(\d+)(-bindings|-libs)?", name)
        if m:
            majors.add(int(m.group(1)))
        elif name in ("cuda-python", "cuda-bindings") and (cuda_python is None or name == "cuda-bindings"):
            cuda_python = dist.version
    return {"tensorrt_cuda": majors.pop() if len(majors) == 1 else None, "cuda_python": cuda_python}


def cuda_stack_problem(stack: dict, allowed: tuple[int, ...] = tuple(EXTRAS), hint: str | None = None) -> str | None:
    """Why this TensorRT / cuda-python pair cannot work (None if it can): one CUDA major, one in `allowed`.
    `hint`: the install line to give instead of the extras of `allowed`."""
    trt_major = stack.get("tensorrt_cuda")
    py = stack.get("cuda_python")
    py_major = version_tuple(py)[0] if py else None
    if trt_major is not None and trt_major not in allowed:
        extras = " or ".join(f"'pixart-export[{EXTRAS[m]}]'" for m in allowed if m in EXTRAS)
        return (
            f"TensorRT for CUDA {trt_major} is installed; this needs CUDA {' or '.join(map(str, allowed))}: "
            f"{hint or 'pip install ' + extras}"
        )
    if trt_major is not None and py_major is not None and trt_major != py_major:
        extra = EXTRAS.get(trt_major, f"tensorrt-cu{trt_major}")
        fix = hint or f"pip install 'pixart-export[{extra}]'"
        return f"TensorRT for CUDA {trt_major} with cuda-python {py} (CUDA {py_major}): install one CUDA major, {fix}"
    return None


def advice_for_cuda_error(code: int, driver_cuda: int | None, cuda_python: str | None) -> str:
    """What to do about cudaGetDeviceCount's error `code`, given the driver's CUDA version (e.g. 12040,
    from cudaDriverGetVersion; None/0 without a driver) and the installed cuda-python version."""
    cause = CUDA_ERRORS.get(code, "the CUDA runtime could not reach a GPU")
    if code != 35:
        return cause
    if not driver_cuda:
        return f"{cause}; no driver version could be read: install the NVIDIA driver"
    major, minor = driver_cuda // 1000, driver_cuda % 1000 // 10
    py_major = version_tuple(cuda_python)[0] if cuda_python else None
    fits = [m for m in EXTRAS if m <= major]
    said = f"{cause}: the driver supports CUDA {major}.{minor}" + (
        f", cuda-python {cuda_python} needs CUDA {py_major} ({MIN_DRIVER.get(py_major, 'a newer driver')}+)"
        if py_major
        else ""
    )
    if not fits:
        return f"{said}; TensorRT 10 needs CUDA 12: update the driver to {MIN_DRIVER[12]} or newer"
    best = max(fits)
    return (
        f"{said}; for this driver install the CUDA {best} stack: pip install 'pixart-export[{EXTRAS[best]}]' "
        f"(TensorRT and cuda-python {best}.x), or update the driver to {MIN_DRIVER[max(EXTRAS)]}+ for "
        f"{EXTRAS[max(EXTRAS)]}"
    )


def device_status() -> tuple[dict | None, str]:
    """({"name", "sm", "driver"} of GPU 0, "") or (None, why there is none and what to do)."""
    try:
        cudart = _cudart()
    except ImportError:
        return None, "cuda-python is not installed: pip install 'pixart-export[tensorrt-cu12]' (or tensorrt-cu13)"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        derr, driver = cudart.cudaDriverGetVersion()
        driver = int(driver) if int(derr) == 0 else None
        py = cuda_stack()["cuda_python"]
        if int(err) == 0:
            return None, "cudaGetDeviceCount found no GPU: " + CUDA_ERRORS[100]
        return None, f"cudaGetDeviceCount failed with {cuda_error_text(err)}: " + advice_for_cuda_error(
            int(err), driver, py
        )
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None, f"cudaGetDeviceProperties failed with {cuda_error_text(err)}"
    err, driver = cudart.cudaDriverGetVersion()
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    device = {"name": name, "sm": props.major * 10 + props.minor, "driver": f"{driver // 1000}.{driver % 1000 // 10}"}
    return device, ""


def probe_device() -> dict | None:
    """{"name", "sm", "driver"} of GPU 0 via cuda-python, or None without a GPU/driver (`device_status`
    says why)."""
    return device_status()[0]


def no_device_reason() -> str:
    return device_status()[1] or "no NVIDIA GPU is visible"


def capture_graph(cudart, stream, enqueue):
    """`enqueue()` captured into an instantiated CUDA graph, or None where an enqueue inside the capture
    failed (`enqueue` returns False or raises): the capture is then ended and its graph discarded, and the
    caller runs eagerly, as trtexec falls back; a half-captured graph is never launched (issue #23)."""
    _ok(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
    try:
        ok = bool(enqueue())
    except Exception:  # noqa: BLE001 - the capture must be ended whatever went wrong inside it
        ok = False
    err, *rest = cudart.cudaStreamEndCapture(stream)
    graph = rest[0] if rest else None
    if not ok or int(err) != 0:
        if graph is not None and int(err) == 0:
            _ok(cudart.cudaGraphDestroy(graph))
        return None
    exec_graph = _ok(cudart.cudaGraphInstantiate(graph, 0))
    _ok(cudart.cudaGraphDestroy(graph))  # the instantiated graph is what is replayed
    return exec_graph


class _Engine:
    """One deserialized engine, its execution context, and device buffers for its profile's largest shapes,
    allocated and bound once (so CUDA graphs captured at any batch stay valid)."""

    def __init__(self, runtime, path: Path, record: GraphRecord, stream, cuda_graph: bool, plan: bytes | None = None):
        # `plan`: the bytes of the checked file (manifest.HeldFiles), else read from `path`
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes() if plan is None else plan)
        if self.engine is None:
            raise EngineError(
                f"{path}: TensorRT could not deserialize it (another TensorRT version or GPU?); "
                "recompile the bundle on this host"
            )
        self.context = self.engine.create_execution_context()
        self.record, self.stream, self.cuda_graph = record, stream, cuda_graph
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes at the profile's max)
        self.max_shapes: dict[str, tuple[int, ...]] = {}
        self.graphs: dict[tuple, object] = {}  # input shapes -> instantiated CUDA graph

    def _set_shape(self, name: str, shape) -> None:
        if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise EngineError(
                f"{self.record.file}: TensorRT refused shape {tuple(shape)} for input {name} (profile "
                f"maximum {self.max_shapes.get(name)})"
            )

    def _allocate(self) -> None:
        """Buffers for the profile's maximum input shapes and the output shapes they give; bound once."""
        cudart = _cudart()
        for inp in self.record.inputs:
            _lo, _opt, hi = self.engine.get_tensor_profile_shape(inp.name, 0)
            self.max_shapes[inp.name] = tuple(int(d) for d in hi)
            self._set_shape(inp.name, self.max_shapes[inp.name])
        for t in self.record.inputs + self.record.outputs:
            shape = tuple(self.context.get_tensor_shape(t.name))
            size = int(np.prod(shape)) * np.dtype(_NP[t.dtype]).itemsize
            ptr = _ok(cudart.cudaMalloc(max(size, 1)))
            self.buffers[t.name] = (ptr, size)
            if not self.context.set_tensor_address(t.name, ptr):
                raise EngineError(f"{self.record.file}: TensorRT refused the buffer address of {t.name}")

    def _check_batch(self, feeds: dict[str, np.ndarray]) -> None:
        self._check_shapes({inp.name: feeds[inp.name].shape for inp in self.record.inputs})

    def _check_shapes(self, shapes: dict[str, tuple]) -> None:
        for inp in self.record.inputs:
            got, hi = tuple(shapes[inp.name]), self.max_shapes[inp.name]
            if len(got) != len(hi) or any(g > h for g, h in zip(got, hi)):
                raise EngineError(
                    f"{self.record.file}: input {inp.name} has shape {got}, above the engine's optimisation "
                    f"profile (max {hi}, batch <= {hi[0] if hi else '?'}); split the batch, or build a "
                    "bundle for a target with a larger batch"
                )

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = _cudart()
        if not self.buffers:
            self._allocate()
        self._check_batch(feeds)
        for inp in self.record.inputs:
            self._set_shape(inp.name, feeds[inp.name].shape)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for inp in self.record.inputs:
            arr = np.ascontiguousarray(feeds[inp.name], dtype=_NP[inp.dtype])
            _ok(cudart.cudaMemcpyAsync(self.buffers[inp.name][0], arr.ctypes.data, arr.nbytes, h2d, self.stream))
        key = tuple(tuple(feeds[inp.name].shape) for inp in self.record.inputs)
        if self.cuda_graph:
            if key not in self.graphs:
                if not self.context.execute_async_v3(self.stream):  # warm-up: TensorRT's lazy set-up
                    raise RuntimeError(f"TensorRT failed to run {self.record.file}")  # must not be captured
                graph = capture_graph(cudart, self.stream, lambda: self.context.execute_async_v3(self.stream))
                if graph is None:  # an enqueue failed inside the capture: this engine runs eagerly
                    self.cuda_graph = False
                else:
                    self.graphs[key] = graph
        if self.cuda_graph:
            _ok(cudart.cudaGraphLaunch(self.graphs[key], self.stream))
        elif not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT failed to run {self.record.file}")
        outs = []
        for out in self.record.outputs:
            arr = np.empty(tuple(self.context.get_tensor_shape(out.name)), _NP[out.dtype])
            _ok(cudart.cudaMemcpyAsync(arr.ctypes.data, self.buffers[out.name][0], arr.nbytes, d2h, self.stream))
            outs.append(arr)
        _ok(cudart.cudaStreamSynchronize(self.stream))
        return outs

    def close(self) -> None:
        """Destroy the CUDA graphs first, then free the buffers they point into."""
        cudart = _cudart()
        for g in self.graphs.values():
            _ok(cudart.cudaGraphExecDestroy(g))
        self.graphs = {}
        for ptr, _ in self.buffers.values():
            _ok(cudart.cudaFree(ptr))
        self.buffers = {}

    def destroy(self) -> None:
        """`close`, then the execution context and the engine themselves (context first, as TensorRT
        requires): their device memory is back before another engine is deserialized (`--low-memory`)."""
        self.close()
        self.context = None
        self.engine = None


class TrtRunner:
    """The `GraphRunner` of a compiled folder: one engine per plan file, deserialized on first use, all
    on one CUDA stream. `cuda_graph=True`: the denoiser's enqueue is captured and replayed per batch.
    `manifest` (the folder's): where its `build.k_step_plan` is "loop", a `denoiser_lcm{K}` request runs
    as the `transformer` and `lcm_update` engines K times in one CUDA graph (`loop.StepLoop`), not as the
    unrolled engine; without a manifest every record runs its own engine."""

    def __init__(self, folder: Path, cuda_graph: bool = False, manifest=None, files=None):
        import tensorrt as trt

        self.folder = Path(folder)
        self.files = files  # manifest.HeldFiles: the checked files, held open since the check
        self.cuda_graph = cuda_graph
        self.manifest = manifest
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._stream = _ok(_cudart().cudaStreamCreate())
        self._engines: dict[str, _Engine] = {}
        self._loops: dict[str, object] = {}  # denoiser engine file -> its StepLoop

    #: numpy dtype of each manifest tensor dtype (what `loop.StepLoop` uploads with).
    dtypes = _NP

    @staticmethod
    def cuda():
        """(cudart, result checker): the CUDA calls of this module, for `loop.StepLoop`."""
        return _cudart(), _ok

    #: `capture_graph`, for `loop.StepLoop`.
    capture = staticmethod(capture_graph)

    def engine(self, record: GraphRecord) -> _Engine:
        if record.file not in self._engines:
            self._engines[record.file] = _Engine(
                self._runtime,
                self.folder / record.file,
                record,
                self._stream,
                self.cuda_graph and record.graph.startswith("denoiser"),
                None if self.files is None else self.files.read(record.file),
            )
        return self._engines[record.file]

    def step_loop(self, record: GraphRecord):
        """The `StepLoop` that runs the `denoiser_lcm{K}` engine record `record`'s request, or None where
        this folder's plan runs the unrolled engine (`loop.uses_loop`)."""
        from .loop import StepLoop, loop_engines, record_coefficients, uses_loop

        if self.manifest is None or not uses_loop(self.manifest, record):
            return None
        if record.file not in self._loops:
            m = self.manifest
            step, update = loop_engines(m, record)
            coef = record_coefficients(m.lcm)
            self._loops[record.file] = StepLoop(self, step, update, m.lcm.timesteps, coef=coef, graph=record.graph)
        return self._loops[record.file]

    def run(self, record: GraphRecord, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        k_loop = self.step_loop(record)
        if k_loop is None:
            return self.engine(record)(feeds)
        # the one-step engine's `control_residuals` stay zero on the device (`StepLoop.RESIDENT_ZEROS`):
        # no per-call upload of [N, B, T, D] zeros (245 MB per image at 1024 px for XL)
        return [k_loop(feeds)]

    @property
    def loaded(self) -> set[str]:
        """The graphs holding engines now (manifest graph names; a K-step loop counts as its denoiser and
        its two engines' graphs), as the other backends' runners say it."""
        return {e.record.graph for e in self._engines.values()} | {k.graph for k in self._loops.values()}

    def release(self, graph_names) -> None:
        """Drop the engines, contexts, buffers and CUDA graphs of the graphs named (manifest graph names,
        e.g. "text_encoder"); they load again, lazily, on their next run. A `denoiser_lcm{K}` name also
        releases the K-step loop's engines. Each is destroyed here, so a `--low-memory` pipeline that
        releases the text encoder before the denoiser's first run never holds both (finding 6 of #23)."""
        names = set(graph_names)
        for file in [f for f, k_loop in self._loops.items() if k_loop.graph in names]:
            k_loop = self._loops.pop(file)
            names |= {k_loop.step.record.graph, k_loop.update.record.graph}
            k_loop.close()
        for file, k_loop in list(self._loops.items()):  # a loop whose engine goes must go first
            if {k_loop.step.record.graph, k_loop.update.record.graph} & names:
                self._loops.pop(file).close()
        for file in [f for f, e in self._engines.items() if e.record.graph in names]:
            self._engines.pop(file).destroy()

    def close(self) -> None:
        """Free every engine's CUDA graphs and buffers (the engines themselves go with the runner)."""
        for k_loop in self._loops.values():
            k_loop.close()
        self._loops = {}
        for e in self._engines.values():
            e.close()
        self._engines = {}
