"""`compile BUNDLE`: TensorRT engines from a verified bundle, on the target GPU.

Everything that can be decided without TensorRT lives in plain functions (version and architecture
matching, optimisation profiles from the manifest, timing-cache keys, engine names) and is unit-tested
with fakes; `compile_bundle` takes the `tensorrt` module and the device description as arguments, so a
test can hand it fakes too. TensorRT is imported only here and in `runner.py`, and only when used.

Engines are built *strongly typed* (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`): each layer runs in
the type its tensors have in the graph (fp16 graphs, Q/DQ int8), as TensorRT 11 requires and TensorRT
10 allows; no FP16/INT8 builder flags, no implicit calibration. TF32 is cleared
(`BuilderFlag.TF32`, on by default, also for strongly typed networks): the layers a graph keeps fp32
are kept so for a measured reason (T5's feed-forward output, norms, softmax) and must compute in fp32,
not with 10-bit mantissa inputs on A100/H100. Each engine record says so in its `details`
(`strongly_typed`, `tf32`). TensorRT and cuda-python must be of one CUDA major, and that major one the
target has a TensorRT for (`TrtSpec.cuda`: trt-v100's TensorRT <= 10.4 exists for CUDA 12 only).

One optimisation profile per engine: the batch range of the target, every other axis static (each graph
record's `runtime["profile"]`). One timing cache per bundle and precision (issue #23, item 7), shared by
the graphs of that precision (the transformer, the denoisers and the ControlNet graphs time the same
GEMM and attention shapes; a cache per graph timed them again for each), kept under
`$PIXART_EXPORT_CACHE` (default ~/.cache/pixart-export) and keyed by the sha256 of what determines it:
the bundle's build key (model, options, code and versions, so its graphs), the precision, the TensorRT
version and the GPU (name and compute capability).

Only the engines the bundle's K-step plan runs are built (`planned_records`, issue #23 item 2): with the
plan "loop" the one-step `transformer` and `lcm_update` engines, and the plain `denoiser_lcm{K}` record
becomes a reference to them (`runtime["k_step_loop"]`, the same plan files, no engine of its own: K
copies of the DiT's weights per precision were built and never run); with "unrolled" the unrolled engine
and not the loop's two. `compile --both-plans` builds both, to compare them (`benchmarks/gpu_acceptance.py`);
the loop's record then comes first, so it is what runs.

The manifest is changed only through `manifest.write_manifest` with `dataclasses.replace`: status
"compiled", `engines` = one `GraphRecord` per plan (`runtime`: its source graph and timing-cache key),
the TensorRT version in `backend.version`, the GPU's name and driver in `device`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ...errors import UserError
from ...graphs import LCM_UPDATE
from ...manifest import EngineError, GraphRecord, Manifest, check_files, file_table, write_manifest
from .runner import (
    EXTRAS,
    MIN_DRIVER,
    cuda_stack,
    cuda_stack_problem,
    no_device_reason,
    pip_tensorrt,
    probe_device,
    probe_tensorrt,
    version_allowed,
)

Log = Callable[[str], None]
ENGINE_DIR = "engines"


# -- decisions, testable without TensorRT ----------------------------------------------------------
def install_hint(target) -> str:
    """The pip command that installs a TensorRT `target` can use (with the cuda-python of its CUDA major)."""
    if target.trt.tensorrt[1] is None:
        options = [f"'pixart-export[{EXTRAS[m]}]' ({MIN_DRIVER[m]}+ driver)" for m in target.trt.cuda if m in EXTRAS]
        return "pip install " + " or ".join(options)
    return pip_tensorrt(target.trt.tensorrt, max(target.trt.cuda))


def check_tensorrt_version(target, version: str, stack: dict | None = None) -> None:
    """`version` in the target's TensorRT range, and (`stack`: `runner.cuda_stack()`) TensorRT wheels of a
    CUDA major the target has, with a cuda-python of the same major."""
    lo, hi = target.trt.tensorrt
    if not version_allowed(version, (lo, hi)):
        span = f">= {lo}" + (f" and <= {hi}" if hi else "")
        extra = " (TensorRT 10.5 dropped Volta)" if target.trt.sm == 70 else ""
        raise UserError(
            f"TensorRT {version} cannot build {target.name}: it needs TensorRT {span}{extra}; "
            f"install a matching version: {install_hint(target)}"
        )
    bounded = install_hint(target) if target.trt.tensorrt[1] else None  # a pinned range: the exact pip line
    problem = cuda_stack_problem(stack or {}, target.trt.cuda, bounded)
    if problem:
        raise UserError(f"{target.name}: {problem}")


def check_device(target, device: dict) -> None:
    """`device`: {"name", "sm" (e.g. 75), "driver"}; the GPU must be the target's architecture."""
    if device.get("sm") != target.trt.sm:
        got = device.get("sm")
        raise UserError(
            f"this GPU is {device.get('name', '?')} (sm_{got}), the bundle is for {target.name} "
            f"({target.trt.arch}): an engine runs only on the architecture it was built on. Compile "
            f"on a {target.trt.arch} host, or build a bundle for this GPU's target"
        )


