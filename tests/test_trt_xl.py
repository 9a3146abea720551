"""XL-size TensorRT preparation (28 blocks, width 1152, 4096-wide captions, 512 px): slow, opt-in (-m slow).

A random-weight XL transformer (one step; no real weights ship with the repo) is exported fp32, made
fp16 (ranges measured on fixed inputs) and int8 Q/DQ (calibrated on fixed inputs of other seeds),
both verified in onnxruntime against fp32 with the gates of `verify_precision`, and checked for all
four TensorRT targets (int8 expected to be refused for trt-v100). fp32 XL is ~2.3 GiB, so this
exercises external data through every stage. Needs ~12 GiB and tens of minutes on 2 cores: run it
under the shared lock, e.g. `flock /tmp/pixart-heavy.lock nice -n 5 .venv/bin/pytest -m slow
tests/test_trt_xl.py`.
"""
from __future__ import annotations

import pytest


@pytest.mark.slow
def test_xl_transformer_fp16_int8_check(tmp_path):
    import torch

    from pixart_export import fp16, quantize_qdq, trt_check
    from pixart_export import verify_precision as vp
    from pixart_export.export_onnx import export_graph
    from pixart_export.graphs import TRANSFORMER, Dims, fixed_inputs
    from pixart_export.targets import TARGETS
    from pixart_export.wrappers import TransformerGraph
    from reference.config import DiTConfig
    from reference.dit import PixArtDiT

    torch.manual_seed(0)
    config = DiTConfig()  # PixArt-XL-2 at 512 px
    dit = PixArtDiT(config, text_len=120).eval()
    dims = Dims(L=120, C=config.caption_channels, D=config.inner_dim, N=13, h=64, w=64)
    src = tmp_path / "transformer_512x512.onnx"
    export_graph(TransformerGraph(dit), TRANSFORMER, dims, src, batch=1)
    del dit
    calib = [fixed_inputs(TRANSFORMER, dims, 1, seed=s) for s in (1, 2, 3, 4)]
    half = tmp_path / "transformer_512x512.fp16.onnx"
    fp16.convert(src, half, "transformer", fp16.activation_ranges(src, calib[:2]))
    q = tmp_path / "transformer_512x512.int8.onnx"
    quantize_qdq.quantize(src, q, calib)
    rows = vp.graph_errors(src, half, TRANSFORMER, dims, "fp16", [fixed_inputs(TRANSFORMER, dims, 1, seed=9)])
    rows += vp.graph_errors(src, q, TRANSFORMER, dims, "int8", [fixed_inputs(TRANSFORMER, dims, 1, seed=9)])
    for r in rows:
        print(f"XL transformer {r['precision']}: rel L2 {r['rel_l2']:.2e}, max abs {r['max_abs']:.2e}")
    assert all(r["ok"] for r in rows), rows
    rec = {"height": 512, "width": 512, "inputs": [{"name": t.name, "shape": dims.shape(t)} for t in TRANSFORMER.inputs]}
    for name in ("trt-t4", "trt-v100", "trt-a100", "trt-h100"):
        target = TARGETS[name]
        assert trt_check.check_file(half, target, rec).ok
        assert trt_check.check_file(q, target, rec).ok == (name != "trt-v100")
