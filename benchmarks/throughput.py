#!/usr/bin/env python3
"""Images per second of an ov-cpu-int8 engine at batch 1, 2 and 4 under OpenVINO's performance hints
and stream settings (issue #22, item 4).

For each batch size B, prompt -> image (the whole pipeline through `runtime.load`'s Pipeline), with:
- `latency`: the engine as built (PERFORMANCE_HINT=LATENCY, one stream, every core), one call of B images;
- `latency-1t`: the same with INFERENCE_NUM_THREADS=1 (what one of several concurrent users would get);
- `throughput`: PERFORMANCE_HINT=THROUGHPUT (OpenVINO picks the streams: one per core pair or per core),
  B requests of one image each in B threads (a server handling B users), the pipeline's own calls;
- `streams-N`: NUM_STREAMS=N with INFERENCE_NUM_THREADS=cores/N, B one-image requests in B threads.
Every setting runs its B images `--repeats` times, interleaved with the others (round robin), after a
warm-up run each; the median wall time per round gives images/s = B / median. The machine is shared,
so the medians are upper bounds on time; compare settings within one run only.

    .venv/bin/python benchmarks/throughput.py ENGINE_DIR [--batches 1 2 4] [--repeats 5]

Outputs benchmarks/results/throughput_<name>.{md,json}: the CPU, its ISA, the load average before and
after, every setting's figures, and per batch the setting with the most images/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "a red apple on a blue plate",
    "a green triangle to the left of a yellow circle",
    "a small purple square above a big orange circle",
    "two blue circles on a white background",
]


def settings(cores: int) -> dict[str, dict]:
    """name -> {"config": extra compile properties, "parallel": one-image requests in threads}."""
    out = {
        "latency": {"config": {}, "parallel": False},
        "latency-1t": {"config": {"INFERENCE_NUM_THREADS": 1}, "parallel": False},
        "throughput": {"config": {"PERFORMANCE_HINT": "THROUGHPUT"}, "parallel": True},
    }
    for streams in (2, 4):
        if streams <= cores:
            out[f"streams-{streams}"] = {
                "config": {
                    "PERFORMANCE_HINT": "THROUGHPUT",
                    "NUM_STREAMS": streams,
                    "INFERENCE_NUM_THREADS": cores // streams,
                },
                "parallel": True,
            }
    return out


def pipeline_with(folder: Path, extra: dict):
    """The engine's pipeline, every graph compiled with its recorded properties plus `extra`."""
    from pixart_export.runtime import load

    pipe = load(folder)
    runner = pipe.runner
    recorded = runner.graph_config

    def graph_config(record):
        config = dict(recorded(record))
        config.update(extra)
        return config

    runner.graph_config = graph_config
    return pipe


def one_round(pipe, batch: int, parallel: bool, pool) -> float:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    t0 = time.perf_counter()
    if parallel and batch > 1:
        list(pool.map(lambda i: pipe([prompts[i]], seed=i, output="np"), range(batch)))
    else:
        pipe(prompts, seed=0, output="np")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default=None, help="results file suffix (default: the folder's name)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from pixart_export.backends.openvino.runner import cpu_info

    cpu = cpu_info()
    cores = cpu["logical_cores"] or 1
    load_before = os.getloadavg()
    print(f"CPU: {cpu['model']}, {cores} logical cores, ISA {' '.join(cpu['isa'])}; load {load_before}", flush=True)
    table = settings(cores)
    pipes = {name: pipeline_with(args.engine, s["config"]) for name, s in table.items()}
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max(args.batches)) as pool:
        for batch in args.batches:
            times: dict[str, list[float]] = {name: [] for name in table}
            for name in table:  # warm-up: compiles this batch's shapes
                one_round(pipes[name], batch, table[name]["parallel"], pool)
            for _ in range(args.repeats):
                for name in table:
                    times[name].append(one_round(pipes[name], batch, table[name]["parallel"], pool))
            for name in table:
                median = statistics.median(times[name])
                row = {
                    "batch": batch,
                    "setting": name,
                    "config": table[name]["config"],
                    "requests": f"{batch} x 1 image in threads"
                    if table[name]["parallel"] and batch > 1
                    else f"1 x {batch}",
                    "median_s": round(median, 4),
                    "min_s": round(min(times[name]), 4),
                    "images_per_s": round(batch / median, 3),
                    "runs": args.repeats,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    best = {}
    for batch in args.batches:
        mine = [r for r in rows if r["batch"] == batch]
        top = max(mine, key=lambda r: r["images_per_s"])
        base = next(r for r in mine if r["setting"] == "latency")
        best[str(batch)] = {
            "setting": top["setting"],
            "images_per_s": top["images_per_s"],
            "vs_latency_as_built": round(top["images_per_s"] / base["images_per_s"], 2),
        }
    result = {
        "engine": str(args.engine),
        "cpu": cpu,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "repeats": args.repeats,
        "rows": rows,
        "best": best,
        "note": "shared machine: times are upper bounds; settings compared within this one run only",
    }
    name = args.name or args.engine.name
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"throughput_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# ov-cpu-int8 throughput: {name}",
        "",
        f"Made by `python benchmarks/throughput.py` on {cpu['model']} ({cores} logical cores, ISA "
        f"{' '.join(cpu['isa'])}); load average {load_before[0]:.1f} before, {result['load_average_after'][0]:.1f} "
        f"after (shared machine: upper bounds). Median of {args.repeats} interleaved rounds after a warm-up.",
        "",
        "| batch | setting | requests | config | median s | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        config = ", ".join(f"{k}={v}" for k, v in r["config"].items()) or "as built (LATENCY)"
        cells = (r["batch"], r["setting"], r["requests"], config, f"{r['median_s']:.3f}", f"{r['images_per_s']:.2f}")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += [
        "",
        "Most images/s per batch: "
        + "; ".join(
            f"{b}: {v['setting']} ({v['images_per_s']:.2f}/s, {v['vs_latency_as_built']}x as built)"
            for b, v in best.items()
        ),
    ]
    (args.out / f"throughput_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
