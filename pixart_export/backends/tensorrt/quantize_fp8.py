"""fp8 (E4M3) for TensorRT on sm >= 8.9 (trt-h100): explicit Q/DQ graphs of the transformer and the
unrolled denoiser, fp16 outside the fp8 layers.

The same layers as the int8 graphs (`quantize_qdq.weight_layers` minus `quantize_qdq.EXCLUDE`: every
MatMul/Gemm/Conv with a constant weight, never attention's activation x activation matmuls) get
  activation -> QuantizeLinear -> DequantizeLinear -> layer <- DequantizeLinear <- fp8 weight
with per-tensor scales for both, zero point 0 of type FLOAT8E4M3FN, opset 19. Per-tensor because that
is the fp8 form TensorRT documents for every version this project supports (and ModelOpt's default fp8
recipe); the weights are stored already quantized (one byte each, so the file is about a quarter of the
fp32 one) with a DequantizeLinear in front of the layer, as TensorRT's explicit quantization wants.
Scales: calibrated max |value| / 448 (E4M3's largest finite value), MinMax over the calibration feeds
(activations) or the weight itself; each scale is rounded to a value fp16 holds exactly, at least fp16's
smallest normal 2^-14, so the fp16 conversion after this changes no scale and the quantized weights
dequantize to exactly what was computed here.

Written with the onnx helper rather than onnxruntime's quantiser: onnxruntime's `QFLOAT8E4M3FN` path
calibrates with its Distribution method and quantizes per its own rules for activation matmuls (which
the int8 review found wrong for attention), and the placement here must match `check.py`'s rules.

Verified on the CPU: onnxruntime 1.2x executes QuantizeLinear/DequantizeLinear-19 with FLOAT8E4M3FN
(saturating, round to nearest even), bit-equal to a numpy simulation of E4M3 rounding through
`ml_dtypes` (`simulate_e4m3`, used by the tests). It runs the fp8 graphs as fake quantization (fp8
values, fp32 arithmetic), so the measured error is the E4M3 rounding of weights and activations, not
the GPU's fp8 GEMM accumulation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Largest finite E4M3FN value.
E4M3_MAX = 448.0
#: Smallest normal fp16: no scale is set below it (a subnormal fp16 scale would lose bits).
MIN_SCALE = 2.0**-14
OPSET = 19


def fp16_exact_scale(amax: float) -> float:
    """amax / 448 rounded to the nearest fp16 value, at least `MIN_SCALE` (0 or non-finite -> 1)."""
    if not np.isfinite(amax) or amax <= 0:
        return 1.0
    return float(max(np.float16(amax / E4M3_MAX), np.float16(MIN_SCALE)))


def simulate_e4m3(x: np.ndarray, scale: float) -> np.ndarray:
    """x -> fp8 E4M3FN (saturating at +-448, round to nearest even) -> float, at `scale`: what a
    QuantizeLinear/DequantizeLinear pair computes (numpy, through ml_dtypes)."""
    import ml_dtypes

    q = np.clip(np.asarray(x, np.float32) / np.float32(scale), -E4M3_MAX, E4M3_MAX)
    return q.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * np.float32(scale)


def _fp8_tensor(name: str, values: np.ndarray):
    import ml_dtypes
    from onnx import TensorProto, helper

    raw = np.ascontiguousarray(values.astype(ml_dtypes.float8_e4m3fn)).view(np.uint8).tobytes()
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(values.shape), raw, raw=True)


def insert_fp8_qdq(model, layers: list[str], ranges: dict[str, float]) -> dict:
    """Rewrite `model` in place: fp8 Q/DQ in front of each node named in `layers` (activation: per-tensor
    scale from `ranges`; weight: quantized into an fp8 initializer). Returns counts for the manifest."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    wanted = set(layers)
    zero = "fp8_zero_point"
    graph.initializer.append(_fp8_tensor(zero, np.zeros((), np.float32)))
    new_nodes: dict[str, list] = {}  # node name -> Q/DQ nodes to put before it
    act_dq: dict[str, str] = {}  # activation -> its DequantizeLinear output
    weight_dq: dict[str, str] = {}  # weight initializer -> its DequantizeLinear output
    dropped: set[str] = set()
    done, skipped = 0, []
    for node in graph.node:
        if node.name not in wanted:
            continue
        x, w = node.input[0], node.input[1]
        if w not in inits or x not in ranges:
            skipped.append(node.name)
            continue
        added = []
        if x not in act_dq:
            s = f"{x}/fp8_scale"
            graph.initializer.append(numpy_helper.from_array(np.array(fp16_exact_scale(ranges[x]), np.float32), s))
            q, dq = f"{x}/fp8_q", f"{x}/fp8_dq"
            added += [
                helper.make_node("QuantizeLinear", [x, s, zero], [q], name=f"{node.name}/input_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [q, s, zero], [dq], name=f"{node.name}/input_DequantizeLinear"),
            ]
            act_dq[x] = dq
        if w not in weight_dq:
            values = numpy_helper.to_array(inits[w]).astype(np.float32)
            scale = fp16_exact_scale(float(np.abs(values).max()))
            qname, s = f"{w}/fp8", f"{w}/fp8_scale"
            graph.initializer.append(_fp8_tensor(qname, np.clip(values / np.float32(scale), -E4M3_MAX, E4M3_MAX)))
            graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), s))
            dq = f"{w}/fp8_dq"
            added.append(
                helper.make_node(
                    "DequantizeLinear", [qname, s, zero], [dq], name=f"{node.name}/weight_DequantizeLinear"
                )
            )
            weight_dq[w] = dq
            dropped.add(w)
        node.input[0], node.input[1] = act_dq[x], weight_dq[w]
        new_nodes[node.name] = added
        done += 1
    order = []
    for node in graph.node:
        order += new_nodes.get(node.name, [])
        order.append(node)
    del graph.node[:]
    graph.node.extend(order)
    still_used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name not in dropped or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return {"fp8_layers": done, "float_layers_skipped": skipped, "weights_fp8": len(weight_dq)}


