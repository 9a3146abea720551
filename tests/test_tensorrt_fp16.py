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
