"""backends/tensorrt/fp16.py: which nodes stay fp32 and why, the converted graph runs and keeps fp32 I/O."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _onnx_graphs import f32, feeds, linear_residual, model
from onnx import helper

from pixart_export.backends.tensorrt import fp16


def test_plan_rules_by_structure_and_name():
    m = linear_residual()
    plan = fp16.plan_fp32_nodes(m, "transformer")
    assert plan["/time_proj/Sin"].startswith("sensitive op")
    assert plan["/time_proj/Mul"].startswith("phase")  # t * 500 feeds a Sin: fp16 would scramble it
    assert "/block.0/ff/proj/MatMul" not in plan  # the compute goes fp16
    norm = model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], name="/enc/layer_norm/ReduceMean"),
            helper.make_node("MatMul", ["x", "x"], ["y"], name="/enc/block.0/layer.1/DenseReluDense/wo/MatMul"),
            helper.make_node("Add", ["y", "m"], ["z"], name="/text_encoder/encoder/block.0/layer.1/Add"),
        ],
        [f32("x", 4, 4)],
        [f32("z", 4, 4)],
    )
    plan = fp16.plan_fp32_nodes(norm, "text_encoder")
    assert plan["/enc/layer_norm/ReduceMean"] == "normalisation"
    assert plan["/enc/block.0/layer.1/DenseReluDense/wo/MatMul"].startswith("known fp16 overflow")
    assert plan["/text_encoder/encoder/block.0/layer.1/Add"].startswith("known fp16 overflow")
    assert fp16.plan_fp32_nodes(norm, "transformer").get("/enc/block.0/layer.1/DenseReluDense/wo/MatMul") is None


def test_measured_ranges_keep_overflowing_nodes_fp32(tmp_path):
    m = linear_residual(scale=1.0)
    path = tmp_path / "g.onnx"
    onnx.save(m, str(path))
    big = feeds()
    big["x"] = big["x"] * 1e4  # residual stream at 4e4: fp16-safe bound is 4094
    ranges = fp16.activation_ranges(path, [big])
    assert ranges["x"] > fp16.FP16_SAFE_MAX
    plan = fp16.plan_fp32_nodes(m, "transformer", ranges)
    assert plan["/block.0/Add"].startswith("measured")
    small = fp16.plan_fp32_nodes(m, "transformer", fp16.activation_ranges(path, [feeds()]))
    assert "/block.0/Add" not in small


def test_convert_runs_in_onnxruntime_with_fp32_io(tmp_path):
    src, dst = tmp_path / "g.onnx", tmp_path / "g.fp16.onnx"
    onnx.save(linear_residual(), str(src))
    rec = fp16.convert(src, dst, "transformer", fp16.activation_ranges(src, [feeds()]))
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"] * 2
    assert sess.get_outputs()[0].type == "tensor(float)"
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds(seed=5))[0]
    got = sess.run(None, feeds(seed=5))[0]
    # fp16 storage of O(1) values: unit roundoff 4.9e-4 per rounding, a handful of roundings -> < 5e-3
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-3
    assert fp16.fp16_share(dst) == 1.0  # the MatMul runs in fp16
    assert "/time_proj/Sin" in rec["kept_fp32"]


def test_restore_fp32_outputs():
    m = model(
        [helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT16, name="c")],
        [f32("x", 2)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [2])],
    )
    assert fp16.restore_fp32_outputs(m) == 1
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.array([1.0, 2.0], np.float32)})[0].dtype == np.float32


@pytest.mark.parametrize(
    "reason,kind",
    [
        ("measured max |activation| 5e+04 > fp16-safe bound 4094", "measured"),
        ("sensitive op Softmax", "sensitive op"),
        ("normalisation", "normalisation"),
    ],
)
def test_reason_kind(reason, kind):
    assert fp16.reason_kind(reason) == kind


def test_convert_graph_with_external_data(tmp_path):
    """The > 2 GB path (shape inference path to path, weights beside the graph), on a small graph saved
    with external data so it runs in milliseconds."""
    src, dst = tmp_path / "g.onnx", tmp_path / "g.fp16.onnx"
    onnx.save_model(
        linear_residual(),
        str(src),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="g.onnx.data",
        size_threshold=0,
    )
    ranges = fp16.activation_ranges(src, [feeds()])
    fp16.convert(src, dst, "transformer", ranges)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds(seed=5))[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds(seed=5))[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-3  # as above
    assert not list(tmp_path.glob(".*"))  # no probe or inferred files left behind


def test_drop_noop_casts():
    """A float-to-float Cast (the exporter's `.to(dtype)`) goes; a Cast from an integer stays."""
    m = model(
        [
            helper.make_node("Cast", ["x"], ["x2"], to=onnx.TensorProto.FLOAT, name="/attn1/Cast_4"),
            helper.make_node("Cast", ["m"], ["mf"], to=onnx.TensorProto.FLOAT, name="/mask/Cast"),
            helper.make_node("Add", ["x2", "mf"], ["y"], name="/Add"),
        ],
        [f32("x", 2, 3), helper.make_tensor_value_info("m", onnx.TensorProto.INT64, [2, 3])],
        [f32("y", 2, 3)],
    )
    inferred = onnx.shape_inference.infer_shapes(m)
    assert fp16.drop_noop_casts(inferred) == 1
    assert [n.name for n in inferred.graph.node] == ["/mask/Cast", "/Add"]
    assert list(inferred.graph.node[1].input) == ["x", "mf"]
    sess = ort.InferenceSession(inferred.SerializeToString(), providers=["CPUExecutionProvider"])
    x, mask = np.ones((2, 3), np.float32), np.ones((2, 3), np.int64)
    assert np.array_equal(sess.run(None, {"x": x, "m": mask})[0], x + 1)


def test_mask_bias_does_not_keep_softmax_fp32(tmp_path):
    """A -1e4 mask bias added to the logits is far above the fp16-safe bound in |value| but cannot overflow
    a Softmax; a large positive logit can, and keeps it fp32."""
    bias = onnx.numpy_helper.from_array(np.array([0.0, -1e4], np.float32), "bias")
    m = model(
        [
            helper.make_node("Add", ["x", "bias"], ["logits"], name="/attn2/Add"),
            helper.make_node("Softmax", ["logits"], ["p"], axis=-1, name="/attn2/Softmax"),
        ],
        [f32("x", 2, 2)],
        [f32("p", 2, 2)],
        [bias],
    )
    path = tmp_path / "a.onnx"
    onnx.save(m, str(path))
    small = fp16.activation_ranges(path, [{"x": np.ones((2, 2), np.float32)}])
    assert small["logits"] >= 9999 and small["logits" + fp16.POSITIVE] == 1.0
    assert not fp16.plan_fp32_nodes(m, "transformer", small)
    large = fp16.activation_ranges(path, [{"x": np.full((2, 2), 5e4, np.float32)}])
    plan = fp16.plan_fp32_nodes(m, "transformer", large)
    assert plan["/attn2/Softmax"].startswith("measured largest logit")


def test_keep_choices_are_nested():
    """Each choice keeps a subset of the one before it (benchmarks/fp16_casts.py measures them in order);
    normalisations stay fp32 in the shipped choice."""
    choices = list(fp16.KEEP_CHOICES.values())
    for bigger, smaller in zip(choices, choices[1:]):
        assert smaller[0] <= bigger[0]
    ops, norm_scope = fp16.KEEP_CHOICES[fp16.DEFAULT_KEEP]
    assert fp16.NORM_OPS <= ops and norm_scope
    assert "Softmax" not in ops  # measured: no error cost, and it keeps TensorRT's attention fusable


def test_default_choice_at_4096_tokens(tmp_path):
    """The shipped choice on two narrow DiT blocks at XL's 1024 px attention length (128x128 latent = 4096
    tokens, heads of 72 as XL, q/k scaled so attention is peaked as trained): as accurate as keeping
    every sensitive op fp32, with fewer Casts on tensors. `tiny` (64 tokens) would hide an attention
    precision error: a softmax probability of 1/4096 is where fp16 storage starts to matter."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from fp16_casts import export_transformer, narrow_dit

    from pixart_export.graphs import TRANSFORMER, fixed_inputs
    from pixart_export.metrics import rel_l2

    src = tmp_path / "t.onnx"
    dims = export_transformer(narrow_dit(128, sharpen=3.0), 128, src)
    feeds_ = fixed_inputs(TRANSFORMER, dims, batch=1, seed=7)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds_)[0]
    ranges = fp16.activation_ranges(src, [fixed_inputs(TRANSFORMER, dims, batch=1, seed=11)])
    errors, casts = {}, {}
    for choice in (fp16.DEFAULT_KEEP, "all_sensitive"):
        dst = tmp_path / f"t.{choice}.onnx"
        conv = fp16.convert(src, dst, "transformer", ranges, keep_choice=choice)
        got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds_)[0]
        assert np.all(np.isfinite(got))
        errors[choice], casts[choice] = rel_l2(got, want), fp16.count_casts(dst)["tensor_casts"]
        if choice == fp16.DEFAULT_KEEP:
            kept = [n for n in onnx.load(str(src)).graph.node if n.name in conv["kept_fp32"]]
            assert "LayerNormalization" in {n.op_type for n in kept}
            # every Softmax goes fp16, cross-attention's too: its caption-mask bias (-1e4) is measured by
            # the largest logit, not by max |value| (a large negative logit underflows exp() to 0 either way)
            assert not [n.name for n in kept if n.op_type == "Softmax"]
    # measured 8.4e-3 (2 blocks, benchmarks/results/fp16_casts.md); the fp16 tolerance is 3e-2
    assert errors[fp16.DEFAULT_KEEP] < 1.5e-2
    assert errors[fp16.DEFAULT_KEEP] <= 1.05 * errors["all_sensitive"] + 1e-4
    assert casts[fp16.DEFAULT_KEEP] < casts["all_sensitive"]
