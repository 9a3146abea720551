#!/usr/bin/env python3
"""The GPU acceptance run: one command for a GPU host that measures what the CPU cannot, and writes a
report (markdown + JSON + plot) into one folder, within a time budget.

    python benchmarks/gpu_acceptance.py --out results/                   # --budget 570 s: < 10 min
    python benchmarks/gpu_acceptance.py --out results/ --dry-run         # the plan only, any host

Stages in priority order (issue #23); each has an estimate (`ESTIMATES`, seconds on an H100 host with 16
cores), and the plan keeps a stage only while the estimates so far fit the budget (`schedule`; the dry
run prints planned seconds per stage against the budget), so what matters most runs first:
1. the XL transformer (PixArt-XL-2: 28 blocks, 1152 wide, 4096-d captions, random weights: latency does
   not depend on the values) as TensorRT engines vs diffusers: `baseline transformer` (diffusers'
   `PixArtTransformer2DModel`, fp16 eager and `torch.compile`, 512 and 1024 px, batch 1), `xl export`
   (our exporter, fp16 by the bundle's rules, `check` for the target), then one engine per precision of
   the target: `xl fp16 engine`, `xl int8 engine` (calibrated Q/DQ, W8A8 weight layers), `xl fp8 engine`
   (sm >= 8.9: E4M3 weight layers and attention, `quantize_fp8.CANDIDATES[0]`). Each engine: built with
   detailed profiling verbosity, its enqueue checked, timed at 512 px, fp16's output against the PyTorch
   reference in fp32 on this GPU, and its layers read back from the engine inspector (`layer_summary`:
   fused attention, int8/fp8 GEMMs, no standalone Q/DQ layers);
2. the shipped path: `tiny build` (fp16 bundle of the registry target of this GPU), `tiny compile`
   (`--both-plans`, to compare), `tiny runtime path`: `runtime.load(bundle, cuda_graph=True)` as a user
   runs it (an image, timed end to end) and the denoiser request through `StepLoop` (the one-step engine
   and the `lcm_update` engine K times in one CUDA graph) against the unrolled engine, on the same inputs;
3. `tiny parity`: every engine and the end-to-end images against the PyTorch reference, on this GPU;
4. `ort-cuda xl` and `ort-cuda tiny`, where onnxruntime's CUDA provider is present (no TensorRT needed:
   the one GPU row that can be verified on a host without it): the XL fp16 graph on the CUDA provider,
   timed vs diffusers and compared with the fp32 reference; an `ort-cuda` tiny folder built and measured
   by `parity` on the GPU;
5. `trtexec cross-check` (where `trtexec` is on PATH): its latency of the XL fp16 engine with CUDA graphs
   and its exported layer info; `baseline vae` (SD's VAE decoder, fp16 eager).

Every stage that needs what the host lacks (a GPU, TensorRT, trtexec, onnxruntime's CUDA provider, a
registry target for its compute capability, fp8, an earlier stage) is listed as skipped with the reason,
so the report never claims what did not run; a stage whose needs are missing costs no budget. At run time
a stage starts only if its estimate fits what is left, a running stage is stopped at the budget, and the
report is always written. Commands run as subprocesses (their output tail is kept).

On a CPU host, `--toy` runs the same code with 2-block models (the CPU test of this script): the
baselines in fp32 at 64 px, and `xl export` (export, fp16, check for trt-h100) at 128 px.
`--dry-run` plans only: each stage with its command and estimate, or its skip reason; `--assume-host
JSON` plans for another host (e.g. `{"cuda": true, "sm": 90, "gpu": "H100", "tensorrt": "10.8.0"}`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

XL = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    num_layers=28,
    in_channels=4,
    out_channels=8,
    patch_size=2,
    cross_attention_dim=1152,
    caption_channels=4096,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    num_embeds_ada_norm=1000,
    attention_bias=True,
    activation_fn="gelu-approximate",
    upcast_attention=False,
    use_additional_conditions=False,
)
TOY = {
    **XL,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 2,
    "cross_attention_dim": 32,
    "caption_channels": 24,
}
TEXT_TOKENS = 120


def environment(torch) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if env["cuda"]:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sm=f"{props.major}{props.minor}", memory_gib=round(props.total_memory / 2**30, 1))
    for name in ("diffusers", "tensorrt", "onnxruntime"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    return env


def timed(torch, fn, warmup: int, repeats: int) -> dict:
    """Median / min / max milliseconds of `fn()` (CUDA events on a GPU, perf_counter on a CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    cuda = torch.cuda.is_available()
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "max_ms": round(max(times), 3),
        "repeats": repeats,
    }