def profiles_for(target, records: list[dict]) -> dict[str, dict[str, dict[str, list[int]]]]:
    """{file: {input: {min, opt, max}}}: the batch axis from the target's profile, the rest static."""
    lo, opt, hi = target.trt.profile.batch
    out = {}
    for rec in records:
        shapes = {}
        for inp in rec["inputs"]:
            dims = inp["shape"]
            shapes[inp["name"]] = {
                k: [b if d == "B" else d for d in dims] for k, b in (("min", lo), ("opt", opt), ("max", hi))
            }
        out[rec["file"]] = shapes
    return out


def profile_shapes(record: GraphRecord) -> dict[str, dict[str, list[int]]]:
    """{input: {"min", "opt", "max"}} for one graph record, from its `runtime["profile"]`."""
    try:
        return record.runtime["profile"]
    except KeyError:
        raise EngineError(f"manifest has no optimisation profile for {record.file}; rebuild the bundle") from None


def timing_cache_key(bundle_key: str, precision: str, trt_version: str, device: dict) -> str:
    """One cache per bundle (its build key) and precision, per TensorRT version and GPU."""
    blob = json.dumps(
        {
            "bundle": bundle_key,
            "precision": str(precision),
            "tensorrt": trt_version,
            "gpu": device.get("name"),
            "sm": device.get("sm"),
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()


def k_step_plan(manifest: Manifest) -> str | None:
    """The bundle's recorded K-step plan ("loop" or "unrolled"), None for bundles made before plans."""
    return ((manifest.build or {}).get("k_step_plan") or {}).get("plan")


def planned_records(manifest: Manifest, both_plans: bool = False) -> tuple[list[GraphRecord], list[dict]]:
    """(graph records to build, [{"graph", "file", "why"}] skipped): the engines the recorded K-step plan
    runs, or both plans' with `both_plans`. A bundle without a plan builds everything, as before."""
    plan, k = k_step_plan(manifest), manifest.steps
    loop_graphs, unrolled_graphs = {"transformer", LCM_UPDATE.name}, {f"denoiser_lcm{k}"}
    skip = set()
    if plan == "loop" and not both_plans:
        skip = unrolled_graphs
    elif plan == "unrolled" and not both_plans:
        skip = loop_graphs
    keep = [r for r in manifest.graphs if r.graph not in skip]
    why = f"the K-step plan {plan!r} does not run it (compile --both-plans builds it to compare)"
    return keep, [{"graph": r.graph, "file": r.file, "why": why} for r in manifest.graphs if r.graph in skip]


def loop_records(manifest: Manifest, engines: list[GraphRecord]) -> list[GraphRecord]:
    """For the plan "loop": one `denoiser_lcm{K}` record per precision whose `transformer` engine was built,
    with the denoiser's contract (inputs, outputs) and `runtime["k_step_loop"]` naming the two engines
    that run it (`loop.StepLoop`); its `file` is the transformer's plan, so every path stays a listed one."""
    k = manifest.steps
    out = []
    for den in (r for r in manifest.graphs if r.graph == f"denoiser_lcm{k}"):
        bucket = (den.height, den.width)
        step = next(
            (
                e
                for e in engines
                if e.graph == "transformer" and (e.height, e.width) == bucket and e.precision == den.precision
            ),
            None,
        )
        update = next((e for e in engines if e.graph == LCM_UPDATE.name and (e.height, e.width) == bucket), None)
        if step is None or update is None:
            continue
        out.append(
            dataclasses.replace(
                den,
                file=step.file,
                files=(step.file, update.file),
                bytes=0,
                runtime={"source": den.file, "k_step_loop": {"transformer": step.file, "lcm_update": update.file}},
                details={"runs_as": "the transformer engine x K and lcm_update in one CUDA graph (loop.StepLoop)"},
            )
        )
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("PIXART_EXPORT_CACHE", Path.home() / ".cache" / "pixart-export")) / "trt-timing"


def engine_file(record: GraphRecord, device: dict, trt_version: str) -> str:
    stem = record.file[: -len(".onnx")] if record.file.endswith(".onnx") else record.file
    return f"{ENGINE_DIR}/{stem}.sm{device['sm']}.trt{trt_version}.plan"


def check_bundle_for_compile(folder: Path, target) -> Manifest:
    """Read a bundle of `target` (the registry row its manifest names: `targets.read_engine`); its
    manifest, or a UserError saying what is wrong with it."""
    from ...manifest import read_manifest

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (give a bundle from `pixart-export build --target trt-*`)")
    manifest = read_manifest(folder)
    if target.trt is None or manifest.backend.name != "tensorrt":
        raise UserError(
            f"{folder}: a {manifest.backend.name} engine folder, not a TensorRT bundle (build one with --target trt-*)"
        )
    if manifest.target != target.name:
        raise UserError(f"{folder}: a bundle for {manifest.target}, not {target.name}")
    if manifest.status not in ("bundle", "compiled"):
        raise UserError(f"{folder}: manifest status {manifest.status!r}; rebuild the bundle")
    check_files(folder, manifest, hashes=True)
    return manifest


# -- host probing (the probes live with the runtime, `runner.py`) -----------------------------------
def host_can_compile(target, trt=None, device=None) -> tuple[bool, str]:
    """(can this host build `target`'s engines, why / why not) -- without raising."""
    trt = trt if trt is not None else probe_tensorrt()
    if trt is None:
        return False, "TensorRT is not installed on this host"
    device = device if device is not None else probe_device()
    if device is None:
        return False, no_device_reason()
    if device["sm"] != target.trt.sm:
        return False, f"this host's GPU is {device['name']} (sm_{device['sm']}), not {target.trt.arch}"
    if not version_allowed(trt.__version__, target.trt.tensorrt):
        return False, f"TensorRT {trt.__version__} is outside {target.name}'s range {target.trt.tensorrt}"
    return True, f"TensorRT {trt.__version__} and {device['name']} (sm_{device['sm']})"


# -- the TensorRT calls --------------------------------------------------------------------------------
def build_engine(trt, onnx_path: Path, shapes: dict, cache_path: Path, log: Log, detailed: bool = False) -> bytes:
    """Parse `onnx_path` strongly typed, one profile, timing cache at `cache_path`; the serialized plan.
    `detailed`: profiling verbosity DETAILED, so the engine inspector (and trtexec --exportLayerInfo) lists
    each layer's kernels and types (benchmarks/gpu_acceptance.py: fused attention, int8/fp8 GEMMs)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 layers compute in fp32 (module docstring)
    if config.get_flag(trt.BuilderFlag.TF32):
        raise UserError("TensorRT kept TF32 on after clear_flag; refusing to build with 10-bit fp32 inputs")
    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    if detailed:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT failed to build {onnx_path.name} (see its log above)")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp, cache_path)
    return bytes(plan)


def compile_bundle(
    folder: Path,
    target,
    log: Log = print,
    trt=None,
    device: dict | None = None,
    only: set[str] | None = None,
    stack: dict | None = None,
    both_plans: bool = False,
) -> Manifest:
    """Build the engines the bundle's K-step plan runs (`planned_records`; both plans with `both_plans`)
    into `folder/engines/` and mark the manifest compiled; returns it.

    `trt`/`device`/`stack` (`runner.cuda_stack()`) default to the host's; tests pass fakes. `only`
    limits to some precisions (the `lcm_update` graph of the K-step loop is always built).
    """
    folder = Path(folder)
    manifest = check_bundle_for_compile(folder, target)
    trt = trt if trt is not None else probe_tensorrt()
    if trt is None:
        raise UserError(
            f"TensorRT is not installed on this host: {install_hint(target)} on the {target.trt.arch} host, "
            "then rerun this command"
        )
    stack = stack if stack is not None else cuda_stack()
    check_tensorrt_version(target, trt.__version__, stack)
    device = device if device is not None else probe_device()
    if device is None:
        raise UserError(f"no usable NVIDIA GPU: {no_device_reason()}; compile on the target host")
    check_device(target, device)
    # the K-step loop's lcm_update engine (fp32, tiny) goes with any precision the loop runs in
    planned, skipped = planned_records(manifest, both_plans)
    records = [r for r in planned if only is None or str(r.precision) in only or r.graph == LCM_UPDATE.name]
    for s in skipped:
        log(f"skipped {s['file']}: {s['why']}")
    work = Path(tempfile.mkdtemp(prefix=".compile-", dir=folder))
    engines: list[GraphRecord] = []
    try:
        for i, rec in enumerate(records, 1):
            name = engine_file(rec, device, trt.__version__)
            log(f"[{i}/{len(records)}] {rec.file} -> {name}")
            key = timing_cache_key(manifest.build_key, str(rec.precision), trt.__version__, device)
            started = time.perf_counter()
            plan = build_engine(trt, folder / rec.file, profile_shapes(rec), cache_dir() / f"{key}.cache", log)
            (work / Path(name).name).write_bytes(plan)
            engines.append(
                GraphRecord(
                    graph=rec.graph,
                    file=name,
                    files=(name,),
                    precision=rec.precision,
                    height=rec.height,
                    width=rec.width,
                    inputs=rec.inputs,
                    outputs=rec.outputs,
                    bytes=len(plan),
                    runtime={"source": rec.file, "timing_cache": key},
                    details={
                        "build_seconds": round(time.perf_counter() - started, 1),
                        "strongly_typed": True,
                        "tf32": False,
                    },
                )
            )
        (folder / ENGINE_DIR).mkdir(exist_ok=True)
        for e in engines:
            os.replace(work / Path(e.file).name, folder / e.file)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if k_step_plan(manifest) == "loop":  # the loop's denoiser records first: they are what runs
        engines = loop_records(manifest, engines) + engines
    plan_info = {**(manifest.build or {}).get("k_step_plan", {})}
    if plan_info:
        plan_info["compiled"] = ["loop", "unrolled"] if both_plans else [plan_info.get("plan")]
        plan_info["skipped"] = skipped
    compiled = dataclasses.replace(
        manifest,
        engines=tuple(engines),
        status="compiled",
        backend=dataclasses.replace(manifest.backend, version=trt.__version__),
        device=dataclasses.replace(manifest.device, name=device["name"], sm=device["sm"], driver=device.get("driver")),
        build={
            **manifest.build,
            **({"k_step_plan": plan_info} if plan_info else {}),
            "compiled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "compiled_with": {
                "tensorrt": trt.__version__,
                "tensorrt_cuda": stack.get("tensorrt_cuda"),
                "cuda_python": stack.get("cuda_python"),
                "builder": {"strongly_typed": True, "tf32": False},
            },
        },
        files=file_table(folder),
    )
    write_manifest(folder, compiled)
    log(f"compiled {len(records)} engines for {target.name} on {device['name']} with TensorRT {trt.__version__}")
    return compiled
