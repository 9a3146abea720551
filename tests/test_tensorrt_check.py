"""backends/tensorrt/check.py: each rule fails the graph it should, with a message naming the problem;
the registry's TensorRT facts; `check` runs with onnx alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _onnx_graphs import f32, linear_residual, model
from onnx import TensorProto, helper, numpy_helper

from pixart_export.backends.tensorrt import check as trt_check
from pixart_export.manifest import GraphRecord, Precision, TensorRecord
from pixart_export.targets import TARGETS

T4, V100 = TARGETS["trt-t4"], TARGETS["trt-v100"]


def _check(m, target=T4, record=None, tmp_path=None):
    path = tmp_path / "g.onnx"
    onnx.save(m, str(path))
    return trt_check.check_file(path, target, record)


def _qdq(zero=0, scale=0.1, zp_type=TensorProto.INT8, per_channel_activation=False):
    s = np.full((4,) if per_channel_activation else (), scale, np.float32)
    inits = [numpy_helper.from_array(s, "s"), helper.make_tensor("z", zp_type, list(s.shape), [zero] * max(s.size, 1))]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q", axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq", axis=1),
    ]
    return model(nodes, [f32("x", "B", 4)], [f32("y", "B", 4)], inits)


def test_clean_graph_passes(tmp_path):
    assert _check(linear_residual(), tmp_path=tmp_path).ok


@pytest.mark.parametrize(
    "build,needle",
    [
        (
            lambda: model(
                [helper.make_node("Hardmax", ["x"], ["y"], name="h")], [f32("x", "B", 4)], [f32("y", "B", 4)]
            ),
            "not supported by the TensorRT ONNX parser",
        ),
        (
            lambda: model(
                [helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="f", domain="com.microsoft")],
                [f32("x", "B", 4)],
                [f32("y", "B", 4)],
            ),
            "com.microsoft",
        ),
        (
            lambda: model(
                [helper.make_node("Cast", ["x"], ["y"], name="c", to=TensorProto.DOUBLE)],
                [f32("x", "B", 4)],
                [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["B", 4])],
            ),
            "double",
        ),
        (lambda: _qdq(zero=3), "zero-point must be a constant 0"),
        (lambda: _qdq(zp_type=TensorProto.UINT8), "not uint8"),
        (lambda: _qdq(scale=-0.1), "positive"),
        (lambda: _qdq(per_channel_activation=True), "per-channel scales on an activation"),
        (
            lambda: model(
                [helper.make_node("Relu", ["x"], ["y"], name="r")], [f32("x", "B", "L")], [f32("y", "B", "L")]
            ),
            "only the batch axis",
        ),
        (
            lambda: model(
                [helper.make_node("Einsum", ["x"], ["y"], name="e", equation="...i->...i")],
                [f32("x", "B", 4)],
                [f32("y", "B", 4)],
            ),
            "ellipsis",
        ),
    ],
)
def test_rule_catches(tmp_path, build, needle):
    report = _check(build(), tmp_path=tmp_path)
    assert not report.ok and any(needle in p for p in report.problems), report.problems


def test_per_channel_axis_must_be_output_channels(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w")
    s = numpy_helper.from_array(np.full((4,), 0.1, np.float32), "s")
    z = numpy_helper.from_array(np.zeros((4,), np.int8), "z")
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], name="dq", axis=0),
        helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm"),
    ]
    report = _check(model(nodes, [f32("x", "B", 4)], [f32("y", "B", 3)], [w, s, z]), tmp_path=tmp_path)
    assert any("output-channel axis 1" in p for p in report.problems), report.problems


def test_qdq_only_on_layers_with_a_constant_weight(tmp_path):
    """A Q/DQ pair into an activation x activation MatMul (attention) is refused; into a weight MatMul it is not."""
    s = numpy_helper.from_array(np.float32(0.1), "s")
    z = numpy_helper.from_array(np.int8(0), "z")
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")

    def qdq(src, name):
        return [
            helper.make_node("QuantizeLinear", [src, "s", "z"], [f"{name}_q"], name=f"{name}/q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"], name=f"{name}/dq"),
        ]

    weight = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], name="w/dq")]
    nodes = qdq("x", "a") + weight + [helper.make_node("MatMul", ["a_dq", "wf"], ["h"], name="/proj/MatMul")]
    nodes += qdq("h", "b") + [helper.make_node("MatMul", ["a_dq", "b_dq"], ["y"], name="/attn1/MatMul")]
    report = _check(model(nodes, [f32("x", "B", 4, 4)], [f32("y", "B", 4, 4)], [s, z, w]), tmp_path=tmp_path)
    assert [p for p in report.problems if "constant weight" in p] == [
        "/attn1/MatMul: Q/DQ on a MatMul without a constant weight (activation x activation, e.g. attention): "
        "int8 is for weight layers only; keep it float"
    ], report.problems


def test_int8_graph_refused_for_v100_and_profile_limits(tmp_path):
    report = _check(_qdq(), V100, tmp_path=tmp_path)
    assert any("has no int8" in p for p in report.problems)
    rec = GraphRecord(
        graph="transformer",
        file="g.onnx",
        files=("g.onnx",),
        precision=Precision.INT8,
        height=2048,
        width=512,
        inputs=(TensorRecord("x", "float32", ("B", 4)),),
        outputs=(),
    )
    report = _check(_qdq(), T4, rec, tmp_path=tmp_path)
    assert any("outside trt-t4's profile" in p for p in report.problems)
    assert not any("input x" in p for p in report.problems)  # declared shape matches the record
    wrong = GraphRecord(
        graph="transformer",
        file="g.onnx",
        files=("g.onnx",),
        precision=Precision.INT8,
        height=128,
        width=128,
        inputs=(TensorRecord("x", "float32", ("B", 8)),),
        outputs=(),
    )
    report = _check(_qdq(), T4, wrong, tmp_path=tmp_path)
    assert report.problems == ["input x: graph shape ['B', 4] != manifest ['B', 8]"]


def test_op_versions():
    assert trt_check.TRT_OPS["LayerNormalization"] == "8.6"
    assert "LayerNormalization" in trt_check.TRT_OPS and "Hardmax" not in trt_check.TRT_OPS


def test_registry_facts():
    trt = {n: t for n, t in TARGETS.items() if t.backend.name == "tensorrt"}
    assert set(trt) == {"trt-t4", "trt-v100", "trt-a100", "trt-h100"}
    assert {n: t.trt.arch for n, t in trt.items()} == {
        "trt-t4": "sm_75",
        "trt-v100": "sm_70",
        "trt-a100": "sm_80",
        "trt-h100": "sm_90",
    }
    assert TARGETS["trt-v100"].trt.tensorrt == ("10.0", "10.4")  # Volta dropped in 10.5
    for t in trt.values():
        assert "fp16" in t.precisions and Precision.FP16 in t.trt.prepared
        assert ("fp8" in t.precisions) == (t.trt.sm >= trt_check.FP8_MIN_SM)
        assert ("int8" in t.precisions) == (t.name != "trt-v100")
        assert set(t.trt.prepared) <= set(t.precisions)
        lo, opt, hi = t.trt.profile.batch
        assert 1 <= lo <= opt <= hi


def test_check_cli_runs_without_torch_or_backends(tmp_path):
    """`check` needs only onnx: run it where torch, onnxruntime, openvino and tensorrt cannot import."""
    import subprocess
    import sys
    import textwrap

    onnx.save(linear_residual(), str(tmp_path / "g.onnx"))
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'torch', 'onnxruntime', 'openvino', 'tensorrt', 'diffusers'}:
                    raise ImportError('blocked for this test: ' + name)
        sys.meta_path.insert(0, Block())
        from pixart_export.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code, "check", "--target", "trt-h100", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "check: PASS" in proc.stdout
    onnx.save(
        model([helper.make_node("Hardmax", ["x"], ["y"], name="h")], [f32("x", "B", 4)], [f32("y", "B", 4)]),
        str(tmp_path / "h.onnx"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "check", "--json", "--target", "trt-t4", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # a graph fails a rule: exit 1, the report says which
    import json

    report = json.loads(proc.stdout)
    assert not report["ok"] and [f["ok"] for f in report["files"]] == [True, False]  # g.onnx, h.onnx
    assert "Hardmax" in report["files"][1]["problems"][0]


def test_check_cli_bad_input(tmp_path, capsys):
    from pixart_export.cli import main

    assert main(["check", "--target", "trt-t4", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["check", "--target", "trt-t4", str(tmp_path)]) == 2  # empty folder: nothing to check
    assert "no graphs found" in capsys.readouterr().err
