#!/usr/bin/env python3
"""The GPU acceptance run: one command for a GPU host that measures what the CPU cannot, and writes a
report (markdown + JSON + plot) into one folder, within a time budget.

    python benchmarks/gpu_acceptance.py --out results/                   # --budget 570 s: < 10 min
    python benchmarks/gpu_acceptance.py --out results/ --dry-run         # the plan only, any host

Groups of stages, in this order (`--only` picks groups):
- `baseline`: the PyTorch side every GPU figure is compared with, on this GPU: the XL-size PixArt
  transformer step (PixArt-XL-2: 28 blocks, 1152 wide, 4096-d captions, random weights: latency does
  not depend on the values) through diffusers' own `PixArtTransformer2DModel`, eager fp16 and bf16 and
  `torch.compile` (fp16), at 512 px (1024 tokens) and 1024 px (4096 tokens), batch 1; and Stable
  Diffusion's VAE decoder (the PixArt VAE) at the same sizes. Medians of CUDA-event timings after warm-up.
- `xl`: the XL-size transformer graph (the model of `benchmarks/xl_model.py`: same configuration,
  seed and initialisation) exported, made fp16 by the bundle's own rules (`fp16.convert`), checked for
  the target (`check.check_file`) and compiled by TensorRT (`compile.build_engine`); then on the GPU:
  one engine step timed against the diffusers rows of `baseline` (same GPU, same size), its output
  against the PyTorch reference in fp32 on the GPU (relative L2), and the K-step plan of issue #16: the
  one-step engine run K times with the LCM update inside one CUDA graph (captured here with torch; the
  torch-free runtime form is `backends/tensorrt/loop.py`) vs the same K steps launched one by one. A
  whole XL bundle is not built here: its CPU verification (reference trajectories of 16 calibration
  prompts, the unrolled graph's 12-minute export) alone takes longer than the budget; the engine that
  matters for latency is the transformer's.
- `tiny`: the whole TensorRT path on the built-in `tiny` for the registry target of this GPU
  (`trt-t4`/`trt-v100`/`trt-a100`/`trt-h100` by compute capability), through the command line as a user
  runs it: `build` (bundle, verified on the CPU; it compiles too when this host can), `compile` (if the
  build did not), `parity` (every engine and the end-to-end images against the PyTorch reference, on
  this GPU), `run` per precision of the bundle (an image, timed), and the K-step plan measured on its
  engines: the unrolled `denoiser_lcm4` engine (one launch, and in a CUDA graph) vs the one-step engine
  K times with the LCM update in one CUDA graph (the default plan; the unrolled engine is kept only
  where this measures it faster).

Every stage that needs what the host lacks (a GPU, TensorRT, a registry target for its compute
capability, an earlier stage) is listed as skipped with the reason, so the report never claims what did
not run; without TensorRT only `baseline` runs. `--budget` bounds the wall time: a stage whose estimate
does not fit what is left is skipped ("past the time budget"), a running stage is stopped at the budget,
and the report is always written. Command-line stages run as subprocesses (their output tail is kept).

On a CPU host, `--toy` runs the same code with 2-block models (the CPU test of this script): the
baselines in fp32 at 64 px, and the `xl` stage's CPU half (export, fp16, check for trt-h100) at 128 px.
`--dry-run` plans only: each stage with its command and estimate, or its skip reason; `--assume-host
JSON` plans for another host (e.g. `{"cuda": true, "sm": 90, "gpu": "H100", "tensorrt": "10.8.0"}`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    variants = [("fp16", torch.float16, False), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)]
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


# -- stages beyond the baseline: planned, then run or skipped with a reason ----------------------------------
#: Seconds each stage is expected to take on an H100 host (16 cores); a stage starts only if its estimate
#: fits what is left of the budget. The baseline group's estimate is its measured H200 time (97 s).
ESTIMATES = {
    "baseline": 110,
    "tiny build": 120,
    "tiny compile": 90,
    "tiny parity": 60,
    "tiny run": 30,
    "tiny k-step plan": 30,
    "xl transformer": 330,
}
#: Seconds kept at the end for the report.
RESERVE_S = 10
K_STEPS = 4
PROMPT = "a red circle above a blue square"


@dataclass
class Stage:
    name: str
    group: str
    needs: tuple[str, ...]  # host facts ("gpu", "tensorrt", "target") and earlier stages ("stage:<name>")
    argv: list[str] = field(default_factory=list)  # a command (run as a subprocess), or empty for in-process
    status: str = "planned"  # planned | ok | failed | skipped
    reason: str = ""
    seconds: float = 0.0
    output: str = ""
    result: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        keep = {k: v for k, v in self.__dict__.items() if v not in ("", {}, [])}
        keep["command"] = " ".join(self.argv) if self.argv else None
        keep.pop("argv", None)
        return keep


def trt_target(sm: int | None) -> str | None:
    """The registry's TensorRT target for a compute capability (x10), or None."""
    from pixart_export.targets import TARGETS

    return next((t.name for t in TARGETS.values() if t.trt is not None and t.trt.sm == sm), None)


