#!/usr/bin/env python3
"""The GPU acceptance run: one command for a GPU host that measures what the CPU cannot, and writes a
report (markdown + JSON + plot) into one folder.

    python benchmarks/gpu_acceptance.py --out results/ --budget 240

This first version measures the PyTorch side that every GPU figure is compared with, on the GPU it
runs on: the XL-size PixArt transformer step (PixArt-XL-2: 28 blocks, 1152 wide, 4096-d captions,
random weights: latency does not depend on the values) through diffusers' own
`PixArtTransformer2DModel`, eager in fp16 and bf16 and under `torch.compile` (fp16), at 512 px (1024
tokens) and 1024 px (4096 tokens), batch 1; and Stable Diffusion's VAE decoder (the PixArt VAE) at
the same sizes. Each figure is the median of CUDA-event timings after warm-up. Stages that need what
the host lacks (TensorRT for the engines of issue #16) are listed as skipped with the reason, so the
report never claims what did not run. `--budget` bounds the wall time: stages that would start past
it are skipped, and the report is always written.

On a CPU host (`--toy`, used by the tests) the same code runs a 2-block model at 64 px, to prove the
script end to end without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

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


def report(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# GPU acceptance run",
        "",
        f"Device: {env.get('gpu', 'CPU (toy run)')}; torch {env['torch']}, diffusers {env['diffusers']}, "
        f"TensorRT {env['tensorrt'] or 'not installed'}. Batch 1, median of CUDA-event timings after warm-up; "
        "random weights (latency does not depend on the values).",
        "",
        "| what | px | median ms | min | max |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['what']} | {r['px']} | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['what']} | {r['px']} | {r['median_ms']} | {r['min_ms']} | {r['max_ms']} |")
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
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(done) + 1))
    ax.barh([f"{r['what']} @ {r['px']}" for r in done], [r["median_ms"] for r in done])
    ax.set_xlabel("median ms (batch 1)")
    ax.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the report (created)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds of wall time to plan within")
    parser.add_argument("--sizes", default="512,1024", help="image sizes in px, comma-separated")
    parser.add_argument("--toy", action="store_true", help="a 2-block model at 64 px (the CPU test of this script)")
    args = parser.parse_args(argv)
    import torch

    started = time.monotonic()
    deadline = started + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [64] if args.toy else [int(s) for s in args.sizes.split(",")]

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    env = environment(torch)
    log(f"environment: {json.dumps(env)}")
    rows: list[dict] = []
    skipped = []
    if env["diffusers"] is None:
        skipped.append("the diffusers baselines: diffusers is not installed")
    else:
        rows += transformer_rows(torch, TOY if args.toy else XL, sizes, device, deadline, log)
        torch.cuda.empty_cache() if device == "cuda" else None
        rows += vae_rows(torch, sizes, device, deadline, args.toy, log)
    skipped.append(
        "TensorRT bundles built, compiled and checked for parity on this GPU (issue #16): "
        + (
            "tensorrt is not installed on this host"
            if env["tensorrt"] is None
            else "not written yet in this version of the script"
        )
    )
    result = {
        "environment": env,
        "rows": rows,
        "skipped_stages": skipped,
        "seconds": round(time.monotonic() - started, 1),
        "budget_s": args.budget,
    }
    (args.out / "gpu_acceptance.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_acceptance.md").write_text(report(result))
    plot(rows, args.out / "gpu_acceptance.png")
    log(f"wrote {args.out}/gpu_acceptance.{{json,md,png}}")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
