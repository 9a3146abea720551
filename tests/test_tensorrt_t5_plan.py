"""The text encoder's precision plan per TensorRT target (t5_plan.py, bf16.py): parameter counts of the
real T5-XXL, XL DiT and SD VAE decoder (counted on the meta device, nothing allocated), the memory
estimate against each card, and the bf16 graph measured by its cast simulation in onnxruntime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pixart_export.backends.tensorrt import bf16, t5_plan
from pixart_export.manifest import Precision
from pixart_export.targets import TARGETS
from tests._exports import fp32_export

ROOT = Path(__file__).resolve().parent.parent


def test_parameter_counts_are_the_real_models():
    from diffusers import AutoencoderKL
    from transformers import T5Config, T5EncoderModel

    from reference.config import DiTConfig
    from reference.dit import PixArtDiT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from xl_model import SD_VAE

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**t5_plan.T5_XXL, feed_forward_proj="gated-gelu"))
        dit = PixArtDiT(DiTConfig(), text_len=120)
        vae = AutoencoderKL(**SD_VAE)
    assert sum(p.numel() for p in t5.parameters()) == sum(t5_plan.t5_encoder_parameters().values())
    wo = sum(p.numel() for n, p in t5.named_parameters() if n.endswith("DenseReluDense.wo.weight"))
    assert wo == t5_plan.t5_encoder_parameters()["ff_out"]
    assert sum(p.numel() for p in dit.parameters()) == t5_plan.DIT_XL_PARAMS
    decoder = sum(p.numel() for p in vae.decoder.parameters()) + sum(
        p.numel() for p in vae.post_quant_conv.parameters()
    )
    assert decoder == t5_plan.VAE_DECODER_PARAMS


def test_every_target_has_a_plan_that_fits_its_card():
    for t in TARGETS.values():
        if t.trt is None:
            continue
        est = t5_plan.memory_estimate(t.trt.text_encoder, t.trt.memory_gib)
        assert est["fits_text_encoder_released_first"], (t.name, est)
        if t.trt.text_encoder == Precision.BF16:
            assert "bf16" in t.precisions and t.trt.sm >= 80
        else:  # 16 GB cards: T5-XXL in fp32 alone does not fit, so fp16 with fp32 islands is the plan
            assert not est["fp32_fallback_fits"] and est["gib"]["t5_if_fp32"] > t.trt.memory_gib
            assert "ff_out" in est["fp32_groups"]
    t4 = t5_plan.memory_estimate(Precision.FP16, TARGETS["trt-t4"].trt.memory_gib)
    assert round(t4["gib"]["t5"], 1) == 10.8 and round(t4["gib"]["t5_if_fp32"], 1) == 17.7  # GiB
    assert not t4["fits_all_loaded"]  # 15.0 GiB estimated on a 15 GiB card: only with T5 released first


def test_the_estimate_says_which_cards_need_low_memory():
    """Finding 6: the T4's plan fits only with `--low-memory` (the text encoder released before the DiT
    loads: TrtRunner.release, tested on the fake GPU in test_tensorrt_loop.py); an A100 runs by default."""
    t4 = t5_plan.memory_estimate(Precision.FP16, TARGETS["trt-t4"].trt.memory_gib)
    assert t4["run_with"] == "--low-memory"
    a100 = t5_plan.memory_estimate(Precision.BF16, TARGETS["trt-a100"].trt.memory_gib)
    assert a100["fits_all_loaded"] and a100["run_with"] == "default"
    assert t5_plan.run_with(20.0, 20.0, 16.0) is None


def test_bf16_graph_and_its_simulation(tmp_path):
    """A small linear + norm graph: the bf16 graph holds bf16 weights rounded from fp32 (not from fp16),
    keeps the norm fp32 and has fp32 I/O; its simulation equals a numpy bf16-storage computation."""
    import ml_dtypes
    from _onnx_graphs import f32, model
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 8)) * 0.3).astype(np.float32)
    m = model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="/block.0/ff/MatMul"),
            helper.make_node("LayerNormalization", ["h", "g"], ["y"], axis=-1, name="/block.0/norm/LayerNormalization"),
        ],
        [f32("x", 2, 8)],
        [f32("y", 2, 8)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ones(8, np.float32), "g")],
    )
    src, dst = tmp_path / "g.onnx", tmp_path / "g.bf16.onnx"
    onnx.save(m, str(src))
    conv = bf16.convert(src, dst, "text_encoder")
    assert "/block.0/norm/LayerNormalization" in conv["kept_fp32"]
    half = onnx.load(str(dst))
    wq = next(t for t in half.graph.initializer if t.name == "W")
    assert wq.data_type == onnx.TensorProto.BFLOAT16
    assert np.array_equal(numpy_helper.to_array(wq).astype(np.float32), w.astype(ml_dtypes.bfloat16).astype(np.float32))
    sim = bf16.simulation(dst)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    got = ort.InferenceSession(sim.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    r = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
    h = r(r(x) @ r(w))  # input cast to bf16, bf16 weights, the MatMul's output stored bf16
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    want = r((h - mu) / np.sqrt(var + 1e-5))  # the norm in fp32, its output stored bf16 as the graph does
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a100_bundle_records_the_t5_plan(tmp_path):
    """trt-a100 on tiny (fp16 only, to keep it short): the text encoder is prepared in bf16 and measured by
    its cast simulation; the trained tiny T5 fails the gate in bf16 as in fp16 (4.7e-2,
    benchmarks/results/fp16_casts.md) and ships fp32, which fits an A100; the plan, its T5-XXL estimate
    and the K-step plan are in the build section."""
    from pixart_export.build import build_target
    from pixart_export.targets import TENSORRT

    options = {**TENSORRT.options(TARGETS["trt-a100"], None), "int8": False}
    _out, manifest, _ = build_target(
        "trt-a100", "tiny", out=tmp_path / "b", options=options, onnx_from=fp32_export(), log=lambda m: None
    )
    te = next(r for r in manifest.graphs if r.graph == "text_encoder")
    rows = [r for r in manifest.parity.graphs if r.get("file", "").startswith("text_encoder.bf16")]
    assert rows and all("cast simulation" in r["simulated"] for r in rows)
    plan = manifest.build["text_encoder_plan"]
    assert plan["precision"] == "bf16" and plan["fits_all_loaded"]
    if te.precision == Precision.FP32:
        assert "bf16 measured rel L2" in te.details["fp32_fallback"]
        assert plan["this_build"]["shipped"] == "fp32"
    else:
        assert te.precision == Precision.BF16
    assert manifest.build["k_step_plan"]["default"].startswith("one-step engine")
