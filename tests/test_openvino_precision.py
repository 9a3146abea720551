"""`backends/openvino/precision.py`: op groups of an int8 graph, the marks that keep groups f32 under a bf16
inference precision, and the measured choice. On small hand-made OpenVINO models (seconds, no build)."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")


def small_int8_model(clamp: float = 4.0):
    """x -> FakeQuantize -> MatMul(int8 weights) -> + bias -> MVN -> MatMul(float weights) -> Softmax: one op
    of each group, named by it."""
    import openvino.opset13 as op

    rng = np.random.default_rng(0)
    x = op.parameter([8, 256], np.float32, name="x")
    fq = op.fake_quantize(x, -clamp, clamp, -clamp, clamp, 256)
    w8 = op.constant(rng.integers(-127, 128, (256, 256)).astype(np.int8))
    w = op.multiply(op.convert(w8, "f32"), op.constant(np.full((1, 256), 0.004, np.float32)))
    mm_int8 = op.matmul(fq, w, False, False)
    mm_int8.set_friendly_name("int8_matmul")
    add = op.add(mm_int8, op.constant(rng.normal(size=(1, 256)).astype(np.float32)))
    add.set_friendly_name("bias")
    norm = op.mvn(add, op.constant(np.array([1], np.int64)), True, 1e-6, "inside_sqrt")
    norm.set_friendly_name("norm")
    mm_float = op.matmul(norm, op.constant((rng.normal(size=(256, 256)) * 0.1).astype(np.float32)), False, False)
    mm_float.set_friendly_name("float_matmul")
    soft = op.softmax(mm_float, -1)
    soft.set_friendly_name("softmax")
    return ov.Model([soft], [x], "small_int8")


def test_groups_of_each_op():
    from pixart_export.backends.openvino.precision import groups_of, op_group

    model = small_int8_model()
    named = {o.get_friendly_name(): op_group(o) for o in model.get_ordered_ops()}
    assert named["int8_matmul"] == "int8_matmul_outputs"
    assert named["float_matmul"] == "float_matmuls"
    assert named["norm"] == "normalisation" and named["softmax"] == "attention" and named["bias"] == "elementwise"
    # the weights' decompression (Convert, Multiply on constants), the FakeQuantize, the graph ends: no group
    assert sum(groups_of(model).values()) == 5


def test_marks_are_written_and_cleared(tmp_path):
    from pixart_export.backends.openvino.precision import GROUPS, is_marked, mark, write_marked

    model = small_int8_model()
    assert mark(model, ["elementwise", "normalisation"]) == 3  # the two MatMuls and the softmax stay f32
    with pytest.raises(ValueError, match="unknown op groups"):
        mark(model, ["norms"])
    ov.save_model(model, str(tmp_path / "marked.xml"), compress_to_fp16=False)
    # the marks survive the IR (the runtime reads them from the shipped file) ...
    read = ov.Core().read_model(str(tmp_path / "marked.xml"))
    assert sorted(o.get_friendly_name() for o in read.get_ordered_ops() if is_marked(o)) == [
        "float_matmul",
        "int8_matmul",
        "softmax",
    ]
    # ... and a new mark of the IR as read clears them
    assert write_marked(tmp_path / "marked.xml", tmp_path / "all.xml", GROUPS) == 0
    assert not [o for o in ov.Core().read_model(str(tmp_path / "all.xml")).get_ordered_ops() if is_marked(o)]


def _run(xml, precision: str, x: np.ndarray) -> np.ndarray:
    from pixart_export.backends.openvino.runner import compile_config, compile_graph, run_compiled

    return run_compiled(compile_graph(xml, compile_config(precision)), {"x": x})[0]


def test_forced_f32_hint_ignores_the_marks(tmp_path):
    """On a CPU without bf16 (or the hint forced off) a marked graph computes exactly what the unmarked one
    does: the marks only ever keep ops at the precision they would have anyway."""
    from pixart_export.backends.openvino.precision import write_marked
    from pixart_export.backends.openvino.runner import runnable_precision

    ov.save_model(small_int8_model(), str(tmp_path / "plain.xml"), compress_to_fp16=False)
    write_marked(tmp_path / "plain.xml", tmp_path / "marked.xml", ["elementwise"])
    x = np.random.default_rng(1).normal(size=(8, 256)).astype(np.float32)
    assert np.array_equal(_run(tmp_path / "marked.xml", "f32", x), _run(tmp_path / "plain.xml", "f32", x))
    # and a recorded bf16 becomes f32 on a CPU without native bf16
    assert runnable_precision("bf16", {"isa": ["avx2", "avx512f", "avx512_vnni"]}) == "f32"


def test_marked_ops_run_f32_under_bf16(tmp_path):
    """With the bf16 hint on a bf16 CPU, what the plugin runs bf16 follows the marks (read back from the
    compiled model), and the all-marked graph equals the f32 graph."""
    from pixart_export.backends.openvino.precision import GROUPS, runtime_precisions, write_marked
    from pixart_export.backends.openvino.runner import compile_config, compile_graph, has_bf16

    if not has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    ov.save_model(small_int8_model(), str(tmp_path / "plain.xml"), compress_to_fp16=False)
    x = np.random.default_rng(2).normal(size=(8, 256)).astype(np.float32)
    write_marked(tmp_path / "plain.xml", tmp_path / "none.xml", [])
    write_marked(tmp_path / "plain.xml", tmp_path / "all.xml", GROUPS)
    f32 = _run(tmp_path / "plain.xml", "f32", x)
    assert np.array_equal(_run(tmp_path / "none.xml", "bf16", x), f32)
    assert not np.array_equal(_run(tmp_path / "all.xml", "bf16", x), f32)
    ran = runtime_precisions(compile_graph(tmp_path / "none.xml", compile_config("bf16")))
    assert "bf16" not in ran
    write_marked(tmp_path / "plain.xml", tmp_path / "fc.xml", ["float_matmuls"])
    ran = runtime_precisions(compile_graph(tmp_path / "fc.xml", compile_config("bf16")))
    assert ran["bf16"] == {"FullyConnected": 1}


def test_choose_falls_back_to_f32_when_the_gate_fails(tmp_path):
    """A graph whose bf16 form misses the fixed-input gate ships unmarked at f32, with every group's
    figure and the reason recorded; the IR is left as quantised."""
    from pixart_export.backends.openvino.precision import choose

    ov.save_model(small_int8_model(3.0), str(tmp_path / "int8.xml"), compress_to_fp16=False)
    # the "fp32 reference": a wider input range (the "int8" graph clamps inputs at +-3: its own error)
    ov.save_model(small_int8_model(8.0), str(tmp_path / "ref.xml"), compress_to_fp16=False)
    before = (tmp_path / "int8.xml").read_bytes()
    rng = np.random.default_rng(3)
    samples = [{"x": rng.normal(size=(8, 256)).astype(np.float32) * 2} for _ in range(2)]
    record = choose(tmp_path / "int8.xml", tmp_path / "ref.xml", samples, lambda xml: (0.5, 0.1), lambda m: None, 1)
    assert record["inference_precision"] == "f32" and record["chosen"] == []
    assert set(record["groups"]) == {
        "attention",
        "normalisation",
        "float_matmuls",
        "int8_matmul_outputs",
        "elementwise",
    }
    # every group fitted the error budget alone, and the first one tried missed the gate
    assert record["f32_rel_l2"] > 0.01 and all(
        r["rel_l2"] <= record["budget_rel_l2"] for r in record["groups"].values()
    )
    assert [t["accepted"] for t in record["trials"]] == [False] * 5 and record["trials"][0][
        "fixed_inputs_rel_l2"
    ] == 0.5
    assert "within the int8 gate on the parity's fixed inputs" in record["why"]
    assert (tmp_path / "int8.xml").read_bytes() == before
    assert not list(tmp_path.glob(".bf16-variant-*"))


@pytest.mark.slow
def test_build_records_the_bf16_groups(tmp_path):
    """An int8 build with the per-group choice on a bf16 CPU (minutes): the unrolled denoiser's figures for
    every group in the manifest, its compile precision as chosen, marks in the shipped IR exactly when it
    runs bf16."""
    from pixart_export.backends.openvino.precision import GROUPS, is_marked
    from pixart_export.backends.openvino.runner import has_bf16
    from tests._openvino_engine import build_from_onnx, small_int8_options

    if not has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX): the build does not measure bf16")
    options = {**small_int8_options(), "bf16_groups": True}
    folder, manifest, _ = build_from_onnx("ov-cpu-int8", tmp_path / "ov-cpu-int8-tiny", options=options)
    rec = next(r for r in manifest.graphs if r.graph == "denoiser_lcm4")
    entry = manifest.quantisation["graphs"][rec.file]
    record = entry["bf16_ops"]
    assert set(record["groups"]) <= set(GROUPS) and record["f32_rel_l2"] > 0
    assert all(row["rel_l2"] > 0 and row["ops"] > 0 for row in record["groups"].values())
    assert rec.runtime["config"]["INFERENCE_PRECISION_HINT"] == record["inference_precision"]
    assert entry["why"] == record["why"]
    marked = [o for o in ov.Core().read_model(str(folder / rec.file)).get_ordered_ops() if is_marked(o)]
    assert bool(marked) == (record["inference_precision"] == "bf16")
