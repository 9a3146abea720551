"""Explicit int8 for TensorRT: calibrated Q/DQ ONNX graphs of the transformer and the unrolled denoiser.

TensorRT 11 has no implicit int8 calibration; an int8 engine is built from a graph that carries its
own QuantizeLinear/DequantizeLinear pairs (TensorRT "explicit quantization"). The pairs are placed
where TensorRT fuses them into int8 kernels: on the *inputs* of the linear layers (MatMul with a
constant weight, Gemm) and of Conv, and nowhere else; TensorRT propagates and fuses them from there.
Its constraints (also checked by `check.py`): int8, zero-point 0 (symmetric), scales positive
constants, weights per output channel (axis 1 of a MatMul's [K, N] weight, axis 0 of a Conv's / a
transposed Gemm's), activations per tensor; biases stay float (no int32 bias DQ).

Tool: onnxruntime's `quantize_static` with `QuantFormat.QDQ`, `per_channel=True` and
`ActivationSymmetric`/`WeightSymmetric`, on the weight layers only (`weight_layers`): every MatMul,
Gemm or Conv whose second input is not a constant is passed in `nodes_to_exclude`. onnxruntime's
`MatMulConstBOnly` option would say the same but is honoured only in the QOperator format; in QDQ it
is ignored, and attention's activation x activation matmuls (Q.K^T and softmax.V) were quantized: the
softmax output gets a per-tensor MinMax scale of ~1/127 (set by the sharpest head), so every attention
probability below ~0.004 became 0, i.e. nearly all of them at 4096 tokens (mean 1/4096). Measured on a
narrow DiT at 4096 tokens (tests/test_tensorrt_precision_4096.py): attention output error 0.67 with them
quantized, 0.016 without. TensorRT's int8 recipes for diffusion (demo/Diffusion, ModelOpt) quantize
Linear/Conv only too, and its fused attention runs fp16.

NVIDIA's ModelOpt ONNX PTQ was the first choice, but `nvidia-modelopt[onnx]` installs
onnxruntime-gpu, cupy and an older onnx over ours (checked with `pip install --dry-run`).
Calibration: MinMax over the activations of the calibration prompts (`calibration.py`): at this size
the range of a few prompts is stable and the entropy/percentile calibrators' histograms cost minutes
more per graph; the measured error is gated by `verify.py` (through `prepare.py`) either way.

SmoothQuant (issue #23, `Int8Settings.alpha`; ModelOpt's int8 diffusion recipe uses alpha 0.8): a candidate
beside plain MinMax, measured on the unrolled denoiser and chosen as fp8's candidates are (`INT8_CANDIDATES`,
`prepare._choose_int8`, every candidate's figures in `build.int8_choice`). Our own, on the ONNX graph
(`smooth`), since onnxruntime implements it through Intel Neural Compressor: for each weight MatMul, per
input channel j, s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) with max|x_j| over the calibration feeds;
W's row j is multiplied by s_j and the layer's input by 1/s_j (a Mul in front of it: ModelOpt's
"pre-quant scale"), which leaves the fp32 function unchanged and moves activation outliers (the caption
projection's T5 input has channels far above the rest) into the per-channel weight scales. A weight shared
by the K steps of the unrolled graph gets one s from all its consumers, so it stays one int8 copy.

The Q/DQ graph is then made fp16 outside the int8 layers (`to_fp16`, opset 19 for fp16 scales), so
the engine is int8 where quantized and fp16 elsewhere, with the same fp32 exceptions as the fp16 graphs.

Left in float on purpose (`EXCLUDE`): the timestep embedding and adaLN modulation (tiny matmuls whose
outputs scale every block), the patch embedding and the final projection (first and last layers,
the usual exclusions of diffusion int8 recipes).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
#: Node-name patterns that stay float (module docstring); matched on the exporter's scoped names, so
#: they hold for the one-step transformer and every step of the unrolled denoiser alike.
EXCLUDE = (r"/adaln_single/", r"/pos_embed/", r"/proj_out/", r"/time_proj/", r"/timestep_embedder/")
#: The graphs that get an int8 variant: the heavy, repeated DiT compute.
INT8_GRAPHS = ("transformer", "denoiser_lcm")


def wants_int8(graph: str) -> bool:
    return any(graph == g or graph.startswith(g) for g in INT8_GRAPHS)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds_list: list[dict[str, np.ndarray]], names: list[str]):
        self._it = iter([{n: f[n] for n in names} for f in feeds_list])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def weight_layers(model) -> tuple[list[str], list[str]]:
    """(names of the MatMul/Gemm/Conv nodes with a constant weight, names of those without one).

    Only the first list is quantized: an activation x activation matmul (attention) stays float."""
    from .check import is_constant

    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weights, activations = [], []
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OPS:
            const = len(n.input) > 1 and is_constant(n.input[1], inits, producers)
            (weights if const else activations).append(n.name)
    return weights, activations


def excluded_nodes(model, patterns=EXCLUDE) -> list[str]:
    rx = [re.compile(p) for p in patterns]
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and any(r.search(n.name) for r in rx)]


def keep_float_for_other_consumers(path: Path) -> int:
    """Point every consumer that is not a quantized layer back at the float tensor.

    onnxruntime replaces *all* uses of a quantized activation by its DequantizeLinear output; where
    the tensor also feeds a residual Add (PixArt's cross-attention reads the residual stream without
    a norm), that quantizes the residual stream itself to per-tensor int8, which measured 0.4 relative
    error on the one-step transformer. TensorRT wants Q/DQ only in front of the layers it runs in
    int8; everything else keeps its float input.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    float_of = {}
    for dq in graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            float_of[dq.output[0]] = q.input[0]
    changed = 0
    for node in graph.node:
        if node.op_type in QUANTIZED_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
                changed += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    while True:  # drop Q/DQ left without a consumer
        dead = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    if changed:
        external = (Path(path).parent / f"{Path(path).name}.data").exists()
        if external:
            (Path(path).parent / f"{Path(path).name}.data").unlink()
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=f"{Path(path).name}.data" if external else None,
        )
    return changed


