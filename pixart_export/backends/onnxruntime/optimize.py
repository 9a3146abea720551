"""Prepare stage of the ort-cpu target (optional graph optimisation): ONNX Runtime's offline optimisation, kept only
where it measurably helps.

onnxruntime optimises every graph again when a session is created (all levels by default), so an
offline-optimised file cannot run faster once loaded; what it can save is session-creation time
(constant folding, redundant-node elimination done once at build time). Only the *basic* level is
applied offline: its output is portable across CPUs, while the extended/layout levels bake in
hardware-specific fused kernels that the ORT docs advise against saving. For each graph we time
"create session + first run" a few times for the exported file and for the optimised one, and keep
the optimised file only if it is at least `MIN_GAIN` faster; the decision and the timings go into
the manifest. Graphs with external data are left as they are (the optimiser would rewrite the data
layout; not worth it for a load-time gain).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

MIN_GAIN = 0.10
REPEATS = 3


def _feeds(record: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for t in record["inputs"]:
        shape = [1 if d == "B" else int(d) for d in t["shape"]]
        if t["dtype"] == "int64":
            feeds[t["name"]] = np.ones(shape, np.int64) * (5 if t["name"] == "input_ids" else 1)
        else:
            feeds[t["name"]] = rng.random(shape, dtype=np.float32)
    return feeds


def _load_and_run(path: Path, feeds: dict) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    return time.perf_counter() - started


def optimise_graphs(folder: Path, records: list[dict], on_graph=None) -> list[dict]:
    """Apply basic offline optimisation where it pays; updates `records` (bytes) in place."""
    import onnxruntime as ort

    folder = Path(folder)
    decisions = []
    for rec in records:
        if on_graph:
            on_graph(rec["file"])
        if len(rec["files"]) > 1:
            decisions.append({"file": rec["file"], "kept": False, "reason": "external data: not attempted"})
            continue
        src = folder / rec["file"]
        candidate = folder / f".opt-{rec['file']}"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(candidate)
        options.log_severity_level = 3
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        feeds = _feeds(rec)
        base = min(_load_and_run(src, feeds) for _ in range(REPEATS))
        opt = min(_load_and_run(candidate, feeds) for _ in range(REPEATS))
        kept = opt < (1 - MIN_GAIN) * base
        if kept:
            os.replace(candidate, src)
            rec["bytes"] = src.stat().st_size
            rec["optimisation"] = "ort-basic-offline"
        else:
            candidate.unlink(missing_ok=True)
        decisions.append(
            {
                "file": rec["file"],
                "kept": kept,
                "load_and_first_run_s": round(base, 4),
                "optimised_load_and_first_run_s": round(opt, 4),
                "reason": f"kept: >= {MIN_GAIN:.0%} faster" if kept else f"not kept: < {MIN_GAIN:.0%} gain",
            }
        )
    return decisions
