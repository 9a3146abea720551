#!/usr/bin/env python3
"""C++ runtime vs Python runtime on the same engine folders, side by side in one run.

For each engine folder, each runtime runs in its own fresh process (alternating, `--rounds` times):
open the folder (manifest, sha256 of every file, backend set-up), one first image (OpenVINO compiles
the graphs for the call's shapes here), then `--repeats` warm images (seeds 1..N). Reported per
runtime: open seconds, first-image seconds, median warm end-to-end seconds per image (tokenizer ->
text_encoder -> denoiser_lcm4 -> vae_decoder -> uint8), and the peak resident memory of the process
(the kernel's ru_maxrss of that child). The CPU model and the ISA flags that decide OpenVINO's kernels
are printed first. Without `--engine`, tiny ov-cpu and ov-cpu-int8 engines are built into a scratch
folder (about 4 minutes on 2 cores).

    nice .venv/bin/python benchmarks/cpp_latency.py --results benchmarks/results/cpp_latency_tiny.md
    .venv/bin/python benchmarks/cpp_latency.py --engine engines/ov-cpu-int8-xl --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "a red circle above a blue square"

PYTHON_BENCH = """
import json, sys, time
t = time.perf_counter()
from pixart_export import runtime
pipe = runtime.load(sys.argv[1])
open_s = time.perf_counter() - t
t = time.perf_counter()
pipe(sys.argv[2], seed=0)
first_s = time.perf_counter() - t
warm = []
for k in range(int(sys.argv[3])):
    t = time.perf_counter()
    pipe(sys.argv[2], seed=k + 1)
    warm.append(time.perf_counter() - t)
print(json.dumps({"open_s": open_s, "first_s": first_s, "warm_s": warm}))
"""


def run_measured(cmd: list[str]) -> dict:
    """Run `cmd`, parse its last stdout line as JSON, add the child's peak RSS (MiB)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        out.seek(0)
        lines = out.read().decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {err[-2000:]}")
    result = json.loads(lines[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def build_cpp() -> Path:
    build = ROOT / "cpp" / "build"
    if not (build / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(ROOT / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"], check=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, stdout=subprocess.DEVNULL)
    return build


def tiny_engines(root: Path) -> list[Path]:
    """ov-cpu and ov-cpu-int8 of tiny (int8 with the test-size calibration: one candidate, 2 prompts; the
    graphs and so the latency are those of a full build)."""
    from pixart_export.backends.openvino.options import int8_options
    from pixart_export.backends.openvino.quantize import CANDIDATES
    from pixart_export.build import build_target

    def quiet(message: str) -> None:
        pass

    onnx, _, _ = build_target(
        "ort-cpu", "tiny", out=root / "ort-cpu-tiny", options={"optimise": False}, verify=False, log=quiet
    )
    small = int8_options(candidates=CANDIDATES[:1], transformer_prompts=2, denoiser_prompts=2, held_out_prompts=1)
    ov, _, _ = build_target("ov-cpu", "tiny", out=root / "ov-cpu-tiny", onnx_from=onnx, verify=False, log=quiet)
    int8, _, _ = build_target(
        "ov-cpu-int8", "tiny", out=root / "ov-cpu-int8-tiny", onnx_from=onnx, options=small, log=quiet
    )
    return [ov, int8]


def summary(runs: list[dict]) -> dict:
    warm = [w for r in runs for w in r["warm_s"]]
    return {
        "open_s": statistics.median(r["open_s"] for r in runs),
        "first_s": statistics.median(r["first_s"] for r in runs),
        "warm_median_s": statistics.median(warm),
        "warm_min_s": min(warm),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", type=Path, action="append", help="engine folder (repeatable); default: tiny")
    parser.add_argument("--repeats", type=int, default=10, help="warm images per process")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per runtime and engine")
    parser.add_argument("--results", type=Path, default=None, help="write a markdown report (and .json) here")
    args = parser.parse_args(argv)

    from pixart_export.backends.openvino.runner import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['machine']}, {cpu['logical_cores']} logical cores)")
    print(f"ISA: {' '.join(cpu['isa']) or 'none of the flags OpenVINO picks kernels by'}")
    build = build_cpp()
    with tempfile.TemporaryDirectory(prefix="pixart-cpp-bench-") as scratch:
        engines = args.engine or tiny_engines(Path(scratch))
        rows = []
        for engine in engines:
            cpp_cmd = [str(build / "pixart_tool"), "bench", str(engine), PROMPT, str(args.repeats)]
            py_cmd = [sys.executable, "-c", PYTHON_BENCH, str(engine), PROMPT, str(args.repeats)]
            cpp_runs, py_runs = [], []
            for _ in range(args.rounds):  # alternate, so load drift on a shared host hits both
                cpp_runs.append(run_measured(cpp_cmd))
                py_runs.append(run_measured(py_cmd))
            row = {"engine": Path(engine).name, "cpp": summary(cpp_runs), "python": summary(py_runs)}
            rows.append(row)
            c, p = row["cpp"], row["python"]
            print(
                f"{row['engine']}: warm median C++ {c['warm_median_s'] * 1000:.1f} ms vs Python "
                f"{p['warm_median_s'] * 1000:.1f} ms; first image {c['first_s']:.2f} / {p['first_s']:.2f} s; "
                f"open {c['open_s']:.2f} / {p['open_s']:.2f} s; peak RSS {c['peak_rss_mib']:.0f} / "
                f"{p['peak_rss_mib']:.0f} MiB"
            )
    if args.results:
        head = (
            "| engine | runtime | open s | first image s | warm median ms | warm min ms | peak RSS MiB |\n"
            "|---|---|---|---|---|---|---|\n"
        )
        body = "".join(
            f"| {r['engine']} | {name} | {r[key]['open_s']:.2f} | {r[key]['first_s']:.2f} | "
            f"{r[key]['warm_median_s'] * 1000:.1f} | {r[key]['warm_min_s'] * 1000:.1f} | "
            f"{r[key]['peak_rss_mib']:.0f} |\n"
            for r in rows
            for name, key in (("C++", "cpp"), ("Python", "python"))
        )
        text = (
            "# C++ vs Python runtime, same engine folders (benchmarks/cpp_latency.py)\n\n"
            f"CPU: {cpu['model']}, {cpu['logical_cores']} logical cores; ISA: {' '.join(cpu['isa'])}\n"
            f"{args.rounds} fresh processes per runtime and engine, {args.repeats} warm images each; "
            "peak RSS is the largest of the processes.\n\n" + head + body
        )
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
        args.results.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
