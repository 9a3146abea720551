"""backends/tensorrt/quantize_qdq.py: Q/DQ where TensorRT fuses them, symmetric int8, per-channel weights,
float kept for non-quantized consumers (the residual stream), small simulated int8 error."""

from __future__ import annotations

import numpy as np
import onnx
from _onnx_graphs import feeds, linear_residual
from onnx import numpy_helper

from pixart_export.backends.tensorrt import check as trt_check
from pixart_export.backends.tensorrt import quantize_qdq as Q
from pixart_export.targets import TARGETS


def session(path, precision):
    """How the preparation runs a graph in onnxruntime (`OrtRunner`): Q/DQ graphs with optimisations off."""
    from pixart_export.backends.onnxruntime.runner import OrtRunner
    from pixart_export.manifest import GraphRecord, Precision, TensorRecord

    record = GraphRecord(
        graph="transformer",
        file=path.name,
        files=(path.name,),
        precision=Precision(precision),
        height=None,
        width=None,
        inputs=(),
        outputs=(TensorRecord("y", "float32", ("B", 8, 16)),),
    )
    return OrtRunner(path.parent).session(record)


def _quantized(tmp_path):
    src, dst = tmp_path / "g.onnx", tmp_path / "g.int8.onnx"
    onnx.save(linear_residual(), str(src))
    rec = Q.quantize(src, dst, [feeds(seed=s) for s in range(8)], exclude=())
    return src, dst, rec


def test_qdq_layout(tmp_path):
    src, dst, rec = _quantized(tmp_path)
    m = onnx.load(str(dst))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    weight_dq = [n for n in dq if n.input[0] in inits]
    assert len(weight_dq) == 1 and inits[weight_dq[0].input[0]].dtype == np.int8
    axis = next(a.i for a in weight_dq[0].attribute if a.name == "axis")
    assert axis == 1 and inits[weight_dq[0].input[1]].shape == (16,)  # per output channel of [K, N]
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any()  # symmetric
    # the residual Add reads the float x, not its int8 round trip
    add = next(n for n in m.graph.node if n.name == "/block.0/Add")
    assert "x" in add.input
    assert rec["int8_layers"] == 1 and rec["float_layers"] == 0
    report = trt_check.check_file(dst, TARGETS["trt-t4"])
    assert report.ok, report.problems


def test_simulated_int8_error_is_small(tmp_path):
    src, dst, _ = _quantized(tmp_path)
    test = feeds(seed=99)
    want = session(src, "fp32").run(None, test)[0]
    got = session(dst, "int8").run(None, test)[0]
    # int8 per-channel weights and a per-tensor activation on a 16-wide layer: ~1/127 of the range per
    # value, averaged over 16 products and added to a float residual -> well under 2e-2.
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2


def test_exclusions_and_which_graphs():
    assert Q.wants_int8("transformer") and Q.wants_int8("denoiser_lcm4")
    assert not Q.wants_int8("text_encoder") and not Q.wants_int8("vae_decoder")
    m = linear_residual()
    assert Q.excluded_nodes(m, (r"/ff/",)) == ["/block.0/ff/proj/MatMul"]


def test_int8_graph_is_fp16_outside_the_int8_layers(tmp_path):
    """Q/DQ at opset 19 with fp16 scales, fp16 compute around them, fp32 I/O, error still small."""
    from pixart_export.backends.tensorrt import fp16

    src, dst, _ = _quantized(tmp_path)
    half = tmp_path / "g.int8.fp16.onnx"
    Q.to_fp16(dst, half, "transformer", fp16.activation_ranges(src, [feeds()]))
    m = onnx.load(str(half))
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == Q.QDQ_FP16_OPSET
    inits = {t.name: t for t in m.graph.initializer}
    scales = {inits[n.input[1]].data_type for n in m.graph.node if n.op_type == "DequantizeLinear"}
    assert scales == {onnx.TensorProto.FLOAT16}
    assert fp16.fp16_share(half) == 1.0
    assert trt_check.check_file(half, TARGETS["trt-t4"]).ok
    test = feeds(seed=99)
    want = session(src, "fp32").run(None, test)[0]
    got = session(half, "int8").run(None, test)[0]
    assert got.dtype == np.float32
    # int8 error (< 2e-2, above) plus fp16 storage (~1e-3): still under 2e-2
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2


