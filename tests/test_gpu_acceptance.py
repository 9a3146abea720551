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
    # no GPU here: every GPU stage is listed as skipped with its reason, never claimed
    for name in ("tiny build", "tiny compile", "tiny runtime path", "tiny parity", "ort-cuda xl", "ort-cuda tiny"):
        assert stages[name]["status"] == "skipped" and stages[name]["reason"] == "no CUDA GPU on this host"
    # the XL export's CPU half ran on the toy graph: export, fp16 by the bundle's rules, check for trt-h100
    xl = stages["xl export"]
    assert xl["status"] == "ok", xl
    steps = xl["result"]["steps"]
    assert steps["check"]["ok"] and steps["fp16 graph"]["keep"] == "norms"
    assert stages["baseline transformer"]["status"] == stages["baseline vae"]["status"] == "ok"
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "| diffusers PixArt transformer step, fp32, eager | 64 |" in md
    assert "| tiny build | skipped | 0.0 | no CUDA GPU on this host |" in md
    assert "## Plan (priority order, estimates against the budget)" in md
    assert (tmp_path / "gpu_acceptance.png").exists()


def test_budget_skips_instead_of_overrunning(tmp_path):
    proc = _run(tmp_path, "--toy", "--budget", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert result["rows"] == []
    for name in ("baseline transformer", "xl export", "baseline vae"):
        stage = next(s for s in result["stages"] if s["name"] == name)
        assert stage["status"] == "skipped" and stage["reason"] == "past the time budget"


H100_FULL = {**H100, "ort_cuda": True, "trtexec": "/usr/bin/trtexec"}
PRIORITY = [
    "baseline transformer",
    "xl export",
    "xl fp16 engine",
    "xl int8 engine",
    "xl fp8 engine",
    "tiny build",
    "tiny compile",
    "tiny runtime path",
    "tiny parity",
    "ort-cuda xl",
    "ort-cuda tiny",
    "trtexec cross-check",
    "baseline vae",
]


def test_dry_run_plans_within_the_budget_by_priority_on_an_h100_with_tensorrt(tmp_path, capsys):
    """Finding 8: the stages' estimates add to more than 570 s on an H100 with everything; the plan keeps
    them in priority order while they fit (XL engines of every precision vs diffusers first, then the
    shipped runtime path), marks the rest "beyond the budget", and the dry run prints the plan."""
    ga = _module()
    assert ga.main(["--out", str(tmp_path), "--dry-run", "--assume-host", json.dumps(H100_FULL)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert result["environment"]["trt_target"] == "trt-h100"
    assert [s["name"] for s in result["stages"]] == PRIORITY
    schedule = {p["stage"]: p for p in result["schedule"]}
    assert sum(ga.ESTIMATES.values()) > 570  # everything would not fit: the priorities decide
    assert result["planned_s"] <= 570 - ga.RESERVE_S
    assert sum(p["estimate_s"] for p in schedule.values() if p["planned"]) == result["planned_s"]
    for name in PRIORITY[: PRIORITY.index("tiny runtime path") + 1]:
        assert schedule[name]["planned"], schedule[name]
    dropped = [n for n in PRIORITY if not schedule[n]["planned"]]
    assert dropped and all(schedule[n]["why"].startswith("beyond the budget") for n in dropped)
    assert "plan: xl fp8 engine" in printed and "not planned: beyond the budget" in printed
    stages = {s["name"]: s for s in result["stages"]}
    assert "build --target trt-h100 --model tiny" in stages["tiny build"]["command"]
    assert "compile --both-plans" in stages["tiny compile"]["command"]
    assert stages["tiny parity"]["command"].endswith(f"parity {tmp_path}/engines/trt-h100-tiny --json")
    assert f"--runtime-stage {tmp_path}/engines/trt-h100-tiny" in stages["tiny runtime path"]["command"]
    assert (
        "--xl-engine" in stages["xl int8 engine"]["command"]
        and "--precision int8" in stages["xl int8 engine"]["command"]
    )
    ort = next(s for s in ga.plan(result["environment"], tmp_path, {"ort"}, False) if s.name == "ort-cuda tiny")
    quoted = "'import sys; from pixart_export.cli import main; sys.exit(main())'"  # the shell sees one argument
    assert ort.argv[:2] == ["sh", "-c"] and quoted in ort.argv[2]
    assert result["rows"] == []  # nothing measured in a dry run
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "dry run: nothing was measured" in md and "| xl fp8 engine | 90 | yes |" in md


def test_dry_run_on_the_lent_gpu_hosts_plans_ort_cuda(tmp_path):
    """No TensorRT (the lent machines) but onnxruntime's CUDA provider: the baselines, the XL export and the
    ort-cuda rows are planned; every TensorRT stage is skipped with the reason and costs no budget."""
    ga = _module()
    host = {**H100, "tensorrt": None, "ort_cuda": True}
    assert ga.main(["--out", str(tmp_path), "--dry-run", "--assume-host", json.dumps(host)]) == 0
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    schedule = {p["stage"]: p for p in result["schedule"]}
    planned = [n for n in PRIORITY if schedule[n]["planned"]]
    assert planned == ["baseline transformer", "xl export", "ort-cuda xl", "ort-cuda tiny", "baseline vae"]
    for name in ("xl fp16 engine", "tiny build", "tiny runtime path"):
        assert schedule[name]["why"].startswith("tensorrt is not installed")
    assert schedule["trtexec cross-check"]["why"] == "trtexec is not on PATH"


@pytest.mark.parametrize(
    "host,reason",
    [
        ({**H100, "tensorrt": None}, "tensorrt is not installed on this host"),
        ({**H100, "sm": 89, "gpu": "NVIDIA L4"}, "no TensorRT target for this GPU (sm 89)"),
    ],
)
def test_dry_run_skips_cleanly_without_tensorrt_or_target(tmp_path, host, reason):
    ga = _module()
    assert ga.main(["--out", str(tmp_path), "--dry-run", "--assume-host", json.dumps(host)]) == 0
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    trt = [s for s in result["stages"] if s["name"].startswith(("tiny", "xl ")) and s["name"] != "xl export"]
    assert trt and all(s["status"] == "skipped" and s["reason"].startswith(reason) for s in trt), trt


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
    assert ga.target_precisions("trt-h100") == ["fp16", "int8", "fp8"]
    assert ga.target_precisions("trt-v100") == ["fp16"]


def test_comparison_table_from_the_engine_stages():
    ga = _module()
    rows = [
        {"what": "diffusers PixArt transformer step, fp16, eager", "px": 512, "median_ms": 24.0},
        {"what": "diffusers PixArt transformer step, fp16, torch.compile", "px": 512, "median_ms": 16.0},
        {"what": "diffusers PixArt transformer step, fp16, eager", "px": 1024, "median_ms": 35.0},
    ]
    fp16 = {"engine step": {"median_ms": 8.0, "min_ms": 7.9, "max_ms": 8.2, "rel_l2_vs_fp32_reference": 3e-3}}
    int8 = {"engine step": {"median_ms": 6.0, "min_ms": 5.9, "max_ms": 6.2, "rel_l2_vs_fp32_reference": 2e-2}}
    stages = [
        ga.Stage("xl fp16 engine", "xl", (), status="ok", result={"steps": fp16, "layers": {"int8_layers": 0}}),
        ga.Stage("xl int8 engine", "xl", (), status="ok", result={"steps": int8}),
    ]
    text = "\n".join(ga.comparison(rows, [s.to_json() for s in stages]))
    assert "| TensorRT fp16 engine (this toolchain's graph) | 8.0 | 3.00e-03 | 3.00x | 2.00x |" in text
    assert "| TensorRT int8 engine (this toolchain's graph) | 6.0 | 2.00e-02 | 4.00x | 2.67x |" in text
    assert "1024" not in text
    assert [r["what"] for r in ga.engine_rows(stages)] == [
        "TensorRT fp16 XL transformer: engine step",
        "TensorRT int8 XL transformer: engine step",
    ]


def test_layer_summary_reads_the_engine_inspector():
    """What the engine's layer information says: int8/fp8 GEMMs by input format, fused attention by name
    or tactic, and standalone Q/DQ layers (which must be none)."""
    ga = _module()
    info = {
        "Layers": [
            {"Name": "/blocks.0/ff/MatMul", "LayerType": "CaskGemm", "Inputs": [{"Format/Datatype": "Row major Int8"}]},
            {"Name": "/blocks.0/attn1/MatMul", "LayerType": "CaskGemm", "Inputs": [{"Format/Datatype": "FP8"}]},
            {"Name": "_gemm_mha_v2_myl0", "LayerType": "kgen", "TacticName": "fmha_v2_flash_attention"},
            {"Name": "/blocks.0/ff/input_QuantizeLinear", "LayerType": "Quantize"},
            {"Name": "{ForeignNode[/blocks.1/...]}", "LayerType": "Myelin"},
        ]
    }
    got = ga.layer_summary(info)
    assert got["layers"] == 5 and got["int8_layers"] == 1 and got["fp8_layers"] == 1
    assert got["fused_attention_layers"] == 1 and got["standalone_qdq_layers"] == 1 and got["myelin_regions"] == 1
    assert got["detailed"] and got["by_type"]["CaskGemm"] == 2
    names_only = ga.layer_summary({"Layers": ["a", "b"]})
    assert names_only["layers"] == 2 and not names_only["detailed"]


def test_trtexec_output_and_enqueue_check():
    ga = _module()
    out = "[I] GPU Compute Time: min = 7.1 ms, max = 9.3 ms, mean = 7.6 ms, median = 7.52 ms, percentile(90%) = 8 ms"
    assert ga.trtexec_median_ms(out) == 7.52 and ga.trtexec_median_ms("nothing") is None

    class Refuses:
        def execute_async_v3(self, stream):
            return False

    with pytest.raises(RuntimeError, match="refused the enqueue"):
        ga.enqueue(Refuses(), 0)
