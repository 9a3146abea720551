#!/usr/bin/env python3
"""The real model at full size (T5-XXL, PixArt-XL's DiT, the SD VAE; `full_size_model.py`): build, then
latency and memory side by side with diffusers, each row in a process of its own.

    .venv/bin/python benchmarks/full_size_model.py runs/full-size
    .venv/bin/python benchmarks/full_size.py build   --model runs/full-size --out runs/full-size-engines/ov-cpu-int8
    .venv/bin/python benchmarks/full_size.py measure --model runs/full-size --engine runs/full-size-engines/ov-cpu-int8
    .venv/bin/python benchmarks/full_size.py render      # results/full_size.json -> results/full_size.md
    .venv/bin/python benchmarks/full_size_model.py runs/full-size-1024 --size 1024 --text-encoder-from runs/full-size
    .venv/bin/python benchmarks/full_size.py check --build --model runs/full-size-1024 \
        --engine runs/full-size-engines-1024/ov-cpu-int8 --cpp   # the 1024 px build-and-run check

`build` runs `pixart-export build --target ov-cpu-int8` in a child process with the calibration planned
for XL on this machine (as `latency.py` does: 2 prompts x 4 steps for the one-step graph, 2 for the
unrolled one, the NNCF candidate chosen on tiny) and `verify=False`: the weights are random, so the
image gate would score noise against noise (and its 16 XL reference images alone take ~15 min here);
the T5's fidelity is measured instead (`t5`: the int8 engine graph against the streamed fp32
reference over the held-out prompt file). Its stage records (`build.stages`: seconds, peak RSS) are
read from the manifest.

`measure` rows, each a child process whose peak RSS is its own (`os.wait4`):
- `ours`: the engine through `pixart_export.runtime` (no torch): text encoder, one transformer step,
  the 4-step unrolled denoiser, VAE decoder, end to end, median of `--repeats` after a warm-up;
- `run`, `run --low-memory`: the `pixart-export run` command as a user runs it, wall time and peak RSS
  (and `pixart_run` of the C++ runtime where it is built: `--cpp`); the images are compared (0 levels);
- `diffusers`: `PixArtAlphaPipeline` + `LCMScheduler`, 4 steps, guidance 0, on the same folder. fp32
  needs 20.3 GiB of weights alone on this 24 GiB host (less what the OS and the other processes hold),
  so it runs in bf16 unless `--diffusers-dtype fp32`; the table says which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "a red apple on a blue plate"
SEED = 11
STAGES = ["text_encoder", "transformer_step", "denoiser_lcm4", "vae_decoder", "end_to_end"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up (first inference compiles / allocates)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": len(runs)}


def peak_rss() -> int:
    """This process's high-water mark of resident memory, bytes (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def run_child(cmd: list[str], env: dict | None = None) -> tuple[int, float, int, str]:
    """(exit code, wall seconds, peak RSS bytes of the child, its output)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss * 1024, text


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def cpu() -> dict:
    from pixart_export.backends.openvino.runner import cpu_info

    return cpu_info()


# -- build -------------------------------------------------------------------------------------------------
def build(model: Path, out: Path, quick: bool = False) -> dict:
    """`pixart-export build --target ov-cpu-int8` in a child; its manifest's stage records and sizes.

    Calibration is planned for the time of one run on 2 cores, as `latency.py --xl` plans it: 2 prompts for
    each int8 graph, the candidate measured best on tiny; the VAE decoder's gate on 2 calibration and 2
    held-out latents (each a reference pipeline run with the streamed T5-XXL), 2 timed repeats. The
    16-image decoder gate and the full int8 trial run on tiny, where they decide; here they only have to
    run and record. `quick` (the 1024 px build-and-run check, where each reference step is ~4x the 512 px
    one): the decoder stays fp32 without trial and the bf16 op groups are not tried (both decided at 512 px
    and on tiny), so the check measures what it is for: that the build and the runs complete within
    memory at 4096 tokens."""
    from pixart_export.manifest import read_manifest

    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path;"
        "from pixart_export.build import build_target;"
        "from pixart_export.backends.openvino import quantize;"
        "from pixart_export.backends.openvino.decoder import decoder_options;"
        "from pixart_export.backends.openvino.options import int8_options;"
        "opts = int8_options(candidates=quantize.CANDIDATES[:1], transformer_prompts=2, denoiser_prompts=2,"
        " held_out_prompts=1, bf16_groups=sys.argv[4] == 'full');"
        "opts['decoder'] = decoder_options(calibration_images=2, held_out_images=2, repeats=2) if sys.argv[4] == 'full'"
        " else decoder_options(candidates=['fp32'], calibration_images=1, held_out_images=1, repeats=1);"
        "build_target('ov-cpu-int8', sys.argv[2], out=Path(sys.argv[3]), options=opts, verify=False, force=True)"
    )
    log(f"build ov-cpu-int8 of {model} -> {out}")
    argv = [sys.executable, "-c", code, str(ROOT), str(model), str(out), "quick" if quick else "full"]
    rc, seconds, rss, text = run_child(argv)
    log_file = out.parent / f"{out.name}.build.log"
    log_file.write_text(text)
    if rc != 0:
        raise SystemExit(f"build failed (exit {rc}); the log is in {log_file}")
    manifest = read_manifest(out)
    stages = manifest.build.get("stages", [])
    log(f"built in {seconds:.0f} s, peak RSS {rss / 2**30:.2f} GiB")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_bytes": rss,
        "stages": stages,
        "engine_bytes": folder_bytes(out),
        "graphs": {g.file: g.bytes for g in manifest.graphs},
    }


# -- rows, each run in its own process (`row` subcommand) ------------------------------------------------------
def row_ours(engine: Path, repeats: int) -> dict:
    """Per-stage latency of the engine through the torch-free runtime."""
    import numpy as np

    from pixart_export import runtime

    pipe = runtime.load(engine)
    manifest, runner = pipe.manifest, pipe.runner
    rec = {g.graph: g for g in manifest.graphs}
    h, w = manifest.resolutions[0]
    f = manifest.vae_scale_factor
    ids, mask = pipe.tokenizer([PROMPT])
    rng = np.random.default_rng(SEED)
    embeds = runner.run(rec["text_encoder"], {"input_ids": ids, "attention_mask": mask})[0]
    latents = rng.standard_normal((1, manifest.latent_channels, h // f, w // f), dtype=np.float32)
    step_inputs = {t.name: t for t in rec["transformer"].inputs}
    step = {"latents": latents, "timestep": np.array([999.0], np.float32), "prompt_embeds": embeds}
    step["prompt_attention_mask"] = mask
    if "control_residuals" in step_inputs:
        shape = [1 if d == "B" else d for d in step_inputs["control_residuals"].shape]
        step["control_residuals"] = np.zeros(shape, np.float32)
    den_name = f"denoiser_lcm{manifest.steps}"
    noise = rng.standard_normal((manifest.steps - 1, *latents.shape), dtype=np.float32)
    den = {"latents": latents, "step_noise": noise, "prompt_embeds": embeds, "prompt_attention_mask": mask}
    stages = {
        "text_encoder": lambda: runner.run(rec["text_encoder"], {"input_ids": ids, "attention_mask": mask}),
        "transformer_step": lambda: runner.run(rec["transformer"], step),
        "denoiser_lcm4": lambda: runner.run(rec[den_name], den),
        "vae_decoder": lambda: runner.run(rec["vae_decoder"], {"denoised": latents}),
        "end_to_end": lambda: pipe(PROMPT, seed=SEED),
    }
    out = {}
    for name, fn in stages.items():
        log(f"  ours {name}")
        out[name] = timed(fn, repeats)
    return {"stages": out, "peak_rss_bytes": peak_rss()}


def row_diffusers(model: Path, repeats: int, dtype: str) -> dict:
    """The same stages in diffusers' PixArtAlphaPipeline (eager PyTorch)."""
    import torch
    from diffusers import LCMScheduler, PixArtAlphaPipeline

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    pipe = PixArtAlphaPipeline.from_pretrained(str(model), local_files_only=True, torch_dtype=torch_dtype)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    h = w = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    tok = pipe.tokenizer([PROMPT], padding="max_length", max_length=120, truncation=True, return_tensors="pt")
    g = torch.Generator().manual_seed(SEED)
    latents = torch.randn(1, 4, h // 8, w // 8, generator=g).to(torch_dtype)
    with torch.no_grad():
        embeds = pipe.text_encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]

    def transformer_step():
        with torch.no_grad():
            pipe.transformer(
                latents,
                encoder_hidden_states=embeds,
                timestep=torch.tensor([999.0]),
                encoder_attention_mask=tok.attention_mask,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            )

    def text_encoder():
        with torch.no_grad():
            pipe.text_encoder(tok.input_ids, attention_mask=tok.attention_mask)

    def denoiser_lcm4():
        for _ in range(4):
            transformer_step()

    def vae_decoder():
        with torch.no_grad():
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor)

    def end_to_end():
        pipe(
            PROMPT,
            num_inference_steps=4,
            guidance_scale=0.0,
            clean_caption=False,
            use_resolution_binning=False,
            height=h,
            width=w,
            output_type="np",
            generator=torch.Generator().manual_seed(SEED),
        )

    out = {}
    for name, fn in (
        ("text_encoder", text_encoder),
        ("transformer_step", transformer_step),
        ("denoiser_lcm4", denoiser_lcm4),
        ("vae_decoder", vae_decoder),
        ("end_to_end", end_to_end),
    ):
        log(f"  diffusers {name}")
        out[name] = timed(fn, repeats)
    return {"stages": out, "peak_rss_bytes": peak_rss(), "dtype": dtype}


