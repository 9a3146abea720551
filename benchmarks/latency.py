#!/usr/bin/env python3
"""CPU latency suite: diffusers eager vs our reference vs ONNX Runtime vs OpenVINO fp32 / int8.

One process, one machine, one run, so ratios are comparable. Per backend and stage: text encoder,
one transformer step, the unrolled `denoiser_lcm4` (and the single-step graph run 4 times, step by
step), VAE decoder, and end to end (prompt -> image); median, min and max over `--repeats` runs after
`--warmup` runs; peak resident memory while the backend ran; size on disk; the error of each
backend's step output against eager fp32 and of its image against the reference image. Threads:
all cores vs 1 for the transformer step. Batch 1.

Backends: `diffusers` (PixArtAlphaPipeline + LCMScheduler, 4 steps, guidance 0, eager fp32, the same
weights folder), `eager-fp32` (our reference), `eager-bf16` (reference under torch.autocast bf16,
step and denoiser), `ort-cpu`, `ov-cpu` (f32 explicitly), `ov-cpu@bf16` (the same IR with OpenVINO's
own default precision on this CPU, step only, where the CPU has bf16), `ov-cpu-int8` (its VAE decoder
in the precision its build chose by the decoder gate, `quantisation.vae_decoder`). With a preview
decoder (issue 22): `diffusers+tiny-vae` (the same diffusers pipeline with diffusers' `AutoencoderTiny`
as its VAE: what a user would try first) and `ov-cpu-int8+preview` (our engine decoding with its
`vae_decoder_preview` graph). On tiny both use the shipped distilled preview decoder
(`reference/assets/tiny/vae_preview`), and the engine is built with `--preview-decoder tiny`. For XL no
preview decoder of this random-weight VAE exists (no download, and none can pass the build's check that
it reads this VAE's latents), so both rows use a TAESD-architecture `AutoencoderTiny` with random
weights (`runs/taesd-random`): their times are what TAESD costs, their images are noise, and the
engine row runs our engine's text encoder and unrolled denoiser and then the preview decoder converted
by the build's own export and conversion functions, compiled as the build compiles float graphs.
Engines are built with `pixart-export`'s own `build` into runs/bench-engines/ (reused when up to date).

    .venv/bin/python benchmarks/latency.py            # tiny, a few minutes
    flock /tmp/pixart-heavy.lock nice -n 5 .venv/bin/python benchmarks/latency.py --xl   # XL, slow

`--xl`: the XL-size random-weight model at 512 px (`benchmarks/xl_model.py`: 28 blocks, 1152 wide,
caption_channels 4096, 64x64 latents, SD VAE; a 2-layer T5 of width 4096 stands in for T5-XXL, so
the text-encoder row is not T5-XXL's). Outputs: benchmarks/results/latency_<model>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

PROMPT = "a red apple on a blue plate"
SEED = 11
STAGES = ["text_encoder", "transformer_step", "step_x4", "denoiser_lcm4", "vae_decoder", "end_to_end"]
#: XL on a 2-core machine: what fits one run of about 20 minutes. The step for every backend; end to
#: end for the diffusers baseline and ov-cpu-int8; the unrolled-vs-step comparison and the other
#: stages for the OpenVINO engines (`--full` measures everything, about 1 h more).
XL_PLAN = {
    "eager-fp32": ["text_encoder", "transformer_step", "vae_decoder"],
    "diffusers": ["transformer_step", "end_to_end"],
    "eager-bf16": ["transformer_step"],
    "ort-cpu": ["transformer_step"],
    "ov-cpu": ["text_encoder", "transformer_step", "denoiser_lcm4", "vae_decoder"],
    "ov-cpu@bf16": ["transformer_step"],
    "ov-cpu-int8": STAGES,
    "diffusers+tiny-vae": ["vae_decoder", "end_to_end"],
    "ov-cpu-int8+preview": ["vae_decoder", "end_to_end"],
}
#: Where the XL run keeps its TAESD-architecture decoder with random weights (see the docstring).
XL_TAESD = ROOT / "runs" / "taesd-random"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def timed(fn, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats}


def folder_bytes(paths) -> int:
    total = 0
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total


def image_psnr(got, want) -> float | None:
    """`metrics.psnr_uint8` as the tables and JSON record it: 2 decimals, None ("identical") for inf."""
    from pixart_export.metrics import psnr_uint8

    value = psnr_uint8(got, want)
    return None if math.isinf(value) else round(value, 2)


# -- engines ------------------------------------------------------------------------------------------
def build_engines(spec: str, name: str, xl: bool, root: Path, rebuild: bool = False) -> dict[str, Path]:
    """Engine folders for the three targets: existing ones built from these very weights are used as
    they are (the runtime still checks every file against its manifest) unless `rebuild`; missing
    ones, and ones built from other weights (e.g. before `tiny` was retrained), are built."""
    from pixart_export.backends.openvino import quantize
    from pixart_export.backends.openvino.decoder import decoder_options
    from pixart_export.backends.openvino.options import int8_options
    from pixart_export.export.identity import model_identity
    from pixart_export.manifest import EngineError, read_manifest
    from reference.loading import load_model

    identity = model_identity(load_model(spec), None)["identity"]
    out = {}
    for target in ("ort-cpu", "ov-cpu", "ov-cpu-int8"):
        existing = root / f"{target}-{name}" / "manifest.json"
        if existing.exists() and not rebuild:
            try:
                recorded_manifest = read_manifest(existing.parent)
                recorded = recorded_manifest.model.identity
                # tiny's engines carry the preview decoder; a folder built before that is built again
                if not xl and not any(r.graph == "vae_decoder_preview" for r in recorded_manifest.graphs):
                    recorded = None
            except EngineError as exc:  # e.g. a schema-1 folder from before the manifest redesign
                recorded = None
                log(f"== engine {target} for {name}: {exc}")
            if recorded == identity:
                log(f"== engine {target} for {name}: using {existing.parent} (--rebuild to build it again)")
                out[target] = existing.parent
                continue
            log(
                f"== engine {target} for {name}: {existing.parent} was built from other weights or by another "
                "version; rebuilding"
            )
            rebuild_this = True
        else:
            rebuild_this = rebuild
        log(f"== engine {target} for {name}")
        options = None  # the target's defaults
        if target == "ort-cpu":
            # unoptimised graphs: the OpenVINO builds convert them (`onnx_from` refuses optimised ones)
            options = {"optimise": False}
        elif target == "ov-cpu-int8" and xl:
            # XL calibration is planned for 24 GiB and the time of one run: 2 prompts x 4 steps for the
            # one-step graph, 2 prompts for the unrolled one, the candidate measured best on tiny.
            options = int8_options(
                candidates=quantize.CANDIDATES[:1], transformer_prompts=2, denoiser_prompts=2, held_out_prompts=1
            )
            # the decoder's precision gate at SD-VAE size: 4 calibration and 4 held-out latents (each one a
            # reference pipeline run, ~30 s here), 3 timed repeats; the 16-image gate runs on tiny
            options["decoder"] = decoder_options(calibration_images=4, held_out_images=4, repeats=3)
        started = time.perf_counter()
        try:
            folder, reused = _build_one(target, spec, name, xl, root, out, options, force=rebuild_this)
        except Exception as exc:  # noqa: BLE001 - a failed engine drops its rows, the run goes on
            log(f"   FAILED to build {target}: {type(exc).__name__}: {exc}")
            continue
        log(f"   {'reused' if reused else 'built'} {folder} in {time.perf_counter() - started:.0f} s")
        out[target] = folder
    return out


def _build_one(target, spec, name, xl, root, out, options, force=False):
    from pixart_export.build import build_target

    # the OpenVINO targets convert the ort-cpu engine's ONNX graphs: one export for the three engines
    onnx_from = None if target == "ort-cpu" else out["ort-cpu"]
    folder, _, reused = build_target(
        target,
        spec,
        out=root / f"{target}-{name}",
        steps=4,
        verify=not xl,
        force=force,
        log=lambda m: log("   " + m),
        options=options,
        onnx_from=onnx_from,
        # tiny's shipped preview decoder passes the build's check; XL has none (module docstring)
        preview_decoder=None if xl else "tiny",
    )
    return folder, reused


# -- backends: each gives callables per stage ----------------------------------------------------------
class Inputs:
    """Batch-1 inputs shared by every backend (numpy), from the runtime tokenizer and noise contract."""

    def __init__(self, model, folder: Path, manifest):
        from pixart_export.export.exporter import model_dims
        from pixart_export.graphs import TRANSFORMER, fixed_inputs
        from pixart_export.runtime.noise import draw_noise
        from pixart_export.runtime.tokenizer import load_tokenizer

        h, w = manifest.resolutions[0]
        self.resolution = (h, w)
        self.ids, self.mask = load_tokenizer(folder, manifest.tokenizer)([PROMPT])
        dims = model_dims(model, h, w)
        step = fixed_inputs(TRANSFORMER, dims, batch=1, seed=3)
        step["control_residuals"] = np.zeros_like(step["control_residuals"])
        step["timestep"] = np.array([999.0], np.float32)
        self.step = step
        f = model.vae_scale_factor
        noise = draw_noise(SEED, 1, (model.dit.config.in_channels, h // f, w // f), 4)
        self.noise = noise
        self.timesteps = list(manifest.lcm.timesteps)


class Reference:
    def __init__(self, model, inputs: Inputs, bf16: bool = False):
        import torch

        from pixart_export.export.exporter import wrapper_for
        from pixart_export.graphs import denoiser_spec
        from reference.pipeline import ReferencePipeline

        self.torch, self.model, self.inp, self.bf16 = torch, model, inputs, bf16
        self.denoiser = wrapper_for(denoiser_spec(4, False), model, 4).eval()
        self.pipe = ReferencePipeline(model)
        t = {k: torch.from_numpy(v) for k, v in inputs.step.items()}
        self.step_args = (t["latents"], t["timestep"], t["prompt_embeds"], t["prompt_attention_mask"], None)
        self.ids, self.mask = torch.from_numpy(inputs.ids), torch.from_numpy(inputs.mask)

    def _ctx(self):
        import contextlib

        torch = self.torch
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def text_encoder(self):
        with self.torch.no_grad():
            return self.model.text_encoder(input_ids=self.ids, attention_mask=self.mask)[0].numpy()

    def transformer_step(self):
        with self.torch.no_grad(), self._ctx():
            return self.model.dit.predict_noise(*self.step_args).float().numpy()

    def step_x4(self):
        torch = self.torch
        with torch.no_grad(), self._ctx():
            x, ts, e, m, _ = self.step_args
            for t in self.inp.timesteps:
                self.model.dit.predict_noise(x, torch.full((1,), float(t)), e, m, None)

    def denoiser_lcm4(self):
        torch = self.torch
        n = torch.from_numpy(self.inp.noise)
        with torch.no_grad(), self._ctx():
            return self.denoiser(n[0], n[1:], self.step_args[2], self.step_args[3]).float().numpy()

    def vae_decoder(self):
        from reference import vae as vae_io

        with self.torch.no_grad():
            return vae_io.decode(self.model.vae, self.torch.from_numpy(self.inp.noise[0])).numpy()

    def end_to_end(self):
        return self.pipe([PROMPT], steps=4, seed=SEED, resolution=self.inp.resolution, output="pt").numpy()


def make_taesd(out: Path, seed: int = 0) -> Path:
    """A diffusers `AutoencoderTiny` at TAESD's configuration (the class defaults) with random weights,
    saved to `out` once: what the XL rows time a preview decoder with (module docstring)."""
    if (out / "config.json").exists():
        return out
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny().save_pretrained(str(out), safe_serialization=True)
    return out


class Diffusers:
    def __init__(self, folder: Path, inputs: Inputs, tiny_vae: Path | None = None):
        import torch
        from diffusers import AutoencoderTiny, LCMScheduler, PixArtAlphaPipeline

        self.torch, self.inp = torch, inputs
        extra = {}
        if tiny_vae is not None:  # as diffusers' docs swap TAESD in: the pipeline's `vae` component
            extra["vae"] = AutoencoderTiny.from_pretrained(str(tiny_vae), torch_dtype=torch.float32)
        self.pipe = PixArtAlphaPipeline.from_pretrained(
            str(folder), local_files_only=True, torch_dtype=torch.float32, **extra
        )
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        self.pipe.set_progress_bar_config(disable=True)
        t = {k: torch.from_numpy(v) for k, v in inputs.step.items()}
        self.t = t
        self.ids, self.mask = torch.from_numpy(inputs.ids), torch.from_numpy(inputs.mask)

    def text_encoder(self):
        with self.torch.no_grad():
            return self.pipe.text_encoder(self.ids, attention_mask=self.mask)[0].numpy()

    def transformer_step(self):
        t = self.t
        with self.torch.no_grad():
            out = self.pipe.transformer(
                t["latents"],
                encoder_hidden_states=t["prompt_embeds"],
                timestep=t["timestep"],
                encoder_attention_mask=t["prompt_attention_mask"],
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            ).sample
        return out[:, :4].numpy()

    def step_x4(self):
        for _ in range(4):
            self.transformer_step()

    def vae_decoder(self):
        vae = self.pipe.vae
        with self.torch.no_grad():
            image = vae.decode(self.torch.from_numpy(self.inp.noise[0]) / vae.config.scaling_factor).sample
        return (image / 2 + 0.5).clamp(0, 1).numpy()

    def end_to_end(self):
        h, w = self.inp.resolution
        out = self.pipe(
            PROMPT,
            num_inference_steps=4,
            guidance_scale=0.0,
            clean_caption=False,
            use_resolution_binning=False,
            height=h,
            width=w,
            output_type="np",
            generator=self.torch.Generator().manual_seed(SEED),
        )
        return out.images.transpose(0, 3, 1, 2)


class Engine:
    """An engine folder through `pixart_export.runtime.load` (onnxruntime or OpenVINO)."""

    def __init__(
        self,
        folder: Path,
        inputs: Inputs,
        threads: int | None = None,
        precision: str | None = None,
        decoder: str = "full",
    ):
        from pixart_export import runtime

        if precision is None:
            self.pipe = runtime.load(folder, threads=threads, decoder=decoder)
        else:  # OpenVINO's inference precision ("f32" | "bf16") for every graph, overriding the build's
            self.pipe = runtime.load(folder, threads=threads, inference_precision=precision, decoder=decoder)
        self.inp = inputs
        self.h, self.w = inputs.resolution
        self.decoder_graph = "vae_decoder_preview" if decoder == "preview" else "vae_decoder"

    def _run(self, graph, feeds):
        return self.pipe.run(graph, feeds, self.h, self.w)[0]

    def text_encoder(self):
        return self._run("text_encoder", {"input_ids": self.inp.ids, "attention_mask": self.inp.mask})

    def transformer_step(self):
        return self._run("transformer", self.inp.step)

    def step_x4(self):
        feeds = dict(self.inp.step)
        for t in self.inp.timesteps:
            feeds["timestep"] = np.array([float(t)], np.float32)
            self._run("transformer", feeds)

    def denoiser_lcm4(self):
        s = self.inp.step
        return self._run(
            "denoiser_lcm4",
            {
                "latents": self.inp.noise[0],
                "step_noise": self.inp.noise[1:],
                "prompt_embeds": s["prompt_embeds"],
                "prompt_attention_mask": s["prompt_attention_mask"],
            },
        )

    def vae_decoder(self):
        return self._run(self.decoder_graph, {"denoised": self.inp.noise[0]})

    def end_to_end(self):
        return self.pipe([PROMPT], seed=SEED, resolution=self.inp.resolution, output="np")


class ComposedPreview(Engine):
    """XL: our ov-cpu-int8 engine's text encoder and unrolled denoiser, then a TAESD-architecture decoder
    with random weights (no preview decoder of the stand-in's random VAE exists: module docstring),
    exported and converted by the build's own functions and compiled as the build compiles float graphs
    (`compile_config`, f32). Timing only: its images are noise."""

    def __init__(self, model, folder: Path, inputs: Inputs, taesd: Path, scratch: Path):
        import openvino as ov

        from pixart_export.backends.openvino.prepare import convert_graph
        from pixart_export.backends.openvino.runner import compile_config, compile_graph
        from pixart_export.export import wrappers as W
        from pixart_export.export.exporter import export_graph, model_dims
        from pixart_export.graphs import VAE_DECODER_PREVIEW
        from pixart_export.preview import load

        super().__init__(folder, inputs)
        h, w = inputs.resolution
        scratch.mkdir(parents=True, exist_ok=True)
        onnx_path, xml = scratch / f"vae_decoder_preview_{h}x{w}.onnx", scratch / f"vae_decoder_preview_{h}x{w}.xml"
        export_graph(W.VaeDecoderGraph(load(taesd)), VAE_DECODER_PREVIEW, model_dims(model, h, w), onnx_path, batch=1)
        convert_graph(onnx_path, xml)
        ir = ov.Core().read_model(str(xml))
        ir.reshape({"denoised": list(inputs.noise[0].shape)})  # static shapes, as the runner compiles
        self.preview = compile_graph(ir, compile_config("f32"))

    def vae_decoder(self, latents=None):
        from pixart_export.backends.openvino.runner import run_compiled

        return run_compiled(self.preview, {"denoised": self.inp.noise[0] if latents is None else latents})[0]

    def end_to_end(self):
        embeds = self.text_encoder()
        s = self.inp.step
        latents = self._run(
            "denoiser_lcm4",
            {
                "latents": self.inp.noise[0],
                "step_noise": self.inp.noise[1:],
                "prompt_embeds": embeds,
                "prompt_attention_mask": self.inp.mask.astype(s["prompt_attention_mask"].dtype),
            },
        )
        return self.vae_decoder(latents)


# -- the run ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xl", action="store_true", help="XL-size random-weight model at 512 px (slow)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per stage (default 10 tiny; XL 2, and 1 for the 4-step rows)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--engines", type=Path, default=ROOT / "runs" / "bench-engines", help="engine folders")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--build-only", action="store_true", help="build (or reuse) the engines and stop")
    parser.add_argument("--rebuild", action="store_true", help="build the engines even if folders exist")
    parser.add_argument("--full", action="store_true", help="with --xl: every stage for every backend (slow)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated rows to measure (e.g. diffusers,ov-cpu-int8,diffusers+tiny-vae,ov-cpu-int8+preview); "
        "eager-fp32 is always measured first when other rows' errors need it",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.xl else 10)
    try:  # the plot is written at the end: a missing matplotlib must stop the run now, not after it
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("matplotlib is missing (the results' plot needs it): pip install -e '.[bench]' or matplotlib")

    from pixart_export.backends.openvino.runner import cpu_info, has_bf16
    from pixart_export.targets import get_target
    from reference.loading import TINY_DIR

    if args.xl:
        from benchmarks.xl_model import make_xl

        spec, name = str(make_xl(ROOT / "runs" / "xl-random")), "xl-random"
    else:
        spec, name = "tiny", "tiny"
    engines = build_engines(spec, name, args.xl, args.engines, args.rebuild)
    if args.build_only:
        return 0

    import onnxruntime
    import torch

    from pixart_export.manifest import read_manifest
    from pixart_export.metrics import rel_l2
    from reference.loading import load_model, resolve

    cpu = cpu_info()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    model = load_model(spec)
    model_dir = Path(resolve(spec)) if spec != "tiny" else TINY_DIR
    manifest = read_manifest(engines["ov-cpu"])
    inputs = Inputs(model, engines["ov-cpu"], manifest)
    eager_bytes = folder_bytes([model_dir / d for d in ("transformer", "text_encoder", "vae")])

    # step by step (4 single-step calls) is measured for the engines, where it is the alternative to
    # the unrolled graph; for eager rows it is 4 x the step. diffusers' VAE is the same AutoencoderKL.
    eager_stages = [s for s in STAGES if s != "step_x4"]
    backends = [  # eager-fp32 first: every other row's error is measured against its outputs
        ("eager-fp32", "reference eager fp32", lambda: Reference(model, inputs), eager_bytes, eager_stages),
        (
            "diffusers",
            "diffusers eager fp32",
            lambda: Diffusers(model_dir, inputs),
            eager_bytes,
            [s for s in eager_stages if s != "vae_decoder"],
        ),
        (
            "eager-bf16",
            "reference eager bf16 autocast",
            lambda: Reference(model, inputs, bf16=True),
            eager_bytes,
            ["transformer_step", "denoiser_lcm4"],
        ),
        ("ort-cpu", "ONNX Runtime fp32", lambda: Engine(engines["ort-cpu"], inputs), None, STAGES),
        ("ov-cpu", "OpenVINO fp32 (f32 hint)", lambda: Engine(engines["ov-cpu"], inputs), None, STAGES),
    ]
    if has_bf16(cpu):
        backends.append(
            (
                "ov-cpu@bf16",
                "OpenVINO fp32 IR, bf16 hint (its default here)",
                lambda: Engine(engines["ov-cpu"], inputs, precision="bf16"),
                None,
                ["transformer_step", "denoiser_lcm4"],
            )
        )
    backends.append(
        ("ov-cpu-int8", "OpenVINO int8 (NNCF)", lambda: Engine(engines["ov-cpu-int8"], inputs), None, STAGES)
    )
    # the preview decoder rows (module docstring): tiny's shipped one, or TAESD's architecture at XL
    tiny_vae = make_taesd(XL_TAESD) if args.xl else TINY_DIR / "vae_preview"
    tiny_vae_bytes = folder_bytes([tiny_vae])
    backends.append(
        (
            "diffusers+tiny-vae",
            "diffusers eager fp32, AutoencoderTiny as its VAE"
            + (" (TAESD architecture, random weights: time only)" if args.xl else " (tiny's preview decoder)"),
            lambda: Diffusers(model_dir, inputs, tiny_vae=tiny_vae),
            eager_bytes - folder_bytes([model_dir / "vae"]) + tiny_vae_bytes,
            ["vae_decoder", "end_to_end"],
        )
    )
    if args.xl:
        preview = (
            "ov-cpu-int8+preview",
            "OpenVINO int8, then a TAESD-architecture decoder (random weights: time only)",
            lambda: ComposedPreview(model, engines["ov-cpu-int8"], inputs, tiny_vae, args.engines / "preview-xl"),
        )
    else:
        preview = (
            "ov-cpu-int8+preview",
            "OpenVINO int8, run --decoder preview (tiny's preview decoder)",
            lambda: Engine(engines["ov-cpu-int8"], inputs, decoder="preview"),
        )
    backends.append((*preview, None, ["vae_decoder", "end_to_end"]))

    backends = [
        b
        for b in backends
        if b[0] in ("eager-fp32", "diffusers", "eager-bf16", "diffusers+tiny-vae")
        or b[0].split("@")[0].split("+")[0] in engines
    ]
    if args.xl and not args.full:
        backends = [(k, label, make, size, XL_PLAN[k]) for k, label, make, size, _ in backends]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {b[0] for b in backends}
        if unknown:
            parser.error(f"--only {args.only}: no rows {sorted(unknown)}; choose among {[b[0] for b in backends]}")
        backends = [b for b in backends if b[0] in wanted]
    results: dict = {
        "model": name,
        "resolution": list(inputs.resolution),
        "batch": 1,
        "repeats": repeats,
        "warmup": args.warmup,
        "cpu": cpu,
        "threads": cores,
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": get_target("ov-cpu").backend.installed_version(),
            "diffusers": __import__("diffusers").__version__,
        },
        "prompt": PROMPT,
        "seed": SEED,
        "vae_decoder_choice": _decoder_choice(engines.get("ov-cpu-int8")),
        "backends": {},
    }
    log(f"CPU: {cpu['model']}, {cores} logical cores, ISA: {' '.join(cpu['isa'])}")
    reference_out: dict = {}
    for key, label, make, size, stages in backends:
        gc.collect()
        log(f"== {label}")
        row = {"label": label, "stages": {}, "errors": {}}
        with PeakRss() as mem:
            t0 = time.perf_counter()
            backend = make()
            row["load_s"] = round(time.perf_counter() - t0, 2)
            for stage in stages:
                fn = getattr(backend, stage, None)
                if fn is None:
                    continue
                out = fn()  # also the first warm-up run
                reps = (
                    repeats
                    if not (args.xl and stage in ("end_to_end", "denoiser_lcm4", "step_x4"))
                    else max(1, repeats // 2)
                )
                row["stages"][stage] = timed(fn, max(0, args.warmup - 1), reps)
                log(f"   {stage:18} median {row['stages'][stage]['median_s']:.4f} s")
                if out is not None and stage in (
                    "transformer_step",
                    "denoiser_lcm4",
                    "end_to_end",
                    "text_encoder",
                    "vae_decoder",
                ):
                    out = np.asarray(out)
                    if key == "eager-fp32" or (key == "ov-cpu" and stage not in reference_out):
                        # ov-cpu (f32) stands in where eager fp32 did not run this stage: it matches
                        # eager fp32 to ~1e-6 (parity), far below the int8 errors measured against it
                        reference_out[stage] = out
                        row["reference_for"] = row.get("reference_for", []) + [stage]
                    elif (
                        stage in reference_out
                        and not (key.startswith("diffusers") and stage == "end_to_end")
                        and not (args.xl and "+" in key)  # XL's preview decoders have random weights
                    ):
                        # (diffusers draws its own x_T and step noise: its image is another sample, so
                        # a PSNR against ours would measure the noise, not the backend)
                        row["errors"][stage] = (
                            image_psnr(out, reference_out[stage])
                            if stage == "end_to_end"
                            else rel_l2(out, reference_out[stage])
                        )
            threads_rows = (
                ("ov-cpu", "ov-cpu-int8")
                if args.xl and not args.full
                else ("eager-fp32", "ort-cpu", "ov-cpu", "ov-cpu-int8")
            )
            if "transformer_step" in stages and key in threads_rows:
                one = Reference(model, inputs) if key == "eager-fp32" else Engine(engines[key], inputs, threads=1)
                if key == "eager-fp32":
                    torch.set_num_threads(1)
                one.transformer_step()
                row["transformer_step_1_thread"] = timed(one.transformer_step, 0, max(1, repeats // 2))
                torch.set_num_threads(cores)
                log(f"   1 thread step      median {row['transformer_step_1_thread']['median_s']:.4f} s")
                del one
            del backend
        row["peak_rss_gib"] = round(mem.peak / 2**30, 2)
        row["disk_bytes"] = size if size is not None else folder_bytes([engines[key.split("@")[0].split("+")[0]]])
        results["backends"][key] = row
    results.update(speedups(results["backends"]))
    write_results(results, args.results)
    return 0


def _decoder_choice(folder: Path | None) -> dict | None:
    """The ov-cpu-int8 build's VAE decoder choice (`quantisation.vae_decoder`: every candidate's figures)."""
    if folder is None:
        return None
    from pixart_export.manifest import read_manifest

    return (read_manifest(folder).quantisation or {}).get("vae_decoder")


def speedups(b: dict) -> dict:
    """Issue 22's figures: diffusers eager fp32 over ov-cpu-int8 end to end with the full decoder
    (`e2e_speedup_full`), with the preview decoder (`e2e_speedup_preview`), and one step (`step_speedup`);
    and diffusers' own preview-decoder pipeline against the same baseline, for comparison."""

    def ratio(base, row, stage):
        try:
            return round(b[base]["stages"][stage]["median_s"] / b[row]["stages"][stage]["median_s"], 2)
        except KeyError:
            return None

    return {
        "e2e_speedup_full": ratio("diffusers", "ov-cpu-int8", "end_to_end"),
        "e2e_speedup_preview": ratio("diffusers", "ov-cpu-int8+preview", "end_to_end"),
        "step_speedup": ratio("diffusers", "ov-cpu-int8", "transformer_step"),
        "diffusers_tiny_vae_e2e_speedup": ratio("diffusers", "diffusers+tiny-vae", "end_to_end"),
    }


