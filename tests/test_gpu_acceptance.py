"""benchmarks/gpu_acceptance.py end to end on the CPU (`--toy`): the report is written with every row
measured or skipped with its reason, so the script runs unchanged on a GPU host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_toy_run_writes_the_report(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--toy", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    measured = [r for r in result["rows"] if "median_ms" in r]
    assert {r["what"].split(",")[0] for r in measured} == {"diffusers PixArt transformer step", "diffusers VAE decode"}
    assert all(0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in measured)
    assert any("TensorRT" in s for s in result["skipped_stages"])  # never claimed when it did not run
    assert "| diffusers PixArt transformer step, fp32, eager | 64 |" in (tmp_path / "gpu_acceptance.md").read_text()


def test_budget_skips_instead_of_overrunning(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_acceptance.py"),
            "--toy",
            "--budget",
            "0",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_acceptance.json").read_text())["rows"]
    assert rows and all(r.get("skipped") == "past the time budget" for r in rows)