def row_t5(model: Path, engine: Path) -> dict:
    """The engine's int8-weight T5 against the fp32 reference (streamed) over the held-out prompt file."""
    import numpy as np

    from pixart_export import runtime
    from pixart_export.calibration import HELD_OUT_PROMPTS, read_prompts
    from reference.t5_streamed import StreamedT5Encoder

    prompts = read_prompts(HELD_OUT_PROMPTS)
    pipe = runtime.load(engine)
    rec = next(g for g in pipe.manifest.graphs if g.graph == "text_encoder")
    ids, mask = pipe.tokenizer(prompts)
    got = np.concatenate(
        [
            pipe.runner.run(rec, {"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4]})[0]
            for i in range(0, len(prompts), 4)
        ]
    )
    pipe.runner.release(["text_encoder"])
    import torch

    ref = StreamedT5Encoder(model / "text_encoder")
    want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[0].numpy()
    per = [float(np.linalg.norm(g - w) / np.linalg.norm(w)) for g, w in zip(got, want)]
    return {
        "prompts": len(prompts),
        "rel_l2": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
        "rel_l2_worst_prompt": max(per),
        "peak_rss_bytes": peak_rss(),
    }


def child_row(kind: str, args) -> dict:
    """Run `row <kind>` of this script in a child process; its JSON and its own peak RSS."""
    cmd = [sys.executable, __file__, "row", kind, "--model", str(args.model), "--engine", str(args.engine)]
    cmd += ["--repeats", str(args.repeats), "--diffusers-dtype", args.diffusers_dtype]
    rc, seconds, rss, text = run_child(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if rc != 0:
        log(f"row {kind} failed (exit {rc}):\n{text[-3000:]}")
        return {"failed": f"exit {rc}", "tail": text[-1500:]}
    result = json.loads(text.strip().splitlines()[-1])
    result["process_peak_rss_bytes"] = rss
    result["process_seconds"] = round(seconds, 1)
    return result


def run_commands(args) -> dict:
    """`pixart-export run` (and `pixart_run`) as a user runs them: wall time, peak RSS, equal images."""
    import numpy as np
    from PIL import Image

    out = {"measured_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_average": os.getloadavg()[0]}
    tmp = Path(tempfile.mkdtemp(prefix="full-size-run-"))
    cli = [str(ROOT / ".venv" / "bin" / "pixart-export"), "run", str(args.engine), "--prompt", PROMPT]
    cli += ["--seed", str(SEED)]
    commands = {"run": cli + ["--out", str(tmp / "run.png")], "run_low_memory": cli + ["--low-memory"]}
    commands["run_low_memory"] += ["--out", str(tmp / "run_low_memory.png")]
    cpp = ROOT / "cpp" / "build" / "pixart_run"
    if args.cpp and cpp.exists():
        base = [str(cpp), str(args.engine), "--prompt", PROMPT, "--seed", str(SEED)]
        commands["cpp_run"] = base + ["--out", str(tmp / "cpp_run.png")]
        commands["cpp_run_low_memory"] = base + ["--low-memory", "--out", str(tmp / "cpp_run_low_memory.png")]
    for name, cmd in commands.items():
        log(f"  {name}")
        rc, seconds, rss, text = run_child(cmd)
        out[name] = {"exit": rc, "seconds": round(seconds, 2), "peak_rss_bytes": rss}
        if rc != 0:
            out[name]["tail"] = text[-1500:]
    images = {n: np.asarray(Image.open(tmp / f"{n}.png")).astype(int) for n in commands if (tmp / f"{n}.png").exists()}
    if "run" in images:
        out["max_level_difference_vs_run"] = {n: int(np.abs(v - images["run"]).max()) for n, v in images.items()}
    return out


def measure(args) -> dict:
    from pixart_export.manifest import read_manifest

    info = cpu()
    log(f"CPU: {info['model']}, {info['logical_cores']} logical cores, ISA: {' '.join(info['isa'])}")
    manifest = read_manifest(args.engine)
    te = json.loads((args.model / "text_encoder" / "config.json").read_text())
    from reference.t5_streamed import tensor_table

    params = sum(_numel(s) for _, _, s in tensor_table(args.model / "text_encoder").values())
    result = {
        "cpu": info,
        "machine": platform.machine(),
        "model": str(args.model),
        "engine": str(args.engine),
        "resolution": list(manifest.resolutions[0]),
        "text_encoder": {k: te[k] for k in ("num_layers", "d_model", "d_ff", "num_heads", "vocab_size")},
        "text_encoder_params": params,
        "model_bytes": folder_bytes(args.model),
        "engine_bytes": folder_bytes(args.engine),
        "build_stages": manifest.build.get("stages", []),
        "repeats": args.repeats,
    }
    stages = result["build_stages"]
    if stages:
        result["build_peak_rss_gib"] = round(build_peak(stages) / 2**30, 2)
    rows = [r for r in args.rows.split(",") if r]
    if "commands" in rows:
        log("run commands")
        result["commands"] = run_commands(args)
        cmds = result["commands"]
        if cmds.get("run", {}).get("exit") == 0:
            result["run_peak_rss_gib"] = round(cmds["run"]["peak_rss_bytes"] / 2**30, 2)
        if cmds.get("run_low_memory", {}).get("exit") == 0:
            result["run_low_memory_peak_rss_gib"] = round(cmds["run_low_memory"]["peak_rss_bytes"] / 2**30, 2)
    for kind in ("t5", "ours", "diffusers"):
        if kind in rows:
            log(f"row {kind}")
            result[kind] = child_row(kind, args)
    if "stages" in result.get("ours", {}):
        result["e2e_s"] = round(result["ours"]["stages"]["end_to_end"]["median"], 2)
    if "stages" in result.get("diffusers", {}):
        result["diffusers_e2e_s"] = round(result["diffusers"]["stages"]["end_to_end"]["median"], 2)
        result["diffusers_dtype"] = result["diffusers"]["dtype"]
    return result


def check(args) -> dict:
    """The build-and-run check of one more bucket (the 1024 px model: `full_size_model.py --size 1024`):
    `--build` builds it first as `build` does; then `run` and `run --low-memory` (and the C++ runtime's
    with `--cpp`) as `measure`'s commands rows, with the manifest's stage records."""
    from pixart_export.manifest import read_manifest

    out = {"build": build(args.model, args.engine, quick=True)} if args.build else {}
    manifest = read_manifest(args.engine)
    out["resolution"] = list(manifest.resolutions[0])
    out["build_stages"] = manifest.build.get("stages", [])
    out["engine_bytes"] = folder_bytes(args.engine)
    log(f"run commands at {out['resolution'][0]}x{out['resolution'][1]}")
    out["commands"] = run_commands(args)
    return out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- report ------------------------------------------------------------------------------------------------
def render(data: dict) -> str:
    gib = 2**30
    c = data["cpu"]
    lines = [
        "# The real model at full size: PixArt-XL + T5-XXL + SD VAE (random weights), ov-cpu-int8 vs diffusers",
        "",
        f"Measured by `benchmarks/full_size.py` on {c['model']}, {c['logical_cores']} logical cores "
        f"(ISA: {', '.join(c['isa'])}), 24 GiB. Model `{data['model']}`: T5 {data['text_encoder']['num_layers']} "
        f"layers x {data['text_encoder']['d_model']} (d_ff {data['text_encoder']['d_ff']}, "
        f"{data['text_encoder']['num_heads']} heads), **{data['text_encoder_params']:,} text-encoder parameters**; "
        f"{data['resolution'][0]}x{data['resolution'][1]} px, batch 1; median of {data['repeats']} after a warm-up, "
        "each row in its own process.",
        "",
    ]
    ours, peer = data.get("ours", {}).get("stages"), data.get("diffusers", {}).get("stages")
    if ours or peer:
        dtype = data.get("diffusers_dtype", "?")
        lines += [
            "| stage | ours: ov-cpu-int8 (s) | diffusers eager " + dtype + " (s) | speed-up |",
            "|---|---|---|---|",
        ]
        for s in STAGES:
            a = ours and ours.get(s, {}).get("median")
            b = peer and peer.get(s, {}).get("median")
            ratio = f"{b / a:.2f}x" if a and b else ""
            fa = f"{a:.2f}" if a else ""
            fb = f"{b:.2f}" if b else ""
            lines.append(f"| {s} | {fa} | {fb} | {ratio} |")
        pr = [
            data.get("ours", {}).get("process_peak_rss_bytes"),
            data.get("diffusers", {}).get("process_peak_rss_bytes"),
        ]
        lines.append("| peak RSS (GiB) | " + " | ".join(f"{v / gib:.2f}" if v else "" for v in pr) + " | |")
        lines.append(f"| disk (GiB) | {data['engine_bytes'] / gib:.2f} | {data['model_bytes'] / gib:.2f} | |")
        lines.append("")
        lines.append(
            "`denoiser_lcm4`: ours is the unrolled 4-step graph; diffusers' row is 4 transformer calls. "
            "`end_to_end`: prompt -> image in memory (tokenise, encode, 4 steps, decode)."
        )
        lines.append("")
    titles = {
        "commands": "`run` as a user runs it (wall time includes loading and compiling every graph)",
        "commands_buffered_weights": "`run` before the weights were mapped (read into a buffer)",
    }
    for key, title in titles.items():
        cmds = data.get(key)
        if not cmds:
            continue
        lines += [f"## {title}", ""]
        if cmds.get("measured_utc"):
            lines += [f"Measured {cmds['measured_utc']} UTC, load average {cmds['load_average']}.", ""]
        if cmds.get("note"):
            lines += [cmds["note"][0].upper() + cmds["note"][1:] + ".", ""]
        lines += ["| command | exit | seconds | peak RSS (GiB) |", "|---|---|---|---|"]
        for name, r in cmds.items():
            if isinstance(r, dict) and "exit" in r:
                lines.append(f"| {name} | {r['exit']} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / gib:.2f} |")
        if "max_level_difference_vs_run" in cmds:
            lines.append("")
            lines.append(f"Images against `run`'s, max uint8 difference: {cmds['max_level_difference_vs_run']}.")
        lines.append("")
    for key in sorted(k for k in data if k.startswith("check_")):
        lines += _render_check(data[key])
    t5 = data.get("t5")
    if t5 and "rel_l2" in t5:
        lines += [
            "## T5-XXL int8 weights vs the fp32 reference",
            "",
            f"Over the held-out prompt file ({t5['prompts']} prompts): prompt-embedding relative L2 "
            f"**{t5['rel_l2']:.2e}** (worst prompt {t5['rel_l2_worst_prompt']:.2e}); tolerance 1e-1 "
            "(`verify.TOLERANCES`, the int8 row). The fp32 reference is T5 streamed one block at a time from "
            "the fp32 files (`reference/t5_streamed.py`); the engine's T5 was converted from bf16 weights and "
            "compressed to int8 weights (per-channel, asymmetric; activations fp32).",
            "",
        ]
    stages = data.get("build_stages")
    if stages:
        lines += ["## Build stages (`manifest.build.stages`)", ""]
        lines += [
            "| stage | seconds | recorded peak RSS (GiB) | the process's own | a child's |",
            "|---|---|---|---|---|",
        ]
        for s in stages:
            own, child = own_and_child(s)
            child_text = f"{child / gib:.2f}" + (
                " (an earlier child: a bound)" if s.get("children_peak_is_bound") else ""
            )
            lines.append(
                f"| {s['name']} | {s['seconds']:.0f} | {s['peak_rss_bytes'] / gib:.2f} | {own / gib:.2f} | "
                + (child_text if child else "")
                + " |"
            )
        lines.append("")
        lines.append(
            "A manifest written before parent-plus-child-at-once accounting (`StageMeter.child_ran`) recorded "
            "the process's peak and the largest child's peak added, which is a bound: the own column is "
            "that figure less the child's."
        )
        lines.append("")
    return "\n".join(lines) + "\n"


def _render_check(check: dict) -> list[str]:
    gib = 2**30
    if "resolution" not in check:  # a recorded attempt that did not finish (`check_1024_attempt`)
        return [
            f"## An earlier build-and-run attempt ({check.get('started_utc', '?')} - "
            f"{check.get('ended_utc', '?')} UTC)",
            "",
            f"`{check.get('command', '')}`: {check.get('result', '')}",
            "",
        ]
    h, w = check["resolution"]
    lines = [f"## Build-and-run check at {h}x{w} px (`full_size.py check`)", ""]
    build_record = check.get("build")
    if build_record:
        lines.append(
            f"Build: {build_record['seconds'] / 60:.0f} min, engine folder {check['engine_bytes'] / gib:.2f} GiB. "
            "Stages (seconds, the process's own peak RSS GiB): "
            + ", ".join(
                f"{st['name'].split(' ')[0]} {st['seconds']:.0f} s / {own_and_child(st, False)[0] / gib:.2f}"
                + _child_text(st)
                for st in check["build_stages"]
            )
            + "."
        )
        lines.append("")
    lines += ["| command | exit | seconds | peak RSS (GiB) |", "|---|---|---|---|"]
    cmds = check["commands"]
    for name, r in cmds.items():
        if isinstance(r, dict) and "exit" in r:
            lines.append(f"| {name} | {r['exit']} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / gib:.2f} |")
    if "max_level_difference_vs_run" in cmds:
        lines += ["", f"Images against `run`'s, max uint8 difference: {cmds['max_level_difference_vs_run']}."]
    return lines + [""]


def _child_text(stage: dict) -> str:
    """How a (current-format) stage record's child figure reads beside the process's own peak."""
    own, child = own_and_child(stage, False)
    if not child:
        return ""
    if stage.get("children_measured_with_parent"):
        return f" (with a child at once: {child / 2**30:.2f})"
    if stage.get("children_peak_is_bound"):
        return f" (an earlier child's {child / 2**30:.2f}, a bound, not added)"
    return f" (+ child {child / 2**30:.2f})"


def own_and_child(stage: dict, legacy: bool = True) -> tuple[int, int]:
    """(the build process's own peak, the child's peak) of a stage record, bytes. Records written before
    `StageMeter.child_ran` (`legacy`) added every child's peak, a bound among them; later ones add only an
    exact child and leave a bound beside, unadded (`resources.StageMeter.record`). A legacy record whose
    figure is below its bound cannot have added it."""
    child = stage.get("children_peak_rss_bytes", 0)
    if stage.get("children_measured_with_parent"):
        return stage["peak_rss_bytes"], child
    bound = stage.get("children_peak_is_bound")
    added = child and (not bound or (legacy and stage["peak_rss_bytes"] >= child))
    return (stage["peak_rss_bytes"] - child if added else stage["peak_rss_bytes"]), child


def build_peak(stages: list[dict]) -> int:
    """The largest stage's memory: its own peak, or parent + child at once where that was measured."""
    return max(
        own_and_child(s)[0] if not s.get("children_measured_with_parent") else s["peak_rss_bytes"] for s in stages
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--model", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    for name in ("measure", "row"):
        p = sub.add_parser(name)
        if name == "row":
            p.add_argument("kind", choices=("ours", "diffusers", "t5"))
        p.add_argument("--model", type=Path, required=True)
        p.add_argument("--engine", type=Path, required=True)
        p.add_argument("--repeats", type=int, default=2)
        p.add_argument("--diffusers-dtype", choices=("fp32", "bf16"), default="bf16")
        p.add_argument("--rows", default="commands,t5,ours,diffusers")
        p.add_argument("--cpp", action="store_true", help="also time cpp/build/pixart_run")
    c = sub.add_parser("check", help="build (--build) and run one more bucket: the 1024 px model")
    c.add_argument("--model", type=Path, required=True)
    c.add_argument("--engine", type=Path, required=True)
    c.add_argument("--build", action="store_true")
    c.add_argument("--cpp", action="store_true", help="also run cpp/build/pixart_run")
    sub.add_parser("render")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "full_size.json"
    if args.cmd == "build":
        data = json.loads(out.read_text()) if out.exists() else {}
        data["build"] = build(args.model, args.out)
        out.write_text(json.dumps(data, indent=1))
    elif args.cmd == "row":
        fns = {
            "ours": lambda: row_ours(args.engine, args.repeats),
            "diffusers": lambda: row_diffusers(args.model, args.repeats, args.diffusers_dtype),
            "t5": lambda: row_t5(args.model, args.engine),
        }
        print(json.dumps(fns[args.kind]()))
    elif args.cmd == "measure":
        data = json.loads(out.read_text()) if out.exists() else {}
        data.update(measure(args))
        out.write_text(json.dumps(data, indent=1))
        (RESULTS / "full_size.md").write_text(render(data))
        log(f"wrote {out} and full_size.md")
    elif args.cmd == "check":
        result = check(args)
        data = json.loads(out.read_text()) if out.exists() else {}
        data[f"check_{result['resolution'][0]}"] = result
        out.write_text(json.dumps(data, indent=1))
        (RESULTS / "full_size.md").write_text(render(data))
        log(f"wrote {out} and full_size.md")
    else:
        (RESULTS / "full_size.md").write_text(render(json.loads(out.read_text())))


if __name__ == "__main__":
    main()