def test_quantize_graph_with_external_data(tmp_path):
    """The > 2 GB path on a small graph saved with external data: quantize, restore float consumers,
    make fp16, run."""
    src, dst, half = tmp_path / "g.onnx", tmp_path / "g.int8.onnx", tmp_path / "g.int8.fp16.onnx"
    onnx.save_model(
        linear_residual(),
        str(src),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="g.onnx.data",
        size_threshold=0,
    )
    Q.quantize(src, dst, [feeds(seed=s) for s in range(4)], exclude=())
    Q.to_fp16(dst, half, "transformer", None)
    test = feeds(seed=99)
    want = session(src, "fp32").run(None, test)[0]
    got = session(half, "int8").run(None, test)[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2  # as above


# -- issue #23: SmoothQuant as a measured int8 candidate -------------------------------------------------
def _outlier_linear(tmp_path):
    """y = x @ W over [B, 8, 16] where two input channels run 60x larger than the rest (as the caption
    projection's T5 input does), fp32 ONNX at `tmp_path/lin.onnx`."""
    from _onnx_graphs import f32, model
    from onnx import helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.2).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="/caption_projection/linear_1/MatMul")]
    src = tmp_path / "lin.onnx"
    onnx.save(model(nodes, [f32("x", "B", 8, 16)], [f32("y", "B", 8, 16)], [w]), str(src))
    return src


def _outlier_feeds(seed):
    x = np.random.default_rng(seed).standard_normal((2, 8, 16)).astype(np.float32)
    x[..., [3, 11]] *= 60.0
    return {"x": x}


def test_smoothquant_keeps_the_function_and_lowers_int8_error_on_outliers(tmp_path):
    import onnxruntime as ort

    src = _outlier_linear(tmp_path)
    calib, held = [_outlier_feeds(s) for s in range(6)], _outlier_feeds(99)

    def run(path_or_model):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        blob = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
        return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"]).run(None, held)[0]

    want = run(src)
    smoothed = onnx.load(str(src))
    counts = Q.smooth(smoothed, calib, 0.8, exclude=())
    assert counts["smoothed_layers"] == 1 and counts["max_scale_spread"] > 5
    np.testing.assert_allclose(run(smoothed), want, rtol=1e-4, atol=1e-4)  # the same fp32 function
    errors = {}
    for cand in Q.INT8_CANDIDATES:
        dst = tmp_path / f"lin.{cand.alpha}.int8.onnx"
        rec = Q.quantize(src, dst, calib, exclude=(), settings=cand)
        assert rec["settings"]["name"] == cand.name and (rec["smoothquant"] is None) == (cand.alpha is None)
        assert rec["int8_layers"] == 1 and trt_check.check_file(dst, TARGETS["trt-t4"]).ok
        got = run(dst)
        errors[cand.name] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    print(f"int8 rel L2 with two 60x outlier channels: {errors}")
    assert errors["SmoothQuant 0.8"] < 0.5 * errors["MinMax"], errors


def test_smoothquant_shares_one_scale_per_shared_weight(tmp_path):
    """The unrolled denoiser's K steps share each weight: one smoothed weight, one inverse scale, a Mul per
    consumer (so the int8 weight stays one copy)."""
    from _onnx_graphs import f32, model
    from onnx import helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="/step.0/ff/proj/MatMul"),
        helper.make_node("MatMul", ["a", "W"], ["y"], name="/step.1/ff/proj/MatMul"),
    ]
    m = model(nodes, [f32("x", "B", 8, 16)], [f32("y", "B", 8, 16)], [w])
    counts = Q.smooth(m, [_outlier_feeds(s) for s in range(2)], 0.8, exclude=())
    assert counts["weights"] == 1 and counts["smoothed_layers"] == 2
    assert sum(t.name == "W" for t in m.graph.initializer) == 1
    assert [n.op_type for n in m.graph.node] == ["Mul", "MatMul", "Mul", "MatMul"]
