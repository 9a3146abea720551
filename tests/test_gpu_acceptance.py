"""benchmarks/gpu_acceptance.py on the CPU: the toy run end to end (the report is written with every row
measured or skipped with its reason), the budget, and the plan for GPU hosts with and without TensorRT
(dry runs with assumed host facts), so the script runs unchanged on a GPU host."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"
H100 = {"cuda": True, "sm": 90, "gpu": "NVIDIA H100 80GB HBM3", "tensorrt": "10.8.0.43"}


@functools.lru_cache(maxsize=None)
def _module():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), *args], capture_output=True, text=True, timeout=300
    )


def test_toy_run_writes_the_report(tmp_path):
    proc = _run(tmp_path, "--toy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    measured = [r for r in result["rows"] if "median_ms" in r]
    assert {r["what"].split(",")[0] for r in measured} == {"diffusers PixArt transformer step", "diffusers VAE decode"}
    assert all(0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in measured)
    stages = {s["name"]: s for s in result["stages"]}
    # no GPU here: every TensorRT stage is listed as skipped with its reason, never claimed
    for name in ("tiny build", "tiny compile", "tiny parity", "tiny run", "tiny k-step plan"):
        assert stages[name]["status"] == "skipped" and stages[name]["reason"] == "no CUDA GPU on this host"
    # the XL stage's CPU half ran on the toy graph: export, fp16 by the bundle's rules, check for trt-h100
    xl = stages["xl transformer"]
    assert xl["status"] == "ok", xl
    steps = xl["result"]["steps"]
    assert steps["check"]["ok"] and steps["fp16 graph"]["keep"] == "norms"
    assert "TensorRT engine" not in steps  # no TensorRT here
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "| diffusers PixArt transformer step, fp32, eager | 64 |" in md
    assert "| tiny build | skipped | 0.0 | no CUDA GPU on this host |" in md
    assert (tmp_path / "gpu_acceptance.png").exists()


def test_budget_skips_instead_of_overrunning(tmp_path):
    proc = _run(tmp_path, "--toy", "--budget", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert result["rows"] and all(r.get("skipped") == "past the time budget" for r in result["rows"])
    xl = next(s for s in result["stages"] if s["name"] == "xl transformer")
    assert xl["status"] == "skipped" and xl["reason"] == "past the time budget"


def test_dry_run_plans_every_stage_on_an_h100_with_tensorrt(tmp_path):
    ga = _module()
    assert ga.main(["--out", str(tmp_path), "--dry-run", "--assume-host", json.dumps(H100)]) == 0
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert result["environment"]["trt_target"] == "trt-h100"
    stages = {s["name"]: s for s in result["stages"]}
    assert list(stages) == [
        "xl transformer",
        "tiny build",
        "tiny compile",
        "tiny parity",
        "tiny run",
        "tiny k-step plan",
    ]
    assert all(s["status"] == "planned" for s in stages.values()), stages
    assert "build --target trt-h100 --model tiny" in stages["tiny build"]["command"]
    assert stages["tiny parity"]["command"].endswith(f"parity {tmp_path}/engines/trt-h100-tiny --json")
    assert "--xl-stage" in stages["xl transformer"]["command"]
    assert f"--kstep-stage {tmp_path}/engines/trt-h100-tiny" in stages["tiny k-step plan"]["command"]
    assert result["rows"] == []  # nothing measured in a dry run
    assert "dry run: nothing was measured" in (tmp_path / "gpu_acceptance.md").read_text()


@pytest.mark.parametrize(
    "host,reason",
    [
        ({**H100, "tensorrt": None}, "tensorrt is not installed on this host"),  # the lent GPU host today
        ({**H100, "sm": 89, "gpu": "NVIDIA L4"}, "no TensorRT target for this GPU (sm 89)"),
    ],
)
def test_dry_run_skips_cleanly_without_tensorrt_or_target(tmp_path, host, reason):
    ga = _module()
    assert ga.main(["--out", str(tmp_path), "--dry-run", "--assume-host", json.dumps(host)]) == 0
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert all(s["status"] == "skipped" and s["reason"].startswith(reason) for s in result["stages"])
    assert len(result["skipped_stages"]) == 1 + len(result["stages"])  # the baselines (dry run) too


def test_targets_by_compute_capability():
    ga = _module()
    assert [ga.trt_target(sm) for sm in (75, 70, 80, 90, 89, None)] == [
        "trt-t4",
        "trt-v100",
        "trt-a100",
        "trt-h100",
        None,
        None,
    ]


def test_comparison_table_from_the_xl_stage():
    ga = _module()
    rows = [
        {"what": "diffusers PixArt transformer step, fp16, eager", "px": 512, "median_ms": 24.0},
        {"what": "diffusers PixArt transformer step, fp16, torch.compile", "px": 512, "median_ms": 16.0},
        {"what": "diffusers PixArt transformer step, fp16, eager", "px": 1024, "median_ms": 35.0},
    ]
    steps = {
        "engine step": {"median_ms": 8.0, "min_ms": 7.9, "max_ms": 8.2, "rel_l2_vs_fp32_reference": 3e-3},
        "4 steps, eager launches": {"median_ms": 34.0, "min_ms": 33.0, "max_ms": 35.0},
        "4 steps, one CUDA graph": {"median_ms": 32.5, "min_ms": 32.0, "max_ms": 33.0},
    }
    stage = ga.Stage("xl transformer", "xl", (), status="ok", result={"steps": steps})
    text = "\n".join(ga.comparison(rows, [stage.to_json()]))
    assert "| diffusers PixArt transformer step, fp16, eager | 24.0 | 3.00x |" in text
    assert "| diffusers PixArt transformer step, fp16, torch.compile | 16.0 | 2.00x |" in text
    assert "1024" not in text and "rel L2 3.00e-03" in text
    assert [r["what"] for r in ga.engine_rows([stage])] == [
        "TensorRT fp16 XL transformer: engine step",
        "TensorRT fp16 XL transformer: 4 steps, eager launches",
        "TensorRT fp16 XL transformer: 4 steps, one CUDA graph",
    ]