#: Opset of the int8 graphs: QuantizeLinear/DequantizeLinear take fp16 scales from opset 19 on, which
#: lets the layers around the int8 GEMMs be fp16 too (a strongly typed engine runs what the graph says).
QDQ_FP16_OPSET = 19


def to_fp16(qdq_path: Path, dst: Path, graph_name: str, ranges: dict[str, float] | None) -> dict:
    """The int8 graph with fp16 everywhere else: Q/DQ at opset 19 with fp16 scales, then `fp16.convert`
    with the same fp32 rules as the fp16 graphs (`ranges` measured on the fp32 graph). Without this, the
    float parts of an int8 graph would run in fp32 on TensorRT, slower than the fp16 engine."""
    import onnx
    from onnx import version_converter

    from . import fp16

    qdq_path, dst = Path(qdq_path), Path(dst)
    model = onnx.load(str(qdq_path), load_external_data=False)  # weights stay where they are
    model = version_converter.convert_version(model, QDQ_FP16_OPSET)
    staged = qdq_path.with_name(f"{qdq_path.stem}.opset{QDQ_FP16_OPSET}.onnx")
    onnx.save(model, str(staged))  # external-data references are relative, so they still resolve
    del model
    try:
        return fp16.convert(staged, dst, graph_name, ranges)
    finally:
        staged.unlink(missing_ok=True)


@dataclass(frozen=True)
class Int8Settings:
    """One int8 configuration: MinMax activation scales, with SmoothQuant at `alpha` first when set."""

    name: str
    alpha: float | None = None


#: The int8 candidates, measured on the unrolled denoiser and chosen by `quantize_fp8.choose` (the first
#: within `quantize_fp8.SELECT_FRACTION` of the int8 gate, else the lowest): plain MinMax first (no extra
#: Mul per layer), SmoothQuant at ModelOpt's diffusion alpha second.
INT8_CANDIDATES = (Int8Settings("MinMax"), Int8Settings("SmoothQuant 0.8", alpha=0.8))