def quantize(src: Path, dst: Path, graph_name: str, feeds_list: list[dict], ranges: dict | None = None) -> dict:
    """The fp8 graph of `src` (fp32) at `dst`: fp8 Q/DQ on the weight layers, fp16 elsewhere by the
    fp16 graphs' rules (`fp16.convert`). `ranges`: max |value| per tensor of `src` (the fp16 stage's,
    measured on the calibration feeds); measured here when not given. Returns the manifest record."""
    import onnx
    from onnx import version_converter

    from . import fp16, quantize_qdq

    src, dst = Path(src), Path(dst)
    if ranges is None:
        ranges = fp16.activation_ranges(src, feeds_list)
    model = onnx.load(str(src), load_external_data=False)
    model = version_converter.convert_version(model, OPSET)
    onnx.load_external_data_for_model(model, str(src.parent))
    fp16.drop_weight_identities(model)
    weights, activation_layers = quantize_qdq.weight_layers(model)
    skip = set(quantize_qdq.excluded_nodes(model))
    counts = insert_fp8_qdq(model, [n for n in weights if n not in skip], ranges)
    staged = dst.with_name(f".{dst.stem}.fp8qdq.onnx")
    big = sum(t.ByteSize() for t in model.graph.initializer) > 2**31 - 2**26
    data = f"{staged.name}.data"
    onnx.save_model(model, str(staged), save_as_external_data=big, all_tensors_to_one_file=True, location=data)
    del model
    try:
        conv = fp16.convert(staged, dst, graph_name, ranges)
    finally:
        staged.unlink(missing_ok=True)
        (staged.parent / data).unlink(missing_ok=True)
    return {
        **conv,
        "fp8": {
            **counts,
            "format": "E4M3FN, per-tensor activations and weights, zero point 0, weights stored fp8",
            "calibration": {"method": "MinMax (max |value| / 448)", "samples": len(feeds_list)},
            "excluded": sorted(skip),
            "activation_matmuls_float": len(activation_layers),
        },
    }