def transformer_rows(torch, config: dict, sizes: list[int], device: str, deadline: float, log) -> list[dict]:
    from diffusers import PixArtTransformer2DModel

    rows = []
    torch.manual_seed(0)
    base = PixArtTransformer2DModel(**config, sample_size=max(sizes) // 8).eval()
    variants = [("fp16", torch.float16, False), ("fp16", torch.float16, True)]  # bf16 eager: measured 2026-11-26
    if device == "cpu":
        variants = [("fp32", torch.float32, False)]
    for px in sizes:
        latent = px // 8
        for precision, dtype, compiled in variants:
            name = f"diffusers PixArt transformer step, {precision}" + (", torch.compile" if compiled else ", eager")
            if time.monotonic() > deadline:
                rows.append({"what": name, "px": px, "skipped": "past the time budget"})
                continue
            model = base.to(device=device, dtype=dtype)
            x = torch.randn(1, 4, latent, latent, device=device, dtype=dtype)
            t = torch.full((1,), 500.0, device=device)
            text = torch.randn(1, TEXT_TOKENS, config["caption_channels"], device=device, dtype=dtype)
            mask = torch.ones(1, TEXT_TOKENS, device=device, dtype=torch.int64)
            cond = {"resolution": None, "aspect_ratio": None}
            fn_model = torch.compile(model) if compiled else model

            def step(m=fn_model, x=x, t=t, text=text, mask=mask):
                with torch.no_grad():
                    return m(
                        x,
                        encoder_hidden_states=text,
                        encoder_attention_mask=mask,
                        timestep=t,
                        added_cond_kwargs=cond,
                        return_dict=False,
                    )[0]

            started = time.monotonic()
            row = {
                "what": name,
                "px": px,
                "tokens": (latent // 2) ** 2,
                **timed(torch, step, warmup=3 if compiled else 2, repeats=10 if device != "cpu" else 2),
            }
            row["wall_s"] = round(time.monotonic() - started, 1)
            log(f"{name} {px} px: {row['median_ms']} ms")
            rows.append(row)
    del base
    return rows


def vae_rows(torch, sizes: list[int], device: str, deadline: float, toy: bool, log) -> list[dict]:
    from diffusers import AutoencoderKL

    rows = []
    channels = [32, 32] if toy else [128, 256, 512, 512]
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        latent_channels=4,
        norm_num_groups=32,
        layers_per_block=1 if toy else 2,
    ).eval()
    dtype = torch.float16 if device != "cpu" else torch.float32
    vae = vae.to(device=device, dtype=dtype)
    for px in sizes:
        name = f"diffusers VAE decode, {'fp16' if device != 'cpu' else 'fp32'}, eager"
        if time.monotonic() > deadline:
            rows.append({"what": name, "px": px, "skipped": "past the time budget"})
            continue
        z = torch.randn(1, 4, px // 8, px // 8, device=device, dtype=dtype)

        def decode(z=z):
            with torch.no_grad():
                return vae.decode(z, return_dict=False)[0]

        row = {"what": name, "px": px, **timed(torch, decode, warmup=2, repeats=5 if device != "cpu" else 1)}
        log(f"{name} {px} px: {row['median_ms']} ms")
        rows.append(row)
    return rows


# -- stages: planned in priority order, then run or skipped with a reason -----------------------------------
#: Seconds each stage is expected to take on an H100 host (16 cores), in priority order (module docstring).
#: The diffusers rows took 97 s on an H200 with bf16 and the VAE (2026-11-26); without them about 60.
ESTIMATES = {
    "baseline transformer": 60,
    "xl export": 90,
    "xl fp16 engine": 80,
    "xl int8 engine": 90,
    "xl fp8 engine": 90,
    "tiny build": 45,
    "tiny compile": 40,
    "tiny runtime path": 30,
    "tiny parity": 40,
    "ort-cuda xl": 30,
    "ort-cuda tiny": 60,
    "trtexec cross-check": 30,
    "baseline vae": 15,
}
#: Seconds kept at the end for the report.
RESERVE_S = 10
K_STEPS = 4
PROMPT = "a red circle above a blue square"
XL_PX = 512


@dataclass
class Stage:
    name: str
    group: str
    needs: tuple[str, ...]  # host facts ("gpu", "tensorrt", "target", ...) and earlier stages ("stage:<name>")
    argv: list[str] = field(default_factory=list)  # a command (run as a subprocess), or empty for in-process
    status: str = "planned"  # planned | ok | failed | skipped
    reason: str = ""
    seconds: float = 0.0
    output: str = ""
    result: dict = field(default_factory=dict)
    estimate_s: float = 0.0

    def to_json(self) -> dict:
        keep = {k: v for k, v in self.__dict__.items() if v not in ("", {}, [])}
        keep["command"] = " ".join(self.argv) if self.argv else None
        keep.pop("argv", None)
        return keep


def trt_target(sm: int | None) -> str | None:
    """The registry's TensorRT target for a compute capability (x10), or None."""
    from pixart_export.targets import TARGETS

    return next((t.name for t in TARGETS.values() if t.trt is not None and t.trt.sm == sm), None)


def target_precisions(target: str | None) -> list[str]:
    """The engine precisions the XL stage builds for `target`: fp16, and int8/fp8 where the target has them."""
    from pixart_export.targets import TARGETS

    t = TARGETS.get(target) if target else None
    if t is None or t.trt is None:
        return ["fp16"]
    return ["fp16"] + [p for p in ("int8", "fp8") if p in {str(x) for x in t.trt.prepared}]


def cli(*args: str) -> list[str]:
    """argv of `pixart-export ARGS` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-c", "import sys; from pixart_export.cli import main; sys.exit(main())", *args]


def plan(env: dict, out: Path, groups: set[str], toy: bool) -> list[Stage]:
    """Every stage of the run in priority order, each with what it needs; nothing is run here."""
    target = env.get("trt_target")
    tiny_dir = out / "engines" / f"{target or 'trt'}-tiny"
    ort_dir = out / "engines" / "ort-cuda-tiny"
    me = [sys.executable, str(Path(__file__).resolve())]
    xl_dir = out / "xl"
    stages = []
    if "baseline" in groups:
        stages.append(Stage("baseline transformer", "baseline", ("diffusers",)))
    if "xl" in groups:
        stages.append(
            Stage(
                "xl export",
                "xl",
                ("target",) if toy else ("gpu", "target"),
                me + ["--xl-stage", str(xl_dir), "--target", target or "?"] + (["--toy"] if toy else []),
            )
        )
        for precision in target_precisions(target) if not toy else []:
            needs = ("gpu", "target", "tensorrt", "stage:xl export") + (("fp8",) if precision == "fp8" else ())
            argv = me + ["--xl-engine", str(xl_dir), "--precision", precision, "--target", target or "?"]
            stages.append(Stage(f"xl {precision} engine", "xl", needs, argv))
    if "tiny" in groups:
        host = ("gpu", "target", "tensorrt")
        build = cli("build", "--target", target or "?", "--model", "tiny", "--out", str(tiny_dir), "--trt-fp16-only")
        stages += [
            Stage("tiny build", "tiny", host, build + ["--json"]),
            Stage("tiny compile", "tiny", (*host, "stage:tiny build"), cli("compile", "--both-plans", str(tiny_dir))),
            Stage(
                "tiny runtime path",
                "tiny",
                (*host, "stage:tiny compile"),
                me + ["--runtime-stage", str(tiny_dir), "--out", str(out)],
            ),
            Stage("tiny parity", "tiny", (*host, "stage:tiny compile"), cli("parity", str(tiny_dir), "--json")),
        ]
    if "ort" in groups:
        stages += [
            Stage(
                "ort-cuda xl",
                "ort",
                ("gpu", "ort_cuda", "stage:xl export"),
                me + ["--ort-xl-stage", str(xl_dir), "--out", str(out)],
            ),
            Stage(
                "ort-cuda tiny",
                "ort",
                ("gpu", "ort_cuda"),
                [
                    "sh",
                    "-c",
                    shlex.join(cli("build", "--target", "ort-cuda", "--model", "tiny", "--out", str(ort_dir)))
                    + " && "
                    + shlex.join(cli("parity", str(ort_dir), "--json")),
                ],
            ),
        ]
    if "xl" in groups and not toy:
        stages.append(
            Stage(
                "trtexec cross-check",
                "xl",
                ("gpu", "trtexec", "stage:xl fp16 engine"),
                me + ["--trtexec-stage", str(xl_dir), "--out", str(out)],
            )
        )
    if "baseline" in groups:
        stages.append(Stage("baseline vae", "baseline", ("diffusers",)))
    for st in stages:
        st.estimate_s = 5 if toy else ESTIMATES.get(st.name, 60)
    return stages


def why_not(stage: Stage, env: dict, done: dict[str, Stage]) -> str | None:
    """Why `stage` cannot run on this host after the stages in `done`, or None."""
    for need in stage.needs:
        if need == "gpu" and not env.get("cuda"):
            return "no CUDA GPU on this host"
        if need == "diffusers" and not env.get("diffusers"):
            return "diffusers is not installed"
        if need == "target" and env.get("trt_target") is None:
            return f"no TensorRT target for this GPU (sm {env.get('sm')}) in the registry (`pixart-export targets`)"
        if need == "tensorrt" and not env.get("tensorrt"):
            return "tensorrt is not installed on this host (pip install 'pixart-export[tensorrt-cu12]', or -cu13)"
        if need == "fp8" and int(env.get("sm") or 0) < 89:
            return "fp8 needs sm >= 8.9"
        if need == "ort_cuda" and not env.get("ort_cuda"):
            return "onnxruntime's CUDAExecutionProvider is not available (pip install onnxruntime-gpu)"
        if need == "trtexec" and not env.get("trtexec"):
            return "trtexec is not on PATH"
        if need.startswith("stage:"):
            before = done.get(need[len("stage:") :])
            if before is None or before.status not in ("ok", "planned"):
                return f"needs `{need[len('stage:') :]}`, which did not succeed"
    return None


def schedule(stages: list[Stage], env: dict, budget: float) -> list[dict]:
    """The plan against the budget, in priority order: each stage that can run on this host is kept while
    the sum of the kept estimates fits `budget - RESERVE_S`; a stage that cannot run costs nothing; one that
    does not fit is marked "beyond the budget" (and so are the stages that need it). Returns the rows the
    dry run prints and the report shows."""
    done: dict[str, Stage] = {}
    used, rows = 0.0, []
    for st in stages:
        reason = why_not(st, env, done)
        if reason is None and used + st.estimate_s > budget - RESERVE_S:
            reason = f"beyond the budget ({used:.0f} + {st.estimate_s:.0f} s > {budget - RESERVE_S:.0f} s)"
        if reason is None:
            used += st.estimate_s
            probe = Stage(st.name, st.group, st.needs, status="planned")
        else:
            probe = Stage(st.name, st.group, st.needs, status="skipped", reason=reason)
        done[st.name] = probe
        rows.append(
            {
                "stage": st.name,
                "estimate_s": st.estimate_s,
                "planned": reason is None,
                "cumulative_s": used,
                "why": reason,
            }
        )
    return rows


def fits(stage: Stage, deadline: float, toy: bool) -> str | None:
    """ "past the time budget" when the stage's estimate does not fit what is left, else None."""
    left = deadline - time.monotonic() - RESERVE_S
    return None if stage.estimate_s <= left else "past the time budget"


def run_command(stage: Stage, deadline: float, log) -> None:
    started = time.monotonic()
    timeout = max(1.0, deadline - started - RESERVE_S)
    try:
        proc = subprocess.run(stage.argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        stage.output = (proc.stdout[-3000:] + proc.stderr[-3000:]).strip()
        stage.status = "ok" if proc.returncode == 0 else "failed"
        stage.reason = "" if proc.returncode == 0 else f"exit code {proc.returncode}"
        if proc.returncode == 0 and "--json" in " ".join(stage.argv):
            try:
                stage.result = json.loads(
                    proc.stdout[proc.stdout.rfind("\n{") + 1 :] if "\n{" in proc.stdout else proc.stdout
                )
            except json.JSONDecodeError:
                stage.result = {}
    except subprocess.TimeoutExpired as exc:
        stage.status, stage.reason = "failed", f"stopped at the time budget after {timeout:.0f} s"
        stage.output = (exc.stdout or b"")[-3000:].decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
    stage.seconds = round(time.monotonic() - started, 1)
    log(f"{stage.name}: {stage.status} in {stage.seconds} s {stage.reason}".rstrip())


def bundle_status(folder: Path) -> str | None:
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()).get("status") if path.exists() else None


RESULTS = {
    "xl export": "xl/xl_result.json",
    "xl fp16 engine": "xl/engine_fp16.json",
    "xl int8 engine": "xl/engine_int8.json",
    "xl fp8 engine": "xl/engine_fp8.json",
    "tiny runtime path": "runtime_result.json",
    "ort-cuda xl": "ort_cuda_xl.json",
    "trtexec cross-check": "trtexec_result.json",
}


def run_stages(
    stages: list[Stage], env: dict, out: Path, deadline: float, toy: bool, dry_run: bool, log, inproc
) -> None:
    """Run (or, dry, plan) `stages` in order; `inproc[name]()` runs an in-process stage (the baselines)."""
    done: dict[str, Stage] = {}
    for stage in stages:
        reason = why_not(stage, env, done)
        if reason is None and stage.name == "tiny compile" and not dry_run:
            status = bundle_status(Path(stage.argv[-1]))
            if status == "compiled":  # `build` compiled it itself (this host has TensorRT and the GPU)
                stage.status, stage.reason = "ok", "compiled by `build` (this host can compile)"
                done[stage.name] = stage
                continue
        if reason is None:
            reason = fits(stage, deadline, toy)
        if reason is not None:
            stage.status, stage.reason = "skipped", reason
        elif dry_run:
            stage.status, stage.reason = "planned", "dry run"
        elif stage.name in inproc:
            started = time.monotonic()
            try:
                stage.result = {"rows": inproc[stage.name]()}
                stage.status = "ok"
            except Exception as exc:  # noqa: BLE001 - one failed stage must not lose the report
                stage.status, stage.reason = "failed", f"{type(exc).__name__}: {exc}"[:300]
            stage.seconds = round(time.monotonic() - started, 1)
        else:
            run_command(stage, deadline, log)
            if stage.name in RESULTS:
                path = out / RESULTS[stage.name]
                stage.result = json.loads(path.read_text()) if path.exists() else {}
        if stage.status == "skipped":
            log(f"{stage.name}: skipped: {stage.reason}")
        done[stage.name] = stage


# -- the XL stages (subprocesses of this script) -----------------------------------------------------------
def xl_dims(latent: int, toy: bool):
    xl = (
        dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, caption_channels=24)
        if toy
        else dict(num_layers=28, num_attention_heads=16, attention_head_dim=72, caption_channels=4096)
    )  # benchmarks/xl_model.py's transformer: DiTConfig() defaults, seed 0, zero parameters drawn N(0, 0.02)
    return xl


def xl_record(half: Path, files: list, dims, latent: int, precision: str) -> dict:
    from pixart_export.graphs import TRANSFORMER

    return {
        "graph": "transformer",
        "file": half.name,
        "files": files,
        "precision": precision,
        "height": latent * 8,
        "width": latent * 8,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(dims.shape(t, "B"))} for t in TRANSFORMER.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(dims.shape(t, "B"))} for t in TRANSFORMER.outputs],
    }