def _fmt(row: dict, stage: str) -> str:
    s = row["stages"].get(stage)
    return "" if s is None else f"{s['median_s']:.3f} ({s['min_s']:.3f}-{s['max_s']:.3f})"


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"latency_{results['model']}"
    b = results["backends"]
    base = b["diffusers"]["stages"]
    cpu = results["cpu"]
    lines = [
        f"# Latency: {results['model']} ({results['resolution'][0]}x{results['resolution'][1]} px, batch 1)",
        "",
        f"CPU: **{cpu['model']}**, {cpu['logical_cores']} logical cores, ISA: {', '.join(cpu['isa'])}; "
        f"threads: all {results['threads']}. "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + f". Median (min-max) seconds over {results['repeats']} runs after warm-up (XL: half as many for "
        "the 4-step rows), one process.",
        "",
        "| backend | text encoder | 1 transformer step | 4 steps, step by step | denoiser_lcm4 (unrolled) | "
        "VAE decoder | end to end | step speed-up vs diffusers | e2e speed-up vs diffusers | step rel. err vs "
        "eager fp32 | image PSNR vs reference (dB) | peak RSS (GiB) | disk (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in b.items():
        st = row["stages"]

        def speed(stage):
            return f"{base[stage]['median_s'] / st[stage]['median_s']:.2f}x" if stage in st and stage in base else ""

        err = row["errors"].get("transformer_step")
        img = row["errors"].get("end_to_end", "")
        lines.append(
            f"| {key} | {_fmt(row, 'text_encoder')} | {_fmt(row, 'transformer_step')} | "
            f"{_fmt(row, 'step_x4')} | {_fmt(row, 'denoiser_lcm4')} | {_fmt(row, 'vae_decoder')} | "
            f"{_fmt(row, 'end_to_end')} | {speed('transformer_step')} | {speed('end_to_end')} | "
            f"{'' if err is None else f'{err:.1e}'} | {'identical' if img is None else img} | "
            f"{row['peak_rss_gib']} | {row['disk_bytes'] / 2**20:.0f} |"
        )
    lines += [
        "",
        "Threads, one transformer step (median s): "
        + ", ".join(
            f"{k} {r['stages']['transformer_step']['median_s']:.3f} all / "
            f"{r['transformer_step_1_thread']['median_s']:.3f} one"
            for k, r in b.items()
            if "transformer_step_1_thread" in r
        )
        + ".",
        "",
        "Rows: `diffusers` = PixArtAlphaPipeline + LCMScheduler (4 steps, guidance 0), eager fp32; `eager-*` = "
        "our PyTorch reference; the others are engine folders from `pixart-export build` run through "
        "`pixart_export.runtime`. Peak RSS is the whole process while that backend ran (earlier backends' "
        "memory is released first but the interpreter, torch and the reference model stay resident). "
        "Disk: the model's weight folders for eager rows, the engine folder otherwise.",
    ]
    fig = {k: results.get(k) for k in ("e2e_speedup_full", "e2e_speedup_preview", "step_speedup")}
    lines += [
        "",
        "Speed-ups over diffusers eager fp32 (issue 22's figures): ov-cpu-int8 end to end "
        f"**{_x(fig['e2e_speedup_full'])}** with the full decoder, **{_x(fig['e2e_speedup_preview'])}** with the "
        f"preview decoder; one step **{_x(fig['step_speedup'])}**. diffusers with `AutoencoderTiny` as its VAE: "
        f"{_x(results.get('diffusers_tiny_vae_e2e_speedup'))}.",
    ]
    choice = results.get("vae_decoder_choice")
    if choice:
        lines += [
            "",
            f"ov-cpu-int8's VAE decoder: **{choice['chosen']}**, the fastest candidate that passes the decoder gate "
            f"(mean PSNR >= {choice['gate']['min_mean_psnr_db']:g} dB, every image >= "
            f"{choice['gate']['min_image_psnr_db']:g} dB against the fp32 decoder, on {choice['held_out']['images']} "
            f"held-out latents; {choice['timing']}; measured by the build):",
            "",
            "| candidate | mean PSNR (dB) | worst (dB) | mean SSIM | median s | passes |",
            "|---|---|---|---|---|---|",
        ]
        for c in choice["candidates"]:
            if "skipped" in c:
                lines.append(f"| {c['name']} | skipped: {c['skipped']} | | | | |")
            else:
                lines.append(
                    f"| {c['name']} | {c['mean_psnr_db']:.2f} | {c['min_psnr_db']:.2f} | {c['mean_ssim']:.4f} | "
                    f"{c['seconds_median']:.3f} | {'yes' if c['passes'] else 'no'} |"
                )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, stem.with_suffix(".png"))
    print("\n".join(lines))
    log(f"wrote {stem}.md/.json/.png")


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = results["backends"]
    keys = list(b)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, stage, title in zip(
        axes,
        ("transformer_step", "vae_decoder", "end_to_end"),
        ("one transformer step", "VAE decoder (full or preview)", "end to end"),
    ):
        ks = [k for k in keys if stage in b[k]["stages"]]
        med = [b[k]["stages"][stage]["median_s"] for k in ks]
        lo = [m - b[k]["stages"][stage]["min_s"] for k, m in zip(ks, med)]
        hi = [b[k]["stages"][stage]["max_s"] - m for k, m in zip(ks, med)]
        ax.barh(
            ks, med, xerr=[lo, hi], color=["#999" if k.startswith(("diffusers", "eager")) else "#3b7dd8" for k in ks]
        )
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.set_title(title)
        ax.set_xlabel("seconds (median, min-max)")
    cpu = results["cpu"]
    fig.suptitle(
        f"PixArt-delta {results['model']} {results['resolution'][0]} px, batch 1 - {cpu['model']}, "
        f"{cpu['logical_cores']} cores ({', '.join(cpu['isa'])})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
