"""backends/tensorrt/quantize_fp8.py: E4M3 Q/DQ graphs for trt-h100, run in onnxruntime on the CPU.

onnxruntime executes QuantizeLinear/DequantizeLinear-19 with FLOAT8E4M3FN on the CPU; the first test
holds it bit-equal to a numpy simulation of E4M3 rounding (ml_dtypes), so the measured errors are the
fp8 rounding the engine's Q/DQ layers define."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _onnx_graphs import feeds, linear_residual

from pixart_export.backends.tensorrt import check, fp16, quantize_fp8
from pixart_export.manifest import Precision
from pixart_export.metrics import rel_l2
from pixart_export.targets import TARGETS
from tests._exports import fp32_export

ROOT = Path(__file__).resolve().parent.parent


def _session(path_or_model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no Q/DQ folding
    source = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def test_scales_are_fp16_exact_and_normal():
    for amax in (1e-9, 3e-3, 0.7, 5.0, 1e4):
        s = quantize_fp8.fp16_exact_scale(amax)
        assert s == float(np.float16(s)) and s >= quantize_fp8.MIN_SCALE
    assert quantize_fp8.fp16_exact_scale(0.0) == 1.0 and quantize_fp8.fp16_exact_scale(float("inf")) == 1.0
    assert quantize_fp8.fp16_exact_scale(448.0) == 1.0


def test_onnxruntime_matches_the_e4m3_simulation():
    """One linear layer quantized: onnxruntime's output equals the numpy E4M3 simulation of the same
    Q/DQ (activation at its calibrated scale, weight stored fp8), to fp32 matmul rounding."""
    from onnx import numpy_helper
    from onnx.version_converter import convert_version

    m = convert_version(linear_residual(), quantize_fp8.OPSET)
    inputs = feeds(seed=3)
    inputs["x"] *= 40  # a range that uses the E4M3 exponents (and saturates nothing: scale from the max)
    ranges = {"x": float(np.abs(inputs["x"]).max())}
    w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W"))
    counts = quantize_fp8.insert_fp8_qdq(m, ["/block.0/ff/proj/MatMul"], ranges)
    assert counts["fp8_layers"] == 1 and counts["weights_fp8"] == 1
    assert "W" not in {t.name for t in m.graph.initializer}  # the fp32 weight is gone: stored fp8 only
    onnx.checker.check_model(m)
    sess = _session(m)
    probe = onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None)
    m.graph.output.append(probe)
    got = _session(m).run(["h"], inputs)[0]
    sx = quantize_fp8.fp16_exact_scale(ranges["x"])
    sw = quantize_fp8.fp16_exact_scale(float(np.abs(w).max()))
    want = quantize_fp8.simulate_e4m3(inputs["x"], sx) @ quantize_fp8.simulate_e4m3(w, sw)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert sess.run(None, inputs)[0].shape == (2, 8, 16)
    # the rounding is E4M3's: relative error of one value up to 2^-4, far above fp16's
    assert 1e-3 < rel_l2(got, inputs["x"] @ w) < 0.1


def test_per_channel_weight_scales_match_the_simulation():
    """Per-output-channel weight scales (axis 1 of a MatMul's [K, N] weight): onnxruntime equals the E4M3
    simulation with one scale per column, and `check` accepts the axis for trt-h100."""
    from onnx import numpy_helper
    from onnx.version_converter import convert_version

    m = convert_version(linear_residual(), quantize_fp8.OPSET)
    inputs = feeds(seed=4)
    ranges = {"x": float(np.abs(inputs["x"]).max())}
    w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W"))
    w = w * np.linspace(0.01, 1.0, w.shape[1], dtype=np.float32)  # columns of very different ranges
    next(t for t in m.graph.initializer if t.name == "W").CopyFrom(numpy_helper.from_array(w, "W"))
    quantize_fp8.insert_fp8_qdq(m, ["/block.0/ff/proj/MatMul"], ranges, per_channel=True)
    dq = next(n for n in m.graph.node if n.name.endswith("weight_DequantizeLinear"))
    assert next(a.i for a in dq.attribute if a.name == "axis") == 1
    onnx.checker.check_model(m)
    m.graph.output.append(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None))
    got = _session(m).run(["h"], inputs)[0]
    sw = quantize_fp8.weight_scales(w, 1)
    assert sw.shape == (w.shape[1],) and all(s == float(np.float16(s)) for s in sw)
    wq = np.stack([quantize_fp8.simulate_e4m3(w[:, j], sw[j]) for j in range(w.shape[1])], 1)
    sx = quantize_fp8.fp16_exact_scale(ranges["x"])
    np.testing.assert_allclose(got, quantize_fp8.simulate_e4m3(inputs["x"], sx) @ wq, rtol=1e-6, atol=1e-6)
    report = check.CheckReport("m")
    check.check_qdq(m, report)
    assert not report.problems, report.problems


def test_candidates_keep_fp16_outside_their_kinds():
    """Each candidate's float patterns, on the exporter's scoped names: the kinds it names run fp8 (unless
    `quantize_qdq.EXCLUDE` keeps them float), everything else stays fp16; most fp8 weights first."""
    import re

    from pixart_export.backends.tensorrt import quantize_qdq

    names = [
        "/step.0/transformer/caption_projection/linear_1/MatMul",
        "/step.1/transformer/transformer_blocks.3/attn1/to_q/MatMul",
        "/step.1/transformer/transformer_blocks.3/attn1/to_out.0/MatMul",
        "/step.1/transformer/transformer_blocks.3/attn2/to_out.0/MatMul",
        "/step.1/transformer/transformer_blocks.3/ff/net.0/proj/MatMul",
        "/step.1/transformer/transformer_blocks.3/ff/net.2/MatMul",
        "/step.1/transformer/proj_out/MatMul",
    ]

    def fp8(c):
        rx = [re.compile(p) for p in quantize_qdq.EXCLUDE + c.float_patterns]
        return [n.split("/")[-2] for n in names if not any(r.search(n) for r in rx)]

    got = {c.name: fp8(c) for c in quantize_fp8.CANDIDATES}
    assert got["int8 layers"] == ["linear_1", "to_q", "to_out.0", "to_out.0", "proj", "net.2"]
    assert got["feed-forward"] == ["proj", "net.2"]
    assert got["feed-forward down"] == ["net.2"]
    assert got["attention out"] == ["to_out.0", "to_out.0"]
    counts = [len(v) for v in got.values()]
    assert counts[0] == max(counts) and all(c.per_channel for c in quantize_fp8.CANDIDATES)


def test_fp8_graph_at_4096_tokens(tmp_path):
    """A narrow DiT at 4096 tokens (XL's 1024 px attention length): fp8 on the weight layers only
    (attention's matmuls stay fp16), within the int8 gate against fp32, accepted by `check` for
    trt-h100 and refused for trt-a100 (sm_80 has no fp8)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fp16_casts import export_transformer, narrow_dit

    from pixart_export.graphs import TRANSFORMER, fixed_inputs
    from pixart_export.verify import tolerance

    src, dst = tmp_path / "t.onnx", tmp_path / "t.fp8.onnx"
    dims = export_transformer(narrow_dit(128, sharpen=3.0), 128, src)
    calib = [fixed_inputs(TRANSFORMER, dims, batch=1, seed=s) for s in (11, 12)]
    weights_only = next(c for c in quantize_fp8.CANDIDATES if c.name == "int8 layers")
    rec = quantize_fp8.quantize(src, dst, "transformer", calib, settings=weights_only)
    assert rec["fp8"]["fp8_layers"] > 0 and rec["fp8"]["activation_matmuls_float"] == 8  # 2 blocks x 2 attn x 2
    held = fixed_inputs(TRANSFORMER, dims, batch=1, seed=7)
    want = _session(src).run(None, held)[0]
    got = _session(dst).run(None, held)[0]
    err = rel_l2(got, want)
    assert np.all(np.isfinite(got)) and err < tolerance("transformer", Precision.FP8).rel_l2
    report = check.check_file(dst, TARGETS["trt-h100"])
    assert report.ok, report.problems
    assert report.qdq_pairs > 0
    assert not check.check_file(dst, TARGETS["trt-a100"]).ok
    assert dst.stat().st_size < 0.5 * src.stat().st_size  # weights stored as one byte
    assert fp16.count_casts(dst)["casts"] > 0  # fp16 outside the fp8 layers, by the fp16 graphs' rules


def test_registry_prepares_fp8_on_h100_only():
    for t in TARGETS.values():
        if t.trt is not None:
            assert (Precision.FP8 in t.trt.prepared) == (t.trt.sm >= check.FP8_MIN_SM)


@pytest.mark.slow
def test_h100_bundle_ships_verified_fp8_graphs(tmp_path):
    """trt-h100 on tiny with fp8 (int8 off to keep it short): fp8 graphs of the transformer and the
    unrolled denoiser, measured against fp32 per graph and end to end, and checked for the target."""
    from pixart_export.build import build_target
    from pixart_export.targets import TENSORRT

    options = {**TENSORRT.options(TARGETS["trt-h100"], None), "int8": False}
    out, manifest, _ = build_target(
        "trt-h100", "tiny", out=tmp_path / "b", options=options, onnx_from=fp32_export(), log=lambda m: None
    )
    fp8 = [r for r in manifest.graphs if r.precision == Precision.FP8]
    assert sorted(r.graph for r in fp8) == ["denoiser_lcm4", "transformer"]
    rows = [r for r in manifest.parity.graphs if r.get("precision") == "fp8"]
    assert rows and all(r["ok"] for r in rows)
    assert any(r["precision"] == "fp8" and r["ok"] for r in manifest.parity.end_to_end)
    assert Precision.FP8 in manifest.precisions
    # the layers were chosen by measurement on the unrolled denoiser, every candidate tried is recorded
    choice = manifest.build["fp8_choice"]
    tried = [c["settings"]["name"] for c in choice["candidates"]]
    assert tried == [c.name for c in quantize_fp8.CANDIDATES]  # every candidate measured and recorded
    limit = quantize_fp8.SELECT_FRACTION * 0.1
    errors = [c["rel_l2"] for c in choice["candidates"]]
    assert choice["chosen"] == tried[quantize_fp8.choose(errors, limit)]
    assert any(c["attention_matmuls_fp8"] > 0 for c in choice["candidates"])
    details = {r.graph: r.details["fp8"]["settings"]["name"] for r in fp8}
    assert details == {"denoiser_lcm4": choice["chosen"], "transformer": choice["chosen"]}


# -- issue #23: fp8 attention as a measured candidate ------------------------------------------------------
def test_choose_takes_the_first_within_the_limit_else_the_lowest():
    assert quantize_fp8.choose([0.2, 0.05, 0.01], 0.08) == 1
    assert quantize_fp8.choose([0.2, 0.15, 0.3], 0.08) == 1
    first = quantize_fp8.CANDIDATES[0]
    assert first.attention and first.name == "int8 layers + attention"
    assert {c.name for c in quantize_fp8.CANDIDATES if c.attention} >= {"feed-forward + attention"}
    assert any(c.name == "feed-forward" and not c.attention for c in quantize_fp8.CANDIDATES)
    # a manifest written before attention candidates reads back as attention off
    old = {"name": "feed-forward", "per_channel": True, "float_patterns": ["x"]}
    assert quantize_fp8.Fp8Settings.from_dict(old) == quantize_fp8.Fp8Settings("feed-forward", True, ("x",), False)


def test_fp8_attention_at_4096_tokens(tmp_path):
    """fp8 on attention's two batched matmuls (both inputs, per tensor) at XL's 4096 tokens on the narrow DiT
    with sharp heads: every attention matmul gets fp8 on both inputs, `check` accepts it for trt-h100 (and
    refuses one-sided or int8 attention Q/DQ), and the attention outputs and `noise_pred` stay within the
    fp8 gate against fp32 (the int8 softmax output measured 0.67 there: test_tensorrt_precision_4096.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fp16_casts import export_transformer, narrow_dit

    from pixart_export.graphs import TRANSFORMER, fixed_inputs
    from pixart_export.verify import tolerance

    src = tmp_path / "t.onnx"
    dims = export_transformer(narrow_dit(128, sharpen=3.0), 128, src)
    calib = [fixed_inputs(TRANSFORMER, dims, batch=1, seed=s) for s in (11, 12)]
    ranges = fp16.activation_ranges(src, calib)
    held = fixed_inputs(TRANSFORMER, dims, batch=1, seed=7)
    probes = [f"/transformer/transformer_blocks.{i}/attn1/MatMul_1" for i in range(2)]

    def run(path):
        model = onnx.load(str(path))
        types = {
            v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info
        }
        out = {n.name: n.output[0] for n in model.graph.node}
        for p in probes:
            model.graph.output.append(onnx.helper.make_tensor_value_info(out[p], types.get(out[p], 1), None))
        got = _session(model).run(None, held)
        return {"noise_pred": got[0], **{p: g.astype(np.float32) for p, g in zip(probes, got[1:])}}

    want = run(src)
    errors = {}
    for cand in quantize_fp8.CANDIDATES:
        if cand.name not in ("feed-forward + attention", "feed-forward"):
            continue
        dst = tmp_path / f"t.{cand.attention}.fp8.onnx"
        rec = quantize_fp8.quantize(src, dst, "transformer", calib, ranges, cand)
        got = run(dst)
        errors[cand.name] = {k: rel_l2(got[k], w) for k, w in want.items()}
        report = check.check_file(dst, TARGETS["trt-h100"])
        assert report.ok, report.problems
        if cand.attention:
            assert rec["fp8"]["attention_matmuls_fp8"] == 8 and rec["fp8"]["activation_matmuls_float"] == 0
            model = onnx.load(str(dst))
            producers = {o: n for n in model.graph.node for o in n.output}
            for node in model.graph.node:
                if node.op_type == "MatMul" and "/attn" in node.name and "to_" not in node.name:
                    assert all(producers[i].op_type == "DequantizeLinear" for i in node.input[:2]), node.name
            # one input fp8 only: refused (TensorRT fuses fp8 attention only with both)
            bad = onnx.load(str(dst))
            victim = next(n for n in bad.graph.node if n.name == probes[0])
            victim.input[1] = producers[victim.input[1]].input[0].replace("/fp8_attention_q", "")
            assert not check.check_file(_save(bad, tmp_path / "one_sided.onnx"), TARGETS["trt-h100"]).ok
    print(f"fp8 at 4096 tokens (narrow DiT, sharp heads), rel L2 vs fp32: {errors}")
    gate = tolerance("transformer", Precision.FP8).rel_l2
    assert all(e < gate for e in errors["feed-forward + attention"].values()), errors


def _save(model, path):
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_fp8_attention_chosen_on_the_unrolled_denoiser_at_4096_tokens(tmp_path):
    """The choice as the build makes it (`quantize_fp8.choose` at 0.8 x the fp8 gate), on the unrolled
    4-step denoiser of the narrow DiT at 4096 tokens (sharp heads): the candidates with and without fp8
    attention measured on held-out inputs; prints every figure."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fp16_casts import narrow_dit

    from pixart_export.export.exporter import default_num_copies, export_graph
    from pixart_export.export.wrappers import DenoiserGraph
    from pixart_export.graphs import Dims, denoiser_spec, fixed_inputs
    from pixart_export.verify import tolerance
    from reference.schedules import lcm_timesteps

    dit = narrow_dit(128, sharpen=3.0)
    c = dit.config
    dims = Dims(L=120, C=c.caption_channels, D=c.inner_dim, N=default_num_copies(c.num_layers), h=128, w=128)
    spec = denoiser_spec(4, False)
    src = tmp_path / "denoiser_lcm4.onnx"
    export_graph(DenoiserGraph(dit, None, lcm_timesteps(4)), spec, dims, src, batch=1)
    calib = [fixed_inputs(spec, dims, batch=1, seed=s) for s in (11, 12)]
    held = fixed_inputs(spec, dims, batch=1, seed=7)
    ranges = fp16.activation_ranges(src, calib, chunk=48)  # few [1, 2, 4096, 4096] maps at a time
    want = _session(src).run(None, held)[0]
    names = ("feed-forward + attention", "feed-forward")
    errors = {}
    for cand in (c for c in quantize_fp8.CANDIDATES if c.name in names):
        dst = tmp_path / f"d.{cand.attention}.fp8.onnx"
        quantize_fp8.quantize(src, dst, spec.name, calib, ranges, cand)
        errors[cand.name] = rel_l2(_session(dst).run(None, held)[0], want)
    limit = quantize_fp8.SELECT_FRACTION * tolerance(spec.name, Precision.FP8).rel_l2
    chosen = names[quantize_fp8.choose([errors[n] for n in names], limit)]
    print(f"unrolled denoiser at 4096 tokens, fp8 rel L2 vs fp32: {errors}; limit {limit:.2g}; chosen: {chosen}")
    assert all(np.isfinite(e) for e in errors.values())
    assert errors["feed-forward + attention"] < tolerance(spec.name, Precision.FP8).rel_l2, errors