def cli(*args: str) -> list[str]:
    """argv of `pixart-export ARGS` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-c", "import sys; from pixart_export.cli import main; sys.exit(main())", *args]


def plan(env: dict, out: Path, groups: set[str], toy: bool) -> list[Stage]:
    """Every stage of the run in order, each with what it needs; nothing is run here."""
    target = env.get("trt_target")
    tiny_dir = out / "engines" / f"{target or 'trt'}-tiny"
    stages = []
    if "xl" in groups:
        needs = ("target",) if toy else ("gpu", "target", "tensorrt")
        argv = [sys.executable, str(Path(__file__).resolve()), "--xl-stage", str(out / "xl"), "--target", target or "?"]
        stages.append(Stage("xl transformer", "xl", needs, argv + (["--toy"] if toy else [])))
    if "tiny" in groups:
        host = ("gpu", "target", "tensorrt")
        stages += [
            Stage(
                "tiny build",
                "tiny",
                host,
                cli("build", "--target", target or "?", "--model", "tiny", "--out", str(tiny_dir), "--json"),
            ),
            Stage("tiny compile", "tiny", (*host, "stage:tiny build"), cli("compile", str(tiny_dir))),
            Stage("tiny parity", "tiny", (*host, "stage:tiny compile"), cli("parity", str(tiny_dir), "--json")),
            Stage("tiny run", "tiny", (*host, "stage:tiny compile")),
            Stage(
                "tiny k-step plan",
                "tiny",
                (*host, "stage:tiny compile"),
                [sys.executable, str(Path(__file__).resolve()), "--kstep-stage", str(tiny_dir), "--out", str(out)],
            ),
        ]
    return stages


def why_not(stage: Stage, env: dict, done: dict[str, Stage]) -> str | None:
    """Why `stage` cannot run on this host after the stages in `done`, or None."""
    for need in stage.needs:
        if need == "gpu" and not env.get("cuda"):
            return "no CUDA GPU on this host"
        if need == "target" and env.get("trt_target") is None:
            return f"no TensorRT target for this GPU (sm {env.get('sm')}) in the registry (`pixart-export targets`)"
        if need == "tensorrt" and not env.get("tensorrt"):
            return "tensorrt is not installed on this host (pip install 'pixart-export[tensorrt-cu12]', or -cu13)"
        if need.startswith("stage:"):
            before = done.get(need[len("stage:") :])
            if before is None or before.status not in ("ok", "planned"):
                return f"needs `{need[len('stage:') :]}`, which did not succeed"
    return None


def fits(stage: Stage, deadline: float, toy: bool) -> str | None:
    """ "past the time budget" when the stage's estimate does not fit what is left, else None."""
    estimate = 5 if toy else ESTIMATES.get(stage.name, 60)
    left = deadline - time.monotonic() - RESERVE_S
    return None if estimate <= left else "past the time budget"


