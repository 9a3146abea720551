#!/usr/bin/env python3
"""CPU settings of an XL-size int8 transformer step, measured (issue #22, items 3 and 4): bf16 per op group
(`backends/openvino/precision.py`) and OpenVINO's performance hints and streams at batch 1, 2 and 4.

Reads the one-step `transformer_<res>.xml` of an ov-cpu-int8 engine folder (read only; e.g. the full-size
model's, `benchmarks/full_size_model.py`: PixArt-XL-2's DiT with random weights, 512 px: 28 blocks, 1152
wide, 1024 tokens). Inputs: seeded normal latents
and caption embeddings, timestep 500, a full mask, zero control residuals (the plain path).

1. bf16 groups, batch 1: the step compiled f32 (as the engine runs it), bf16 for every float op (no marks),
   and bf16 for some groups only (the rest marked f32); each one's relative L2 against the f32 step's
   output (what bf16 adds to the int8 graph) and its median time over interleaved runs.
2. images/s of the step at batch 1, 2 and 4: PERFORMANCE_HINT=LATENCY (one request of B) against
   THROUGHPUT with NUM_STREAMS=2, one thread each (B requests of one image, in threads), f32.

    .venv/bin/python benchmarks/xl_cpu_settings.py runs/full-size-engines/ov-cpu-int8 [--repeats 3]

Writes benchmarks/results/xl_cpu_settings.{json,md}. A shared 2-core machine: times are upper bounds;
compare rows within one run only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: bf16 variants: name -> the groups that run bf16 (None: no marks at all, every float op bf16).
VARIANTS = {
    "bf16-all": None,
    "bf16-elementwise+normalisation": ["elementwise", "normalisation"],
    "bf16-elementwise": ["elementwise"],
}


def inputs(model, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for port in model.inputs:
        name = port.get_any_name()
        shape = [d.get_length() if d.is_static else batch for d in port.get_partial_shape()]
        if name == "timestep":
            feeds[name] = np.full(shape, 500.0, np.float32)
        elif name.endswith("mask"):
            feeds[name] = np.ones(shape, np.int64)
        elif name == "control_residuals":
            feeds[name] = np.zeros(shape, np.float32)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def median_times(fns: dict, repeats: int) -> dict[str, float]:
    times = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--graph", default="transformer_512x512.xml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import openvino as ov

    from pixart_export.backends.openvino.precision import runtime_precisions, write_marked
    from pixart_export.backends.openvino.runner import compile_config, cpu_info, has_bf16, run_compiled
    from pixart_export.metrics import rel_l2

    cpu = cpu_info()
    load = os.getloadavg()
    print(f"CPU: {cpu['model']}, {cpu['logical_cores']} cores, ISA {' '.join(cpu['isa'])}; load {load}", flush=True)
    core = ov.Core()
    xml = args.engine / args.graph
    model = core.read_model(str(xml))
    feeds1 = inputs(model, 1)
    result = {"graph": str(xml), "cpu": cpu, "load_average_before": load, "repeats": args.repeats}

    # 1. bf16 groups at batch 1
    rows = []
    if has_bf16(cpu):
        f32 = core.compile_model(model, "CPU", compile_config("f32"))
        want = run_compiled(f32, feeds1)[0]
        compiled = {"f32": f32}
        with tempfile.TemporaryDirectory() as tmp:
            for name, groups in VARIANTS.items():
                source = model
                if groups is not None:
                    write_marked(xml, Path(tmp) / f"{name}.xml", groups)
                    source = core.read_model(str(Path(tmp) / f"{name}.xml"))
                compiled[name] = core.compile_model(source, "CPU", compile_config("bf16"))
                print(f"compiled {name}", flush=True)
            times = median_times({k: (lambda c=c: run_compiled(c, feeds1)) for k, c in compiled.items()}, args.repeats)
            for name, c in compiled.items():
                ran = runtime_precisions(c).get("bf16", {})
                rows.append(
                    {
                        "variant": name,
                        "bf16_groups": "none" if name == "f32" else (VARIANTS[name] or "all"),
                        "rel_l2_vs_f32": 0.0 if name == "f32" else rel_l2(run_compiled(c, feeds1)[0], want),
                        "median_s": times[name],
                        "speedup_vs_f32": times["f32"] / times[name],
                        "bf16_nodes": sum(ran.values()),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        del compiled, f32
    result["bf16_groups"] = rows or "this CPU has no native bf16: not measured"

    # 2. hints and streams, f32 as built
    cores = cpu["logical_cores"] or 1
    configs = {
        "LATENCY": {**compile_config("f32")},
        "THROUGHPUT-2x1": {
            **compile_config("f32"),
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": 2,
            "INFERENCE_NUM_THREADS": max(1, cores // 2),
        },
    }
    compiled = {k: core.compile_model(model, "CPU", v) for k, v in configs.items()}
    tput = []
    with concurrent.futures.ThreadPoolExecutor(max(args.batches)) as pool:
        for batch in args.batches:
            one = inputs(model, 1)
            whole = inputs(model, batch)
            fns = {
                "LATENCY": lambda: run_compiled(compiled["LATENCY"], whole),
                "THROUGHPUT-2x1": lambda: list(
                    pool.map(lambda _: run_compiled(compiled["THROUGHPUT-2x1"], one), range(batch))
                ),
            }
            times = median_times(fns, args.repeats)
            for name, t in times.items():
                tput.append(
                    {
                        "batch": batch,
                        "setting": name,
                        "requests": f"1 x {batch}" if name == "LATENCY" else f"{batch} x 1 in threads",
                        "median_s": t,
                        "images_per_s": batch / t,
                    }
                )
                print(json.dumps(tput[-1]), flush=True)
    result["throughput"] = tput
    result["load_average_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xl_cpu_settings.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# XL int8 transformer step on CPU: bf16 per op group, hints and streams",
        "",
        f"Made by `python benchmarks/xl_cpu_settings.py {args.engine}` on {cpu['model']} ({cores} cores, ISA "
        f"{' '.join(cpu['isa'])}); load average {load[0]:.1f} before, {result['load_average_after'][0]:.1f} after "
        f"(shared: upper bounds). Graph {args.graph}; medians of {args.repeats} interleaved runs after a warm-up.",
        "",
    ]
    if rows:
        lines += ["| variant | bf16 nodes | rel L2 vs f32 step | median s | speed-up vs f32 |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['variant']} | {r['bf16_nodes']} | {r['rel_l2_vs_f32']:.2e} | {r['median_s']:.2f} | "
            f"{r['speedup_vs_f32']:.2f}x |"
            for r in rows
        ]
        lines.append("")
    lines += ["| batch | setting | requests | median s | images/s |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['batch']} | {r['setting']} | {r['requests']} | {r['median_s']:.2f} | {r['images_per_s']:.3f} |"
        for r in tput
    ]
    (args.out / "xl_cpu_settings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