def xl_stage(folder: Path, target_name: str, toy: bool) -> dict:
    """Export -> fp16 -> check for the XL-size transformer at 512 px (the toy: 2 blocks at 128 px). Writes
    `xl_result.json` as it goes, and `dims.json` for the engine stages."""
    from fp16_casts import export_transformer, narrow_dit

    from pixart_export.backends.tensorrt import check, fp16
    from pixart_export.manifest import graph_record
    from pixart_export.targets import get_target

    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"toy": toy, "target": target_name, "steps": {}}

    def note(step: str, started: float, **figures) -> None:
        result["steps"][step] = {"seconds": round(time.perf_counter() - started, 1), **figures}
        (folder / "xl_result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"xl: {step}: {result['steps'][step]}", flush=True)

    latent = 16 if toy else XL_PX // 8
    t0 = time.perf_counter()
    dit = narrow_dit(latent, sharpen=1.0, seed=0, **xl_dims(latent, toy))
    src = folder / "transformer.onnx"
    dims = export_transformer(dit, latent, src)
    note("export fp32", t0, params_m=round(sum(p.numel() for p in dit.parameters()) / 1e6, 1))
    (folder / "dims.json").write_text(json.dumps({"latent": latent, "toy": toy, **dataclasses.asdict(dims)}) + "\n")
    t0 = time.perf_counter()
    half = folder / "transformer.fp16.onnx"
    conv = fp16.convert(src, half, "transformer", None)  # rules only: random weights have no outliers
    note("fp16 graph", t0, keep=conv["keep"], casts=conv["casts"], kept_fp32=len(conv["kept_fp32"]))
    t0 = time.perf_counter()
    report = check.check_file(
        half, get_target(target_name), graph_record(xl_record(half, conv["files"], dims, latent, "fp16"))
    )
    note("check", t0, ok=report.ok, problems=list(report.problems)[:5])
    if not report.ok:
        raise SystemExit(f"the fp16 graph would not build for {target_name}: {report.problems[:5]}")
    return result


def _xl_dims(folder: Path):
    from pixart_export.graphs import Dims

    saved = json.loads((folder / "dims.json").read_text())
    latent, toy = saved.pop("latent"), saved.pop("toy")
    return Dims(**saved), latent, toy


def xl_engine_stage(folder: Path, precision: str, target_name: str) -> dict:
    """One XL engine on the GPU: the graph of `precision` made from the exported fp32 graph (fp16: the
    fp16 graph; int8: calibrated Q/DQ + fp16; fp8: `quantize_fp8.CANDIDATES[0]`, weight layers and
    attention), built with detailed profiling verbosity, timed (enqueue checked), its output against the
    PyTorch reference in fp32 (fp16: the graph's own parity), and its layers (`layer_summary`)."""
    import torch
    from fp16_casts import narrow_dit

    from pixart_export.backends.tensorrt import compile as trt_compile
    from pixart_export.backends.tensorrt import quantize_fp8, quantize_qdq
    from pixart_export.backends.tensorrt.runner import probe_tensorrt
    from pixart_export.graphs import TRANSFORMER, fixed_inputs

    dims, latent, toy = _xl_dims(folder)
    src, half = folder / "transformer.onnx", folder / "transformer.fp16.onnx"
    out_json = folder / f"engine_{precision}.json"
    result: dict = {"precision": precision, "px": latent * 8, "steps": {}}
    calib = [fixed_inputs(TRANSFORMER, dims, batch=1, seed=3)]
    t0 = time.perf_counter()
    graph = half
    if precision == "int8":
        qdq, graph = folder / "transformer.qdq.onnx", folder / "transformer.int8.onnx"
        q = quantize_qdq.quantize(src, qdq, calib)
        quantize_qdq.to_fp16(qdq, graph, "transformer", None)
        result["steps"]["graph"] = {"int8_layers": q["int8_layers"], "seconds": round(time.perf_counter() - t0, 1)}
    elif precision == "fp8":
        graph = folder / "transformer.fp8.onnx"
        q = quantize_fp8.quantize(src, graph, "transformer", calib, None, quantize_fp8.CANDIDATES[0])
        result["steps"]["graph"] = {
            **{k: v for k, v in q["fp8"].items() if isinstance(v, (int, str))},
            "seconds": round(time.perf_counter() - t0, 1),
        }
    trt = probe_tensorrt()
    shapes = {t.name: {k: list(dims.shape(t, 1)) for k in ("min", "opt", "max")} for t in TRANSFORMER.inputs}
    t0 = time.perf_counter()
    plan_bytes = trt_compile.build_engine(
        trt, graph, shapes, folder / f"timing.{precision}.cache", print, detailed=True
    )
    (folder / f"transformer.{precision}.plan").write_bytes(plan_bytes)
    result["steps"]["TensorRT engine"] = {
        "tensorrt": trt.__version__,
        "engine_mib": round(len(plan_bytes) / 2**20, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    record = xl_record(graph, [graph.name], dims, latent, precision)
    feeds = fixed_inputs(TRANSFORMER, dims, batch=1, seed=7)
    engine, context, inputs, outputs = bind(trt, plan_bytes, record)
    for name, tensor in inputs.items():  # the fixed inputs (so the reference sees the same)
        tensor.copy_(torch.from_numpy(feeds[name]))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        step = timed(torch, lambda: enqueue(context, stream.cuda_stream), warmup=3, repeats=20)
        stream.synchronize()
        got = outputs[record["outputs"][0]["name"]].float().cpu().numpy().copy()
    from pixart_export.export.wrappers import TransformerGraph
    from pixart_export.metrics import rel_l2

    dit = narrow_dit(latent, sharpen=1.0, seed=0, **xl_dims(latent, toy))
    with torch.no_grad():
        ref = TransformerGraph(dit.cuda().float()).eval()(*(inputs[i["name"]] for i in record["inputs"])).cpu().numpy()
    result["steps"]["engine step"] = {**step, "rel_l2_vs_fp32_reference": rel_l2(got, ref)}
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        (folder / f"layers_{precision}.json").write_text(json.dumps(info, indent=1) + "\n")
        result["layers"] = layer_summary(info)
    except Exception as exc:  # noqa: BLE001 - the layer list is a check beside the timing, not the timing
        result["layers"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


def layer_summary(info: dict) -> dict:
    """What an engine's layer information (engine inspector / trtexec --exportLayerInfo JSON, detailed
    verbosity) says about the kernels: layers by type, attention fused (a layer or tactic named for MHA /
    flash / fused attention, or a Myelin region, which fuses attention but does not list its kernels),
    int8 and fp8 layers (by their input formats), and standalone Quantize/Dequantize layers (there should
    be none: TensorRT fuses each Q/DQ pair into the GEMM it feeds)."""
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    by_type: dict[str, int] = {}
    int8 = fp8 = qdq = attention = myelin = 0
    for layer in layers:
        if isinstance(layer, str):  # verbosity below detailed: names only
            layer = {"Name": layer}
        kind = str(layer.get("LayerType", "?"))
        name = str(layer.get("Name", ""))
        tactic = str(layer.get("TacticName", layer.get("Tactic", "")))
        by_type[kind] = by_type.get(kind, 0) + 1
        formats = " ".join(str(i.get("Format/Datatype", "")) for i in layer.get("Inputs", []) if isinstance(i, dict))
        int8 += "Int8" in formats or "INT8" in formats
        fp8 += "FP8" in formats or "Fp8" in formats
        text = f"{name} {tactic} {kind}".lower()
        qdq += kind.lower() in ("quantize", "dequantize") or (
            ("quantizelinear" in text or "dequantizelinear" in text) and "gemm" not in text and "conv" not in text
        )
        attention += any(k in text for k in ("mha", "flash", "fmha", "attention"))
        myelin += "myelin" in text or "foreignnode" in text
    return {
        "layers": len(layers),
        "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])[:12]),
        "int8_layers": int8,
        "fp8_layers": fp8,
        "standalone_qdq_layers": qdq,
        "fused_attention_layers": attention,
        "myelin_regions": myelin,
        "detailed": bool(layers) and isinstance(layers[0], dict),
    }


def enqueue(context, stream: int) -> None:
    """`execute_async_v3`, checked (a False return is an enqueue TensorRT refused: no timing of nothing)."""
    if not context.execute_async_v3(stream):
        raise RuntimeError("TensorRT refused the enqueue (execute_async_v3 returned False)")


def bind(trt, plan_bytes: bytes, record: dict, batch: int = 1, seed: int = 0):
    """Deserialize an engine and bind device tensors (torch) for its record's inputs and outputs at `batch`:
    (engine, context, inputs, outputs). Inputs are random normals, masks ones, timesteps 999; every
    `set_input_shape` / `set_tensor_address` checked."""
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise RuntimeError(f"TensorRT could not deserialize {record['file']}")
    context = engine.create_execution_context()
    gen = torch.Generator("cuda").manual_seed(seed)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}

    def shape(t):
        return [batch if d == "B" else int(d) for d in t["shape"]]

    inputs = {}
    for t in record["inputs"]:
        dtype = dtypes[t["dtype"]]
        if dtype in (torch.int64, torch.int32):
            inputs[t["name"]] = torch.ones(shape(t), dtype=dtype, device="cuda")
        elif t["name"] == "timestep":
            inputs[t["name"]] = torch.full(shape(t), 999.0, dtype=dtype, device="cuda")
        else:
            inputs[t["name"]] = torch.randn(shape(t), generator=gen, device="cuda").to(dtype)
        if not context.set_input_shape(t["name"], tuple(inputs[t["name"]].shape)):
            raise RuntimeError(f"TensorRT refused shape {tuple(inputs[t['name']].shape)} for {t['name']}")
        if not context.set_tensor_address(t["name"], inputs[t["name"]].data_ptr()):
            raise RuntimeError(f"TensorRT refused the address of {t['name']}")
    outputs = {}
    for t in record["outputs"]:
        outputs[t["name"]] = torch.empty(
            tuple(context.get_tensor_shape(t["name"])), dtype=dtypes[t["dtype"]], device="cuda"
        )
        if not context.set_tensor_address(t["name"], outputs[t["name"]].data_ptr()):
            raise RuntimeError(f"TensorRT refused the address of {t['name']}")
    return engine, context, inputs, outputs


def runtime_stage(folder: Path, out: Path) -> dict:
    """The shipped path on a compiled tiny bundle (`compile --both-plans`): `runtime.load(folder,
    cuda_graph=True)` as a user runs it, an image timed end to end; then the denoiser request as the
    pipeline makes it, through `StepLoop` (the manifest's loop record: the transformer and lcm_update
    engines K times in one CUDA graph; the runner checks every enqueue) and through the unrolled engine
    (in a CUDA graph), timed on the same inputs, and the two outputs compared (rel L2)."""
    import numpy as np

    from pixart_export import runtime
    from pixart_export.backends.tensorrt.loop import uses_loop
    from pixart_export.metrics import rel_l2
    from pixart_export.runtime.noise import draw_noise

    pipe = runtime.load(folder, cuda_graph=True)
    result: dict = {"bundle": str(folder), "steps": {}}
    t0 = time.perf_counter()
    pipe(PROMPT, seed=0)[0].save(out / "tiny_trt_runtime.png")  # first call: loads, captures
    result["steps"]["first image (load + capture)"] = {"seconds": round(time.perf_counter() - t0, 3)}
    times = []
    for seed in range(1, 6):
        t0 = time.perf_counter()
        pipe(PROMPT, seed=seed)
        times.append((time.perf_counter() - t0) * 1e3)
    result["steps"]["image end to end (runtime.load, cuda_graph=True)"] = {
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "max_ms": round(max(times), 3),
        "repeats": len(times),
    }
    m = pipe.manifest
    h, w = m.resolutions[0]
    dens = [e for e in m.engines if e.graph == f"denoiser_lcm{m.steps}" and str(e.precision) == "fp16"]
    embeds, mask = pipe.encode([PROMPT])
    f = m.vae_scale_factor
    noise = draw_noise(0, 1, (m.latent_channels, h // f, w // f), m.steps)
    feeds = {"latents": noise[0], "step_noise": noise[1:], "prompt_embeds": embeds, "prompt_attention_mask": mask}
    outs = {}
    for rec in dens:
        label = "K-step loop (StepLoop, one CUDA graph)" if uses_loop(m, rec) else "unrolled engine (CUDA graph)"
        fed = {t.name: feeds[t.name] for t in rec.inputs}
        pipe.runner.run(rec, fed)  # set-up and capture
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            outs[label] = pipe.runner.run(rec, fed)[0]
            times.append((time.perf_counter() - t0) * 1e3)
        result["steps"][f"denoiser, {label}"] = {
            "median_ms": round(statistics.median(times), 3),
            "min_ms": round(min(times), 3),
            "max_ms": round(max(times), 3),
            "repeats": len(times),
        }
    if len(outs) == 2:
        a, b = outs.values()
        result["loop_vs_unrolled_rel_l2"] = rel_l2(np.asarray(a), np.asarray(b))
        timed_rows = {k: v for k, v in result["steps"].items() if k.startswith("denoiser")}
        result["faster"] = min(timed_rows, key=lambda k: timed_rows[k]["median_ms"])
    (Path(out) / "runtime_result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


def ort_xl_stage(folder: Path, out: Path) -> dict:
    """The XL fp16 graph of `xl export` on onnxruntime's CUDA provider: one step timed (batch 1, 512 px),
    its output against the PyTorch reference in fp32 on this GPU: the `ort-cuda` target's kernels."""
    import onnxruntime as ort
    import torch
    from fp16_casts import narrow_dit

    from pixart_export.export.wrappers import TransformerGraph
    from pixart_export.graphs import TRANSFORMER, fixed_inputs
    from pixart_export.metrics import rel_l2

    dims, latent, toy = _xl_dims(folder)
    session = ort.InferenceSession(str(folder / "transformer.fp16.onnx"), providers=["CUDAExecutionProvider"])
    feeds = fixed_inputs(TRANSFORMER, dims, batch=1, seed=7)
    names = [i.name for i in session.get_inputs()]
    fed = {n: feeds[n] for n in names}
    got = session.run(None, fed)[0]
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        session.run(None, fed)
        times.append((time.perf_counter() - t0) * 1e3)
    dit = narrow_dit(latent, sharpen=1.0, seed=0, **xl_dims(latent, toy))
    with torch.no_grad():
        ref = TransformerGraph(dit.cuda().float()).eval()(
            *(torch.from_numpy(feeds[t.name]).cuda() for t in TRANSFORMER.inputs)
        )
    result = {
        "providers": session.get_providers(),
        "px": latent * 8,
        "steps": {
            "ort-cuda fp16 XL transformer step": {
                "median_ms": round(statistics.median(times), 3),
                "min_ms": round(min(times), 3),
                "max_ms": round(max(times), 3),
                "repeats": len(times),
                "rel_l2_vs_fp32_reference": rel_l2(got.astype("float32"), ref.cpu().numpy()),
            }
        },
    }
    (Path(out) / "ort_cuda_xl.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


def trtexec_median_ms(text: str) -> float | None:
    """trtexec's "GPU Compute Time: min = .. ms, max = .. ms, mean = .. ms, median = X ms" -> X."""
    import re

    m = re.search(r"GPU Compute Time:.*?median = ([0-9.]+) ms", text)
    return float(m.group(1)) if m else None


def trtexec_stage(folder: Path, out: Path) -> dict:
    """`trtexec` on the XL fp16 engine: its latency with CUDA graphs (a cross-check of the engine stage's
    figure) and its exported layer info (`layer_summary`)."""
    from pixart_export.graphs import TRANSFORMER

    dims, _latent, _toy = _xl_dims(folder)
    shapes = ",".join(f"{t.name}:{'x'.join(str(d) for d in dims.shape(t, 1))}" for t in TRANSFORMER.inputs)
    layers = folder / "trtexec_layers_fp16.json"
    argv = [
        "trtexec",
        f"--loadEngine={folder / 'transformer.fp16.plan'}",
        f"--shapes={shapes}",
        "--useCudaGraph",
        "--noDataTransfers",
        "--duration=3",
        f"--exportLayerInfo={layers}",
        "--profilingVerbosity=detailed",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    result = {"command": " ".join(argv), "returncode": proc.returncode, "median_ms": trtexec_median_ms(proc.stdout)}
    if layers.exists():
        result["layers"] = layer_summary(json.loads(layers.read_text()))
    ours = folder / "engine_fp16.json"
    if ours.exists() and result["median_ms"]:
        mine = json.loads(ours.read_text())["steps"]["engine step"]["median_ms"]
        result["ours_median_ms"] = mine
        result["ratio_ours_over_trtexec"] = round(mine / result["median_ms"], 3)
    (Path(out) / "trtexec_result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"trtexec failed: {proc.stderr[-500:]}")
    return result


# -- report --------------------------------------------------------------------------------------------------
def comparison(rows: list[dict], stages: list[dict]) -> list[str]:
    """The XL engines (each precision) and the ort-cuda step vs the diffusers rows at the same size (512 px),
    when both ran."""
    engines = []
    for st in stages:
        step = st.get("result", {}).get("steps", {}).get("engine step") if st.get("status") == "ok" else None
        if st["name"].startswith("xl ") and st["name"].endswith(" engine") and step:
            engines.append((f"TensorRT {st['name'].split()[1]} engine (this toolchain's graph)", step, st["result"]))
        ort = st.get("result", {}).get("steps", {}).get("ort-cuda fp16 XL transformer step")
        if st["name"] == "ort-cuda xl" and st.get("status") == "ok" and ort:
            engines.append(("onnxruntime CUDA provider, fp16 graph (ort-cuda)", ort, st["result"]))
    if not engines:
        return []
    lines = ["", f"## XL transformer step at {XL_PX} px: engines vs diffusers (same GPU)", ""]
    lines += ["| what | median ms | rel L2 vs fp32 reference | speed-up vs diffusers fp16 eager | vs torch.compile |"]
    lines += ["|---|---|---|---|---|"]
    base = {
        k: next((r["median_ms"] for r in rows if r.get("px") == XL_PX and "median_ms" in r and k in r["what"]), None)
        for k in ("fp16, eager", "fp16, torch.compile")
    }
    for what, step, _res in engines:
        ratios = [f"{b / step['median_ms']:.2f}x" if b else "" for b in base.values()]
        lines.append(
            f"| {what} | {step['median_ms']} | {step.get('rel_l2_vs_fp32_reference', 0):.2e} | {' | '.join(ratios)} |"
        )
    for r in rows:
        if r.get("px") == XL_PX and "median_ms" in r and "transformer step" in r["what"]:
            lines.append(f"| {r['what']} | {r['median_ms']} | | | |")
    for what, _step, res in engines:
        if res.get("layers"):
            lines.append(f"\n{what}: layers {json.dumps(res['layers'])}")
    return lines


def report(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# GPU acceptance run" + (" (dry run: nothing was measured)" if result.get("dry_run") else ""),
        "",
        f"Device: {env.get('gpu', 'CPU (toy run)')}; torch {env['torch']}, diffusers {env['diffusers']}, "
        f"TensorRT {env['tensorrt'] or 'not installed'}, onnxruntime {env.get('onnxruntime')} (CUDA provider: "
        f"{'yes' if env.get('ort_cuda') else 'no'}), trtexec {'yes' if env.get('trtexec') else 'no'}; TensorRT "
        f"target {env.get('trt_target') or 'none'}. Batch 1, median of CUDA-event timings after warm-up; random "
        f"weights (latency does not depend on the values). Wall time {result['seconds']} s of a "
        f"{result['budget_s']} s budget.",
        "",
        "| what | px | median ms | min | max |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['what']} | {r['px']} | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['what']} | {r['px']} | {r['median_ms']} | {r['min_ms']} | {r['max_ms']} |")
    lines += ["", "## Plan (priority order, estimates against the budget)", ""]
    lines += ["| stage | estimate s | planned | cumulative s | why not |", "|---|---|---|---|---|"]
    for p in result["schedule"]:
        lines.append(
            f"| {p['stage']} | {p['estimate_s']:.0f} | {'yes' if p['planned'] else 'no'} | {p['cumulative_s']:.0f} | "
            f"{p['why'] or ''} |"
        )
    lines += ["", "## Stages", "", "| stage | status | seconds | why / command |", "|---|---|---|---|"]
    for s in result["stages"]:
        why = s.get("reason") or (f"`{s['command']}`" if s.get("command") else "")
        lines.append(f"| {s['name']} | {s['status']} | {s.get('seconds', '')} | {why} |")
    lines += comparison(result["rows"], result["stages"])
    rt = next((s for s in result["stages"] if s["name"] == "tiny runtime path" and s.get("status") == "ok"), None)
    if rt and rt.get("result", {}).get("faster"):
        lines += [
            "",
            f"Denoiser on tiny through the runtime, fastest on this GPU: {rt['result']['faster']} (loop vs "
            f"unrolled outputs rel L2 {rt['result'].get('loop_vs_unrolled_rel_l2', float('nan')):.2e}).",
        ]
    if result["skipped_stages"]:
        lines += ["", "Not run here:"] + [f"- {s}" for s in result["skipped_stages"]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    done = [r for r in rows if "median_ms" in r]
    if not done:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(done) + 1))
    ax.barh([f"{r['what']} @ {r['px']}" for r in done], [r["median_ms"] for r in done])
    ax.set_xlabel("median ms (batch 1)")
    ax.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def engine_rows(stages: list[Stage]) -> list[dict]:
    """The timed figures of the engine, runtime and ort-cuda stages as latency rows (table and plot)."""
    rows = []
    for s in stages:
        if s.name.startswith("xl ") and s.name.endswith(" engine"):
            what, px = f"TensorRT {s.name.split()[1]} XL transformer", XL_PX
        elif s.name == "tiny runtime path":
            what, px = "TensorRT tiny (runtime)", 128
        elif s.name == "ort-cuda xl":
            what, px = "onnxruntime CUDA XL transformer", XL_PX
        else:
            continue
        for step, fig in s.result.get("steps", {}).items():
            if isinstance(fig, dict) and "median_ms" in fig:
                rows.append({"what": f"{what}: {step}", "px": px, **fig})
    return rows


def host_facts(torch) -> dict:
    """`environment` plus what the planner needs: onnxruntime's CUDA provider and trtexec on PATH."""
    import shutil

    env = environment(torch)
    try:
        import onnxruntime

        env["ort_cuda"] = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        env["ort_cuda"] = False
    env["trtexec"] = shutil.which("trtexec")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the report (created)")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds of wall time to plan within")
    parser.add_argument("--sizes", default="512,1024", help="image sizes in px of the baselines, comma-separated")
    parser.add_argument("--only", default="baseline,xl,tiny,ort", help="groups to run: baseline, xl, tiny, ort")
    parser.add_argument("--toy", action="store_true", help="a 2-block model at 64 px (the CPU test of this script)")
    parser.add_argument("--dry-run", action="store_true", help="plan and write the report; measure nothing")
    parser.add_argument("--assume-host", type=json.loads, default=None, help="JSON host facts to plan for (dry run)")
    for hidden in ("--xl-stage", "--xl-engine", "--runtime-stage", "--ort-xl-stage", "--trtexec-stage"):
        parser.add_argument(hidden, type=Path, help=argparse.SUPPRESS)  # the stages' subprocesses
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.xl_stage is not None:
        xl_stage(args.xl_stage, args.target, args.toy)
        return 0
    if args.xl_engine is not None:
        xl_engine_stage(args.xl_engine, args.precision, args.target)
        return 0
    if args.runtime_stage is not None:
        runtime_stage(args.runtime_stage, args.out)
        return 0
    if args.ort_xl_stage is not None:
        ort_xl_stage(args.ort_xl_stage, args.out)
        return 0
    if args.trtexec_stage is not None:
        trtexec_stage(args.trtexec_stage, args.out)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.assume_host is not None and not args.dry_run:
        parser.error("--assume-host plans for another host: only with --dry-run")
    import torch

    started = time.monotonic()
    deadline = started + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [64] if args.toy else [int(s) for s in args.sizes.split(",")]
    groups = {g.strip() for g in args.only.split(",") if g.strip()}

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    env = {**host_facts(torch), **(args.assume_host or {})}
    env["trt_target"] = trt_target(int(env["sm"])) if env.get("sm") else ("trt-h100" if args.toy else None)
    log(f"environment: {json.dumps(env)}")
    rows: list[dict] = []
    stages = plan(env, args.out, groups, args.toy)
    schedule_rows = schedule(stages, env, args.budget)
    for p in schedule_rows:  # the plan against the budget, before anything runs
        log(
            f"plan: {p['stage']:22} {p['estimate_s']:4.0f} s  "
            + (
                f"cumulative {p['cumulative_s']:4.0f} / {args.budget:.0f} s"
                if p["planned"]
                else f"not planned: {p['why']}"
            )
        )

    def baseline_transformer() -> list[dict]:
        got = transformer_rows(torch, TOY if args.toy else XL, sizes, device, deadline, log)
        rows.extend(got)
        torch.cuda.empty_cache() if device == "cuda" else None
        return got

    def baseline_vae() -> list[dict]:
        got = vae_rows(torch, sizes, device, deadline, args.toy, log)
        rows.extend(got)
        return got

    os.environ.setdefault("PIXART_EXPORT_CACHE", str(args.out / "cache"))  # timing caches with the report
    inproc = {"baseline transformer": baseline_transformer, "baseline vae": baseline_vae}
    run_stages(stages, env, args.out, deadline, args.toy, args.dry_run, log, inproc)
    rows += engine_rows(stages)
    skipped = [f"{s.name}: {s.reason}" for s in stages if s.status == "skipped"]
    for s in stages:
        s.result.pop("rows", None)  # the baseline rows are in `rows`
    result = {
        "environment": env,
        "dry_run": args.dry_run,
        "rows": rows,
        "schedule": schedule_rows,
        "planned_s": max((p["cumulative_s"] for p in schedule_rows), default=0),
        "stages": [s.to_json() for s in stages],
        "skipped_stages": skipped,
        "seconds": round(time.monotonic() - started, 1),
        "budget_s": args.budget,
    }
    (args.out / "gpu_acceptance.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_acceptance.md").write_text(report(result))
    plot(rows, args.out / "gpu_acceptance.png")
    log(f"wrote {args.out}/gpu_acceptance.{{json,md,png}}")
    print(report(result))
    return 1 if any(s.status == "failed" for s in stages) else 0


if __name__ == "__main__":
    sys.exit(main())
