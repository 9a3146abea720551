#!/usr/bin/env python3
"""Load on `pixart-export serve`: N concurrent tritonclient clients on loopback, bounded count and time.

Per engine folder (tiny ort-cpu and ov-cpu-int8 by default: `--engines`/<target>-tiny, built there when
missing) one server (`serve.local.LocalServer`: free 127.0.0.1 ports, the serving environment of
`serve.local.serving_python`), then for each client count: every client sends one-image requests over
HTTP (prompt from a fixed list, a seed of its own per request) back to back until `--requests` requests
have been sent in all or `--max-seconds` have passed. Figures: latency p50/p95/p99 (client side, send to
answer), images per second (answered images / wall time of the level), errors (must be 0), mean images
per call of the graphs (Triton's nv_inference_count / nv_inference_exec_count over the level), and the
peak resident memory of the server's process tree (serve, tritonserver, the model's stub) sampled every
0.1 s. At the end the server gets SIGTERM and must drain and exit 0 by itself.

    .venv/bin/python benchmarks/serve_load.py            # both tiny engines, 1 2 4 8 clients
    .venv/bin/python benchmarks/serve_load.py --clients 1,4 --requests 16 --out /tmp/x

Outputs: benchmarks/results/serve_tiny.{md,json,png}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pixart_export.serve.local import LocalServer, serving_python  # noqa: E402

PROMPTS = [
    "a red circle above a blue square",
    "a green triangle to the left of a yellow circle",
    "a blue square",
    "a yellow triangle below a red square",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def engines(root: Path, targets: list[str]) -> dict[str, Path]:
    from pixart_export.build import build_target

    out: dict[str, Path] = {}
    for target in targets:
        if (root / f"{target}-tiny" / "manifest.json").is_file():  # served as it is (serve validates it)
            out[target] = root / f"{target}-tiny"
            continue
        onnx_from = out.get("ort-cpu") if target != "ort-cpu" else None
        started = time.perf_counter()
        folder, _, reused = build_target(
            target, "tiny", out=root / f"{target}-tiny", steps=4, onnx_from=onnx_from, log=lambda m: None
        )
        log(f"{'reused' if reused else 'built'} {folder} in {time.perf_counter() - started:.0f} s")
        out[target] = folder
    return out


def _metric(server: LocalServer, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def level(server: LocalServer, clients: int, requests: int, max_seconds: float, first_seed: int) -> dict:
    import tritonclient.http as http

    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client_loop():
        client = http.InferenceServerClient(f"127.0.0.1:{server.http}", network_timeout=300)
        while time.monotonic() < deadline:
            k = next(counter)
            if k >= requests:
                break
            prompt = http.InferInput("prompt", [1, 1], "BYTES")
            prompt.set_data_from_numpy(np.array([[PROMPTS[k % len(PROMPTS)].encode()]], dtype=object))
            seed = http.InferInput("seed", [1, 1], "INT64")
            seed.set_data_from_numpy(np.array([[first_seed + k]], np.int64))
            start = time.perf_counter()
            try:
                image = client.infer("pixart", [prompt, seed]).as_numpy("image")
                assert image.dtype == np.uint8 and image.shape[0] == 1
                with lock:
                    latencies.append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(error).__name__}: {str(error)[:200]}")
        client.close()

    peak = {"rss": server.tree_rss()}
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.1):
            peak["rss"] = max(peak["rss"], server.tree_rss())

    sampler = threading.Thread(target=sample, daemon=True)
    count0, exec0 = _metric(server, "nv_inference_count"), _metric(server, "nv_inference_exec_count")
    sampler.start()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    sampling.set()
    sampler.join()
    count, execs = _metric(server, "nv_inference_count") - count0, _metric(server, "nv_inference_exec_count") - exec0
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies) + len(errors),
        "images": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        "images_per_s": len(latencies) / wall if wall else 0.0,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "mean_batch": count / execs if execs else None,
        "peak_rss_gib": peak["rss"] / 2**30,
    }


def render(results: dict, out: Path) -> None:
    meta = results["meta"]
    lines = [
        "# Serving load: tiny engines behind `pixart-export serve` (Triton, KServe v2 over HTTP)",
        "",
        f"Measured {meta['date']} on {meta['machine']}; {meta['note']}",
        "",
        f"Command: `{meta['command']}`. Server: `--max-batch {meta['max_batch']} --max-queue-delay-ms "
        f"{meta['max_queue_delay_ms']}`; clients: tritonclient HTTP on 127.0.0.1, one image per request, "
        f"{meta['requests']} requests per level (or {meta['max_seconds']:g} s). Latency is the client's, "
        "send to answer; images/s = answered images / wall time of the level; batch = images per call of "
        "the graphs (Triton's inference count / execution count); peak RSS = serve + tritonserver + the "
        "model's stub process.",
        "",
        "| engine | clients | requests | errors | images/s | p50 ms | p95 ms | p99 ms | mean batch | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, rows in results["engines"].items():
        for r in rows["levels"]:
            ms = [f"{r[k]:.0f}" if r[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms")]
            lines.append(
                f"| {engine} | {r['clients']} | {r['requests']} | {r['errors']} | {r['images_per_s']:.2f} | "
                f"{' | '.join(ms)} | {(r['mean_batch'] or 0):.2f} | {r['peak_rss_gib']:.2f} |"
            )
    lines += [
        "",
        "Server exit after SIGTERM (drain): "
        + ", ".join(f"{e} {rows['exit_code']}" for e, rows in results["engines"].items()),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for engine, rows in results["engines"].items():
        x = [r["clients"] for r in rows["levels"]]
        a.plot(x, [r["images_per_s"] for r in rows["levels"]], marker="o", label=engine)
        b.plot(x, [r["p50_ms"] for r in rows["levels"]], marker="o", label=f"{engine} p50")
        b.plot(x, [r["p95_ms"] for r in rows["levels"]], marker="x", linestyle="--", label=f"{engine} p95")
    a.set(xlabel="concurrent clients", ylabel="images / s", title="throughput", xscale="log", xticks=x)
    b.set(xlabel="concurrent clients", ylabel="ms", title="latency", xscale="log", xticks=x)
    for ax in (a, b):
        ax.set_xticklabels([str(v) for v in x])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="ort-cpu,ov-cpu-int8", help="tiny engines to serve (default both)")
    parser.add_argument("--engines", type=Path, default=ROOT / "runs" / "bench-engines", help="engine folders")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrent clients per level (default 1,2,4,8)")
    parser.add_argument("--requests", type=int, default=48, help="requests per level (default 48)")
    parser.add_argument("--max-seconds", type=float, default=120, help="time limit per level (default 120)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5)
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_tiny")
    args = parser.parse_args()
    python, why = serving_python()
    if python is None:
        log(why)
        return 2
    folders = engines(args.engines, args.targets.split(","))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    results = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{cpu}, {os.cpu_count()} logical cores, {platform.machine()}",
            "note": args.note or "no other note",
            "command": "benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
            "max_batch": args.max_batch,
            "max_queue_delay_ms": args.max_queue_delay_ms,
            "requests": args.requests,
            "max_seconds": args.max_seconds,
            "serving_python": str(python),
        },
        "engines": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for target, folder in folders.items():
        log(f"serving {folder}")
        extra = ["--max-batch", str(args.max_batch), "--max-queue-delay-ms", str(args.max_queue_delay_ms)]
        server = LocalServer(python, folder, Path(tempfile.gettempdir()) / f"serve_load_{target}.log", *extra)
        rows = []
        try:
            for n, clients in enumerate(int(c) for c in args.clients.split(",")):
                row = level(server, clients, args.requests, args.max_seconds, first_seed=1000 * (n + 1))
                log(f"  {clients} clients: {json.dumps(row)}")
                rows.append(row)
                if server.proc.poll() is not None:
                    log(f"  the server stopped ({server.proc.returncode}) during the level; log: {server.log}")
                    break
        finally:
            code = server.stop()
        results["engines"][target] = {"folder": str(folder), "levels": rows, "exit_code": code}
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))  # after each engine
        render(results, args.out)
    errors = sum(r["errors"] for e in results["engines"].values() for r in e["levels"])
    exits = [e["exit_code"] for e in results["engines"].values()]
    log(f"wrote {args.out.with_suffix('.md')}; errors {errors}; server exits {exits}")
    return 0 if errors == 0 and not any(exits) else 1


if __name__ == "__main__":
    sys.exit(main())
