"""backends/openvino: ONNX -> IR keeps fp32 weights, the compile precision is always explicit, and the
runner applies each graph's recorded configuration without importing the build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pixart_export.backends.openvino import runner
from pixart_export.manifest import GraphRecord, Precision, TensorRecord

ROOT = Path(__file__).resolve().parent.parent


def _record(config: dict | None) -> GraphRecord:
    return GraphRecord(
        graph="vae_decoder",
        file="vae_decoder_128x128.xml",
        files=("vae_decoder_128x128.xml", "vae_decoder_128x128.bin"),
        precision=Precision.FP32,
        height=128,
        width=128,
        inputs=(TensorRecord("denoised", "float32", ("B", 4, 16, 16)),),
        outputs=(TensorRecord("image", "float32", ("B", 3, 128, 128)),),
        runtime={} if config is None else {"config": config},
    )


def test_convert_keeps_fp32_and_matches_reference(tmp_path):
    """One graph: export, convert, run with f32 precision; the fp32 tolerance of verify (1e-4 rel L2:
    both sides are fp32, only kernel choice and summation order differ; measured ~3e-7)."""
    pytest.importorskip("openvino")
    import torch

    from pixart_export.backends.openvino.prepare import convert_graph
    from pixart_export.export.exporter import export_graph, model_dims, wrapper_for
    from pixart_export.graphs import TRANSFORMER, fixed_inputs
    from pixart_export.metrics import rel_l2
    from pixart_export.verify import tolerance
    from reference.loading import load_model

    model = load_model("tiny")
    dims = model_dims(model, 128, 128)
    onnx_path = tmp_path / "transformer.onnx"
    export_graph(wrapper_for(TRANSFORMER, model, 4), TRANSFORMER, dims, onnx_path)
    files = convert_graph(onnx_path, tmp_path / "transformer.xml")
    assert files == ["transformer.xml", "transformer.bin"]
    params = sum(p.numel() for p in model.dit.parameters())
    # fp32 weights: 4 bytes per parameter (fp16 compression, OpenVINO's default, would halve it)
    assert (tmp_path / "transformer.bin").stat().st_size >= 0.95 * 4 * params
    compiled = runner.compile_graph(tmp_path / "transformer.xml", runner.compile_config("f32", threads=1))
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    feeds = fixed_inputs(TRANSFORMER, dims, batch=3, seed=7)  # batch 3: the batch axis stays dynamic
    got = runner.run_compiled(compiled, feeds)[0]
    with torch.no_grad():
        want = model.dit.predict_noise(*(torch.from_numpy(feeds[n]) for n in TRANSFORMER.input_names)).numpy()
    assert got.shape == want.shape
    assert rel_l2(got, want) < tolerance("transformer", Precision.FP32).rel_l2


def test_compile_config_is_explicit():
    assert runner.compile_config("f32") == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert runner.compile_config("bf16", threads=2)["INFERENCE_NUM_THREADS"] == 2
    no_bf16 = {"model": "x", "isa": ["avx2"]}
    assert runner.runnable_precision("bf16", no_bf16) == "f32"
    assert runner.runnable_precision("bf16", {"model": "x", "isa": ["avx512_bf16"]}) == "bf16"
    assert runner.runnable_precision("f32", no_bf16) == "f32"


def test_graph_config_applies_the_recorded_properties(tmp_path, monkeypatch):
    """As built (the record's runtime config), plus threads; the override wins; bf16 only where native."""
    monkeypatch.setattr(runner, "cpu_info", lambda: {"model": "x", "isa": ["avx512_bf16"], "logical_cores": 2})
    recorded = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    assert runner.OvRunner(tmp_path).graph_config(_record(recorded)) == recorded
    assert runner.OvRunner(tmp_path, threads=3).graph_config(_record(recorded))["INFERENCE_NUM_THREADS"] == 3
    forced = runner.OvRunner(tmp_path, inference_precision="f32").graph_config(_record(recorded))
    assert forced["INFERENCE_PRECISION_HINT"] == "f32"
    # a record without a config (never written by a build) still runs explicitly f32
    assert runner.OvRunner(tmp_path).graph_config(_record(None))["INFERENCE_PRECISION_HINT"] == "f32"
    monkeypatch.setattr(runner, "cpu_info", lambda: {"model": "x", "isa": ["avx2"], "logical_cores": 2})
    assert runner.OvRunner(tmp_path).graph_config(_record(recorded))["INFERENCE_PRECISION_HINT"] == "f32"
    with pytest.raises(ValueError, match="inference_precision"):
        runner.OvRunner(tmp_path, inference_precision="fp16")


def test_cpu_info():
    info = runner.cpu_info()
    assert info["model"] and info["logical_cores"] >= 1
    assert set(info["isa"]) <= set(runner.ISA_FLAGS)
    assert runner.is_x86("x86_64") and runner.is_x86("AMD64") and not runner.is_x86("aarch64")


def test_installed_version_or_a_message_naming_the_extra(monkeypatch):
    import importlib.metadata

    from pixart_export.backends.openvino import OpenVino
    from pixart_export.manifest import EngineError

    pytest.importorskip("openvino")
    assert OpenVino().installed_version()[0].isdigit()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(EngineError, match=r"pip install 'pixart-export\[openvino\]'"):
        OpenVino().installed_version()


def test_runner_imports_nothing_from_the_build():
    """The runtime half (runner.py) imports neither torch nor the prepare/quantise/export modules."""
    script = (
        "import sys\n"
        "import pixart_export.backends.openvino.runner\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'nncf', 'reference') or m.endswith("
        "('.prepare', '.quantize', '.options')) or '.export' in m]\n"
        "print('LOADED', sorted(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout, proc.stdout
