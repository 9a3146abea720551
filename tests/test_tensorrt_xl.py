"""XL-size TensorRT preparation (28 blocks, width 1152, 4096-wide captions, 512 px): slow, opt-in (-m slow).

A random-weight XL transformer (one step; no real weights ship with the repo) is exported fp32, made
fp16 (ranges measured on fixed inputs) and int8 Q/DQ (calibrated on fixed inputs of other seeds),
both verified in onnxruntime against fp32 with the tolerances of `verify.py`, and checked for all
four TensorRT targets (int8 expected to be refused for trt-v100). fp32 XL is ~2.3 GiB, so this
exercises external data through every stage. Needs ~12 GiB and tens of minutes on 2 cores: run it
under the shared lock, e.g. `flock /tmp/pixart-heavy.lock nice -n 5 .venv/bin/pytest -m slow
tests/test_tensorrt_xl.py`.
"""

from __future__ import annotations

import pytest


def _record(path, precision, dims):
    from pixart_export.graphs import TRANSFORMER
    from pixart_export.manifest import GraphRecord, Precision, TensorRecord

    return GraphRecord(
        graph="transformer",
        file=path.name,
        files=(path.name,),
        precision=Precision(precision),
        height=512,
        width=512,
        inputs=tuple(TensorRecord(t.name, t.dtype, tuple(dims.shape(t))) for t in TRANSFORMER.inputs),
        outputs=tuple(TensorRecord(t.name, t.dtype, ("B",)) for t in TRANSFORMER.outputs),
    )


@pytest.mark.slow
def test_xl_transformer_fp16_int8_check(tmp_path):
    import torch

    from pixart_export.backends.onnxruntime.runner import OrtRunner
    from pixart_export.backends.tensorrt import check, fp16, quantize_qdq
    from pixart_export.export.exporter import export_graph
    from pixart_export.export.wrappers import TransformerGraph
    from pixart_export.graphs import TRANSFORMER, Dims, fixed_inputs
    from pixart_export.targets import TARGETS
    from pixart_export.verify import prepared_errors
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
    held = [fixed_inputs(TRANSFORMER, dims, 1, seed=9)]
    rows = []
    for path, precision in ((half, "fp16"), (q, "int8")):
        rows += prepared_errors(
            OrtRunner(tmp_path),
            OrtRunner(tmp_path),
            _record(src, "fp32", dims),
            _record(path, precision, dims),
            TRANSFORMER,
            dims,
            held,
        )
    for r in rows:
        print(f"XL transformer {r['precision']}: rel L2 {r['rel_l2']:.2e}, max abs {r['max_abs']:.2e}")
    assert all(r["ok"] for r in rows), rows
    for name in ("trt-t4", "trt-v100", "trt-a100", "trt-h100"):
        target = TARGETS[name]
        assert check.check_file(half, target, _record(half, "fp16", dims)).ok
        assert check.check_file(q, target, _record(q, "int8", dims)).ok == (name != "trt-v100")