def run_command(stage: Stage, deadline: float, log) -> None:
    started = time.monotonic()
    timeout = max(1.0, deadline - started - RESERVE_S)
    try:
        proc = subprocess.run(stage.argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        stage.output = (proc.stdout[-3000:] + proc.stderr[-3000:]).strip()
        stage.status = "ok" if proc.returncode == 0 else "failed"
        stage.reason = "" if proc.returncode == 0 else f"exit code {proc.returncode}"
        if proc.returncode == 0 and "--json" in stage.argv:
            try:
                stage.result = json.loads(proc.stdout)
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


def run_tiny_images(stage: Stage, folder: Path, out: Path, deadline: float, log) -> None:
    """`pixart-export run` once per precision of the compiled bundle: an image each, timed."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    precisions = sorted({e["precision"] for e in manifest.get("engines", [])})
    images = {}
    for precision in precisions:
        image = out / f"tiny_trt_{precision}.png"
        sub = Stage(
            f"tiny run {precision}",
            "tiny",
            (),
            cli("run", str(folder), "--prompt", PROMPT, "--seed", "0", "--precision", precision, "--out", str(image)),
        )
        run_command(sub, deadline, log)
        images[precision] = {"status": sub.status, "seconds": sub.seconds, "image": image.name, "reason": sub.reason}
    stage.result = {"images": images}
    stage.status = "ok" if images and all(v["status"] == "ok" for v in images.values()) else "failed"
    stage.reason = "" if stage.status == "ok" else "an image failed (see result)"


def run_stages(stages: list[Stage], env: dict, out: Path, deadline: float, toy: bool, dry_run: bool, log) -> None:
    done: dict[str, Stage] = {}
    for stage in stages:
        reason = why_not(stage, env, done)
        if reason is None and stage.name == "tiny compile":
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
        elif stage.name == "tiny run":
            run_tiny_images(stage, Path(done["tiny compile"].argv[-1]), out, deadline, log)
        else:
            run_command(stage, deadline, log)
            results = {"xl transformer": out / "xl" / "xl_result.json", "tiny k-step plan": out / "kstep_result.json"}
            if stage.name in results:
                path = results[stage.name]
                stage.result = json.loads(path.read_text()) if path.exists() else {}
        if stage.status == "skipped":
            log(f"{stage.name}: skipped: {stage.reason}")
        done[stage.name] = stage


# -- the XL transformer stage (a subprocess of this script) -----------------------------------------------
def xl_stage(folder: Path, target_name: str, toy: bool) -> dict:
    """Export -> fp16 -> check -> TensorRT engine -> latency, parity and the K-step CUDA graph, for the
    XL-size transformer (the toy: 2 blocks at 64 px, CPU half only). Writes `xl_result.json` as it goes,
    so a stage stopped at the budget still reports what it finished."""
    import torch
    from fp16_casts import export_transformer, narrow_dit

    from pixart_export.backends.tensorrt import check, fp16
    from pixart_export.graphs import TRANSFORMER, fixed_inputs
    from pixart_export.manifest import graph_record
    from pixart_export.targets import get_target

    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"toy": toy, "target": target_name, "steps": {}}

    def note(step: str, started: float, **figures) -> None:
        result["steps"][step] = {"seconds": round(time.perf_counter() - started, 1), **figures}
        (folder / "xl_result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"xl: {step}: {result['steps'][step]}", flush=True)

    latent = 16 if toy else 64  # 128 px: the smallest size of every TensorRT target's profile
    xl = (
        dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, caption_channels=24)
        if toy
        else dict(num_layers=28, num_attention_heads=16, attention_head_dim=72, caption_channels=4096)
    )  # benchmarks/xl_model.py's transformer: DiTConfig() defaults, seed 0, zero parameters drawn N(0, 0.02)
    t0 = time.perf_counter()
    dit = narrow_dit(latent, sharpen=1.0, seed=0, **xl)
    src = folder / "transformer.onnx"
    dims = export_transformer(dit, latent, src)
    note("export fp32", t0, params_m=round(sum(p.numel() for p in dit.parameters()) / 1e6, 1))
    t0 = time.perf_counter()
    half = folder / "transformer.fp16.onnx"
    conv = fp16.convert(src, half, "transformer", None)  # rules only: random weights have no outliers
    note("fp16 graph", t0, keep=conv["keep"], casts=conv["casts"], kept_fp32=len(conv["kept_fp32"]))
    t0 = time.perf_counter()
    target = get_target(target_name)
    record = {
        "graph": "transformer",
        "file": half.name,
        "files": conv["files"],
        "precision": "fp16",
        "height": latent * 8,
        "width": latent * 8,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(dims.shape(t, "B"))} for t in TRANSFORMER.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(dims.shape(t, "B"))} for t in TRANSFORMER.outputs],
    }
    report = check.check_file(half, target, graph_record(record))
    note("check", t0, ok=report.ok, problems=list(report.problems)[:5])
    if not report.ok:
        raise SystemExit(f"the fp16 graph would not build for {target_name}: {report.problems[:5]}")
    if toy or not torch.cuda.is_available():
        return result
    from pixart_export.backends.tensorrt import compile as trt_compile
    from pixart_export.backends.tensorrt.runner import probe_tensorrt

    trt = probe_tensorrt()
    shapes = {t.name: {k: list(dims.shape(t, 1)) for k in ("min", "opt", "max")} for t in TRANSFORMER.inputs}
    t0 = time.perf_counter()
    plan_bytes = trt_compile.build_engine(trt, half, shapes, folder / "timing.cache", print)
    note("TensorRT engine", t0, tensorrt=trt.__version__, engine_mib=round(len(plan_bytes) / 2**20, 1))
    feeds = fixed_inputs(TRANSFORMER, dims, batch=1, seed=7)
    result["steps"].update(engine_figures(trt, plan_bytes, dit, feeds, record))
    (folder / "xl_result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def bind(trt, plan_bytes: bytes, record: dict, batch: int = 1, seed: int = 0):
    """Deserialize an engine and bind device tensors (torch) for its record's inputs and outputs at `batch`:
    (engine, context, inputs, outputs). Inputs are random normals, masks ones, timesteps 999."""
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_bytes)
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
        context.set_input_shape(t["name"], tuple(inputs[t["name"]].shape))
        context.set_tensor_address(t["name"], inputs[t["name"]].data_ptr())
    outputs = {}
    for t in record["outputs"]:
        outputs[t["name"]] = torch.empty(
            tuple(context.get_tensor_shape(t["name"])), dtype=dtypes[t["dtype"]], device="cuda"
        )
        context.set_tensor_address(t["name"], outputs[t["name"]].data_ptr())
    return engine, context, inputs, outputs


def k_step_timings(torch, context, inputs: dict, out, stream) -> dict:
    """The K-step plan with the one-step engine: K enqueues and the LCM update (a few elementwise kernels)
    launched one by one, and the same captured in one CUDA graph (the plan of loop.py)."""
    from reference.sampling import lcm_step
    from reference.schedules import alphas_cumprod, lcm_timesteps

    ts = lcm_timesteps(K_STEPS)
    acp = alphas_cumprod().cuda()
    x = inputs["latents"].clone()
    noise = torch.randn((K_STEPS - 1, *x.shape), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    lat, t_buf = inputs["latents"], inputs["timestep"]

    def k_steps():
        lat.copy_(x)
        denoised = lat
        for i, t in enumerate(ts):
            t_buf.fill_(float(t))
            context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
            last = i == len(ts) - 1
            nxt, denoised = lcm_step(
                out, lat, int(t), None if last else int(ts[i + 1]), acp, None if last else noise[i]
            )
            lat.copy_(nxt)
        return denoised

    with torch.cuda.stream(stream):
        eager = timed(torch, k_steps, warmup=2, repeats=10)
        graph = torch.cuda.CUDAGraph()
        k_steps()  # warm-up outside the capture
        with torch.cuda.graph(graph, stream=stream):
            k_steps()
        captured = timed(torch, graph.replay, warmup=2, repeats=20)
    return {f"{K_STEPS} steps, eager launches": eager, f"{K_STEPS} steps, one CUDA graph": captured}


def engine_figures(trt, plan_bytes: bytes, dit, feeds: dict, record: dict) -> dict:
    """On the GPU: one engine step timed, its output against the fp32 reference, and K steps of the
    engine + the LCM update captured in one CUDA graph vs K eager launches."""
    import torch

    from pixart_export.export.wrappers import TransformerGraph
    from pixart_export.metrics import rel_l2

    _engine, context, inputs, outputs = bind(trt, plan_bytes, record)
    for name, tensor in inputs.items():  # the fixed inputs (so the reference sees the same)
        tensor.copy_(torch.from_numpy(feeds[name]))
    out = outputs[record["outputs"][0]["name"]]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        one = timed(torch, lambda: context.execute_async_v3(stream.cuda_stream), warmup=3, repeats=20)
        got = out.cpu().numpy().copy()
    with torch.no_grad():
        ref = TransformerGraph(dit.cuda().float()).eval()(*(inputs[i["name"]] for i in record["inputs"])).cpu().numpy()
    figures = {"engine step": {**one, "rel_l2_vs_fp32_reference": rel_l2(got, ref)}}
    figures.update(k_step_timings(torch, context, inputs, out, stream))
    return figures


def kstep_stage(folder: Path, out: Path) -> dict:
    """On a compiled tiny bundle: the unrolled `denoiser_lcm{K}` engine (one launch, and in a CUDA graph)
    vs the one-step `transformer` engine K times with the LCM update in one CUDA graph: which the K-step
    plan should be on this GPU (issue #16: the unrolled engine only where measured better)."""
    import torch

    from pixart_export.backends.tensorrt.runner import probe_tensorrt

    trt = probe_tensorrt()
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    fp16 = {e["graph"]: e for e in manifest["engines"] if e["precision"] == "fp16"}
    unrolled = next(e for g, e in fp16.items() if g.startswith("denoiser_lcm") and "controlnet" not in g)
    result = {"bundle": str(folder), "steps": {}}
    stream = torch.cuda.Stream()
    _e, ctx, inputs, outputs = bind(trt, (Path(folder) / unrolled["file"]).read_bytes(), unrolled)
    with torch.cuda.stream(stream):
        result["steps"]["unrolled engine, one launch"] = timed(
            torch, lambda: ctx.execute_async_v3(stream.cuda_stream), warmup=3, repeats=20
        )
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        result["steps"]["unrolled engine, CUDA graph"] = timed(torch, graph.replay, warmup=2, repeats=20)
    step = fp16["transformer"]
    _e2, ctx2, inputs2, outputs2 = bind(trt, (Path(folder) / step["file"]).read_bytes(), step)
    result["steps"].update(k_step_timings(torch, ctx2, inputs2, outputs2[step["outputs"][0]["name"]], stream))
    best = min(result["steps"].items(), key=lambda kv: kv[1]["median_ms"])[0]
    result["faster"] = best
    (Path(out) / "kstep_result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


# -- report --------------------------------------------------------------------------------------------------
def comparison(rows: list[dict], stages: list[dict]) -> list[str]:
    """Engine step vs the diffusers rows at the same size (512 px: the XL stage's size), when both ran."""
    xl = next((s for s in stages if s["name"] == "xl transformer" and s.get("status") == "ok"), None)
    engine = (xl or {}).get("result", {}).get("steps", {}).get("engine step")
    if not engine:
        return []
    lines = ["", "## XL transformer step at 512 px: TensorRT fp16 engine vs diffusers (same GPU)", ""]
    lines += ["| what | median ms | speed-up of the engine |", "|---|---|---|"]
    lines.append(f"| TensorRT fp16 engine (this toolchain's graph) | {engine['median_ms']} | 1.00x |")
    for r in rows:
        if r.get("px") == 512 and "median_ms" in r and "transformer step" in r["what"]:
            lines.append(f"| {r['what']} | {r['median_ms']} | {r['median_ms'] / engine['median_ms']:.2f}x |")
    steps = xl["result"]["steps"]
    lines.append(
        "\nEngine output vs the PyTorch reference in fp32 on this GPU: rel L2 "
        f"{engine['rel_l2_vs_fp32_reference']:.2e}."
    )
    for key in (f"{K_STEPS} steps, eager launches", f"{K_STEPS} steps, one CUDA graph"):
        if key in steps:
            lines.append(f"{key}: {steps[key]['median_ms']} ms (median).")
    return lines


def report(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# GPU acceptance run" + (" (dry run: nothing was measured)" if result.get("dry_run") else ""),
        "",
        f"Device: {env.get('gpu', 'CPU (toy run)')}; torch {env['torch']}, diffusers {env['diffusers']}, "
        f"TensorRT {env['tensorrt'] or 'not installed'}; TensorRT target {env.get('trt_target') or 'none'}. "
        "Batch 1, median of CUDA-event timings after warm-up; random weights (latency does not depend on "
        f"the values). Wall time {result['seconds']} s of a {result['budget_s']} s budget.",
        "",
        "| what | px | median ms | min | max |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['what']} | {r['px']} | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['what']} | {r['px']} | {r['median_ms']} | {r['min_ms']} | {r['max_ms']} |")
    lines += ["", "## Stages", "", "| stage | status | seconds | why / command |", "|---|---|---|---|"]
    for s in result["stages"]:
        why = s.get("reason") or (f"`{s['command']}`" if s.get("command") else "")
        lines.append(f"| {s['name']} | {s['status']} | {s.get('seconds', '')} | {why} |")
    lines += comparison(result["rows"], result["stages"])
    kstep = next((s for s in result["stages"] if s["name"] == "tiny k-step plan" and s.get("status") == "ok"), None)
    if kstep and kstep.get("result", {}).get("faster"):
        lines += ["", f"K-step plan on tiny, fastest on this GPU: {kstep['result']['faster']}."]
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
    """The timed figures of the XL and tiny k-step stages as latency rows (for the table and the plot)."""
    label = {"xl transformer": ("TensorRT fp16 XL transformer", 512), "tiny k-step plan": ("TensorRT fp16 tiny", 128)}
    rows = []
    for s in stages:
        what, px = label.get(s.name, (s.name, None))
        for step, fig in s.result.get("steps", {}).items():
            if isinstance(fig, dict) and "median_ms" in fig:
                rows.append({"what": f"{what}: {step}", "px": px, **fig})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the report (created)")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds of wall time to plan within")
    parser.add_argument("--sizes", default="512,1024", help="image sizes in px of the baselines, comma-separated")
    parser.add_argument("--only", default="baseline,xl,tiny", help="groups to run: baseline, xl, tiny")
    parser.add_argument("--toy", action="store_true", help="a 2-block model at 64 px (the CPU test of this script)")
    parser.add_argument("--dry-run", action="store_true", help="plan and write the report; measure nothing")
    parser.add_argument("--assume-host", type=json.loads, default=None, help="JSON host facts to plan for (dry run)")
    parser.add_argument("--xl-stage", type=Path, help=argparse.SUPPRESS)  # the xl stage's subprocess
    parser.add_argument("--kstep-stage", type=Path, help=argparse.SUPPRESS)  # the tiny k-step subprocess
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.xl_stage is not None:
        xl_stage(args.xl_stage, args.target, args.toy)
        return 0
    if args.kstep_stage is not None:
        kstep_stage(args.kstep_stage, args.out)
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

    env = {**environment(torch), **(args.assume_host or {})}
    env["trt_target"] = trt_target(int(env["sm"])) if env.get("sm") else ("trt-h100" if args.toy else None)
    log(f"environment: {json.dumps(env)}")
    rows: list[dict] = []
    skipped = []
    if "baseline" not in groups:
        pass
    elif env["diffusers"] is None:
        skipped.append("the diffusers baselines: diffusers is not installed")
    elif args.dry_run:
        skipped.append("the diffusers baselines: dry run")
    else:
        rows += transformer_rows(torch, TOY if args.toy else XL, sizes, device, deadline, log)
        torch.cuda.empty_cache() if device == "cuda" else None
        rows += vae_rows(torch, sizes, device, deadline, args.toy, log)
    stages = plan(env, args.out, groups, args.toy)
    os.environ.setdefault("PIXART_EXPORT_CACHE", str(args.out / "cache"))  # timing caches with the report
    run_stages(stages, env, args.out, deadline, args.toy, args.dry_run, log)
    rows += engine_rows(stages)
    skipped += [f"{s.name}: {s.reason}" for s in stages if s.status == "skipped"]
    result = {
        "environment": env,
        "dry_run": args.dry_run,
        "rows": rows,
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
