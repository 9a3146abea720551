"""compile_ov: ONNX -> OpenVINO IR keeps fp32 weights, and the precision is always explicit."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

from pixart_export import compile_ov  # noqa: E402
from pixart_export.graphs import FP32_REL_L2, TRANSFORMER, fixed_inputs  # noqa: E402
from pixart_export.parity import rel_l2  # noqa: E402


def test_convert_keeps_fp32_and_matches_reference(tmp_path):
    """One graph: export, convert, run with f32 precision; parity tolerance as ort-cpu (1e-4 rel L2:
    both sides are fp32, only kernel choice and summation order differ; measured ~3e-7)."""
    import torch

    from pixart_export.export_onnx import export_graph, model_dims, wrapper_for
    from reference.loading import load_model

    model = load_model("tiny")
    dims = model_dims(model, 128, 128)
    onnx_path = tmp_path / "transformer.onnx"
    export_graph(wrapper_for(TRANSFORMER, model, 4), TRANSFORMER, dims, onnx_path)
    files = compile_ov.convert_graph(onnx_path, tmp_path / "transformer.xml")
    assert files == ["transformer.xml", "transformer.bin"]
    params = sum(p.numel() for p in model.dit.parameters())
    # fp32 weights: 4 bytes per parameter (fp16 compression, OpenVINO's default, would halve it)
    assert (tmp_path / "transformer.bin").stat().st_size >= 0.95 * 4 * params
    compiled = compile_ov.compile_graph(tmp_path / "transformer.xml", compile_ov.compile_config("f32", threads=1))
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    feeds = fixed_inputs(TRANSFORMER, dims, batch=3, seed=7)  # batch 3: the batch axis stays dynamic
    got = compile_ov.run_compiled(compiled, feeds)[0]
    with torch.no_grad():
        want = model.dit.predict_noise(*(torch.from_numpy(feeds[n]) for n in TRANSFORMER.input_names)).numpy()
    assert got.shape == want.shape
    assert rel_l2(got, want) < FP32_REL_L2


def test_compile_config_is_explicit():
    assert compile_ov.compile_config("f32") == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert compile_ov.compile_config("bf16", threads=2)["INFERENCE_NUM_THREADS"] == 2
    no_bf16 = {"model": "x", "isa": ["avx2"]}
    assert compile_ov.runnable_precision("bf16", no_bf16) == "f32"
    assert compile_ov.runnable_precision("bf16", {"model": "x", "isa": ["avx512_bf16"]}) == "bf16"
    assert compile_ov.runnable_precision("f32", no_bf16) == "f32"


def test_cpu_info():
    info = compile_ov.cpu_info()
    assert info["model"] and info["logical_cores"] >= 1
    assert set(info["isa"]) <= set(compile_ov.ISA_FLAGS)
    assert compile_ov.openvino_version()[0].isdigit()