def _channel_maxima(model, inputs: list[str], feeds_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{tensor: max |value| per last-axis channel} over `feeds_list`, by a probe graph whose extra outputs
    are Abs -> Reshape [-1, C] -> ReduceMax over rows (never the activations themselves)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    opset = next((o.version for o in probe.opset_import if o.domain in ("", "ai.onnx")), 17)
    outs = []
    for k, x in enumerate(inputs):
        a, r, m = f"smooth/{k}/abs", f"smooth/{k}/rows", f"smooth/{k}/max"
        probe.graph.node.append(helper.make_node("Abs", [x], [a], name=f"/smooth/{k}/Abs"))
        probe.graph.node.append(helper.make_node("Flatten", [a], [r], name=f"/smooth/{k}/Flatten", axis=-1))
        if opset >= 18:
            axes = f"smooth/{k}/axes"
            probe.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
            probe.graph.node.append(helper.make_node("ReduceMax", [r, axes], [m], name=f"/smooth/{k}/Max", keepdims=0))
        else:
            probe.graph.node.append(
                helper.make_node("ReduceMax", [r], [m], name=f"/smooth/{k}/Max", axes=[0], keepdims=0)
            )
        probe.graph.output.append(helper.make_tensor_value_info(m, onnx.TensorProto.FLOAT, None))
        outs.append(m)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    top: dict[str, np.ndarray] = {}
    for feeds in feeds_list:
        for x, v in zip(inputs, session.run(outs, {n: feeds[n] for n in names})):
            top[x] = np.maximum(top[x], v) if x in top else v
    return top


def smooth(model, feeds_list: list[dict[str, np.ndarray]], alpha: float, exclude=EXCLUDE) -> dict:
    """SmoothQuant in place on the fp32 `model` (module docstring): every weight MatMul outside `exclude`
    with a 2-D initializer weight gets its input divided by s (a Mul) and its weight rows multiplied by s.
    Returns counts for the manifest."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    skip = set(excluded_nodes(model, exclude))
    weights, _ = weight_layers(model)
    layers = [
        n
        for n in graph.node
        if n.name in weights
        and n.name not in skip
        and n.op_type == "MatMul"
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
    ]
    act = _channel_maxima(model, sorted({n.input[0] for n in layers}), feeds_list)
    by_weight: dict[str, list] = {}
    for n in layers:
        by_weight.setdefault(n.input[1], []).append(n)
    scales: dict[str, np.ndarray] = {}
    for w, nodes in by_weight.items():
        values = numpy_helper.to_array(inits[w]).astype(np.float32)  # [K, N]
        x_max = np.max([act[n.input[0]] for n in nodes], axis=0).astype(np.float64)
        w_max = np.abs(values).max(axis=1).astype(np.float64)
        if x_max.shape != w_max.shape:
            continue
        ok = (x_max > 0) & (w_max > 0)
        s = np.ones_like(x_max)
        s[ok] = np.clip(x_max[ok] ** alpha / w_max[ok] ** (1.0 - alpha), 1e-4, 1e4)
        scales[w] = s.astype(np.float32)
        inits[w].CopyFrom(numpy_helper.from_array((values * scales[w][:, None]).astype(np.float32), w))
        inv = f"{w}/smooth_inv_scale"
        graph.initializer.append(numpy_helper.from_array((1.0 / scales[w]).astype(np.float32), inv))
    added: dict[str, object] = {}
    for n in layers:
        if n.input[1] not in scales:
            continue
        y = f"{n.input[0]}/smooth/{n.name}"
        added[n.name] = helper.make_node(
            "Mul", [n.input[0], f"{n.input[1]}/smooth_inv_scale"], [y], name=f"{n.name}/smooth/Mul"
        )
        n.input[0] = y
    order = []
    for node in graph.node:
        if node.name in added:
            order.append(added[node.name])
        order.append(node)
    del graph.node[:]
    graph.node.extend(order)
    spread = [float(v.max() / v.min()) for v in scales.values()] or [1.0]
    return {
        "alpha": alpha,
        "smoothed_layers": len(added),
        "weights": len(scales),
        "max_scale_spread": round(max(spread), 1),
    }


def quantize(
    src: Path, dst: Path, feeds_list: list[dict[str, np.ndarray]], exclude=EXCLUDE, settings: Int8Settings | None = None
) -> dict:
    """Write the calibrated Q/DQ graph of `src` to `dst` (SmoothQuant first where `settings.alpha` is set);
    returns a record for the manifest."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .fp16 import drop_weight_identities, has_external_data

    src, dst = Path(src), Path(dst)
    settings = settings or INT8_CANDIDATES[0]
    model = onnx.load(str(src), load_external_data=True)
    drop_weight_identities(model)  # an Identity between weight and MatMul would hide the weight from the quantiser
    smoothed = smooth(model, feeds_list, settings.alpha, exclude) if settings.alpha is not None else None
    names = [i.name for i in model.graph.input]
    skip = excluded_nodes(model, exclude)
    _, activation_layers = weight_layers(model)
    # over 2 GB a graph cannot be one protobuf message: hand onnxruntime a file with external data
    big = has_external_data(src)
    staged = dst.with_name(f".{dst.stem}.source.onnx")
    if big:
        onnx.save_model(
            model,
            str(staged),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{staged.name}.data",
            size_threshold=1024,
        )
        model = str(staged)
    try:
        quantize_static(
            model,
            str(dst),
            _Reader(feeds_list, names),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=skip + activation_layers,
            use_external_data_format=big,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                "DedicatedQDQPair": False,
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            },
        )
    finally:
        staged.unlink(missing_ok=True)
        (staged.parent / f"{staged.name}.data").unlink(missing_ok=True)
    del model
    rewired = keep_float_for_other_consumers(Path(dst))
    q = onnx.load(str(dst), load_external_data=False)
    from .check import CheckReport, check_qdq_placement

    placement = CheckReport(Path(dst).name)
    check_qdq_placement(q, placement)
    if placement.problems:  # onnxruntime placed a pair where TensorRT must not get one: a bug here
        raise RuntimeError(f"{dst.name}: Q/DQ on a layer without a constant weight: {placement.problems[:3]}")
    counts = {op: sum(n.op_type == op for n in q.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    heavy = [n for n in q.graph.node if n.op_type in QUANTIZED_OPS]
    producers = {o: n for n in q.graph.node for o in n.output}
    int8 = [n for n in heavy if (p := producers.get(n.input[0])) is not None and p.op_type == "DequantizeLinear"]
    files = [Path(dst).name] + (
        [f"{Path(dst).name}.data"] if (Path(dst).parent / f"{Path(dst).name}.data").exists() else []
    )
    return {
        "calibration": {"method": "MinMax", "samples": len(feeds_list)},
        "settings": asdict(settings),
        "smoothquant": smoothed,
        "excluded": skip,
        "activation_matmuls_float": len(activation_layers),
        "float_inputs_restored": rewired,
        "qdq_nodes": counts,
        "int8_layers": len(int8),
        "float_layers": len(heavy) - len(int8),
        "files": files,
    }
