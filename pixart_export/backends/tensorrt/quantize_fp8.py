"""fp8 (E4M3) for TensorRT on sm >= 8.9 (trt-h100): explicit Q/DQ graphs of the transformer and the
unrolled denoiser, fp16 outside the fp8 layers.

Layers: a subset of the int8 graphs' layers (`quantize_qdq.weight_layers` minus `quantize_qdq.EXCLUDE`:
MatMul/Gemm/Conv with a constant weight, never attention's activation x activation matmuls), chosen by
measurement (`CANDIDATES`, `prepare._choose_fp8`): each gets
  activation -> QuantizeLinear -> DequantizeLinear -> layer <- DequantizeLinear <- fp8 weight
with a per-tensor activation scale and per-output-channel weight scales (the axis `check.py` requires),
zero point 0 of type FLOAT8E4M3FN, opset 19: ModelOpt's ONNX fp8 form for TensorRT (per-tensor
activations, per-channel weights). The weights are stored already quantized (one byte each, so the file is
about a quarter of the fp32 one) with a DequantizeLinear in front of the layer, as TensorRT's explicit
quantization wants. Scales: calibrated max |value| / 448 (E4M3's largest finite value), MinMax over the
calibration feeds (activations) or the weight itself (per channel); each scale is rounded to a value fp16
holds exactly, at least fp16's smallest normal 2^-14, so the fp16 conversion after this changes no scale
and the quantized weights dequantize to exactly what was computed here.

Attention (`Fp8Settings.attention`, issue #23): the candidates with attention also put per-tensor fp8 Q/DQ
on both inputs of attention's two batched matmuls (Q, K^T; softmax output, V: `insert_fp8_attention_qdq`),
where ModelOpt's fp8 diffusion recipe puts them and TensorRT needs them to run fused fp8 attention; the
int8 argument against quantizing the softmax output (a 1/127 step zeroes probabilities of ~1/4096) does
not carry over, since E4M3 keeps 3 mantissa bits at any magnitude down to 2^-9 of its scale. `check.py`
accepts Q/DQ on an activation x activation matmul only when both inputs are fp8.

Why a subset: E4M3 rounds every value by up to 1/16 of itself whatever the scale (3 mantissa bits), which
is coarser than per-channel int8 weights for most weights, and the 4-step LCM loop amplifies one step's
error about 6x (the t=999 step multiplies its noise prediction's error by sqrt((1 - alpha_bar)/alpha_bar)
= 157). On the trained tiny, fp8 on every int8 layer measured 0.17 on the unrolled denoiser against fp32
(gate 0.1), the feed-forward layers alone 0.07; no activation calibration changes the rounding (ranges
scaled x4 or x0.25 measured worse). Figures: benchmarks/results/fp8_candidates.md.

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

from dataclasses import asdict, dataclass
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


def weight_axis(node) -> int:
    """The output-channel axis of `node`'s weight (input 1): what per-channel scales run along (the axis
    `check.py` requires): MatMul [K, N] 1, Conv [O, I, ...] 0, Gemm 0 with transB else 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 1


def weight_scales(values: np.ndarray, axis: int | None) -> np.ndarray:
    """fp16-exact scales of a weight: one (axis None, per-tensor) or one per slice along `axis`."""
    if axis is None:
        return np.array(fp16_exact_scale(float(np.abs(values).max())), np.float32)
    other = tuple(i for i in range(values.ndim) if i != axis)
    amax = np.abs(values).max(axis=other) if other else np.abs(values)
    return np.array([fp16_exact_scale(float(a)) for a in amax], np.float32)


def insert_fp8_qdq(model, layers: list[str], ranges: dict[str, float], per_channel: bool = False) -> dict:
    """Rewrite `model` in place: fp8 Q/DQ in front of each node named in `layers` (activation: per-tensor
    scale from `ranges`; weight: quantized into an fp8 initializer, one scale per tensor or, with
    `per_channel`, per output channel). Returns counts for the manifest."""
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
            axis = weight_axis(node) if per_channel and values.ndim >= 2 else None
            scale = weight_scales(values, axis)
            shaped = scale if axis is None else np.expand_dims(scale, tuple(i for i in range(values.ndim) if i != axis))
            qname, s = f"{w}/fp8", f"{w}/fp8_scale"
            graph.initializer.append(_fp8_tensor(qname, np.clip(values / shaped, -E4M3_MAX, E4M3_MAX)))
            graph.initializer.append(numpy_helper.from_array(scale, s))
            dq = f"{w}/fp8_dq"
            if axis is None:
                wzero, extra = zero, {}
            else:  # a per-channel zero point has the scale's shape
                wzero, extra = f"{w}/fp8_zero_point", {"axis": axis}
                graph.initializer.append(_fp8_tensor(wzero, np.zeros(scale.shape, np.float32)))
            added.append(
                helper.make_node(
                    "DequantizeLinear",
                    [qname, s, wzero],
                    [dq],
                    name=f"{node.name}/weight_DequantizeLinear",
                    **extra,
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


def attention_layers(model) -> list[str]:
    """The activation x activation MatMuls (attention's Q.K^T and softmax.V, self and cross), outside
    `quantize_qdq.EXCLUDE`: what `Fp8Settings.attention` quantizes."""
    from . import quantize_qdq

    _weights, activations = quantize_qdq.weight_layers(model)
    excluded = set(quantize_qdq.excluded_nodes(model))
    return [n for n in activations if n not in excluded]


def insert_fp8_attention_qdq(model, layers: list[str], ranges: dict[str, float]) -> dict:
    """Rewrite `model` in place: a per-tensor fp8 Q/DQ pair on *both* inputs of each attention matmul named
    in `layers` (Q and K^T of the first, the softmax output and V of the second), where ModelOpt's fp8
    diffusion recipe puts them (`--quantize-mha`): TensorRT fuses fp8 attention only when both inputs of
    both batched matmuls are fp8. Scales: max |value| / 448 from `ranges`; the softmax output (max 1 by
    construction) at 1/448 when it has no range. E4M3 keeps 3 mantissa bits at any scale, so a probability
    of 1/4096 at scale 1/448 is stored within ~6% (int8 at 1/127 stores it as 0: why int8 never does this)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    zero = "fp8_attention_zero_point"
    graph.initializer.append(_fp8_tensor(zero, np.zeros((), np.float32)))
    producers = {o: n for n in graph.node for o in n.output}
    wanted = set(layers)
    added: dict[str, list] = {}
    dq_of: dict[str, str] = {}
    done, skipped = 0, []

    def amax_of(x: str) -> float | None:
        softmax = producers.get(x) is not None and producers[x].op_type == "Softmax"
        return ranges.get(x, 1.0 if softmax else None)

    for node in graph.node:
        if node.name not in wanted:
            continue
        if any(amax_of(x) is None for x in node.input[:2]):  # no calibrated range: stays fp16
            skipped.append(node.name)
            continue
        pairs = []
        for k in (0, 1):
            x = node.input[k]
            if x not in dq_of:
                amax = amax_of(x)
                s = f"{x}/fp8_attention_scale"
                graph.initializer.append(numpy_helper.from_array(np.array(fp16_exact_scale(amax), np.float32), s))
                q, dq = f"{x}/fp8_attention_q", f"{x}/fp8_attention_dq"
                pairs += [
                    helper.make_node("QuantizeLinear", [x, s, zero], [q], name=f"{node.name}/input{k}_QuantizeLinear"),
                    helper.make_node(
                        "DequantizeLinear", [q, s, zero], [dq], name=f"{node.name}/input{k}_DequantizeLinear"
                    ),
                ]
                dq_of[x] = dq
            node.input[k] = dq_of[x]
        added[node.name] = pairs
        done += 1
    order = []
    for node in graph.node:
        order += added.get(node.name, [])
        order.append(node)
    del graph.node[:]
    graph.node.extend(order)
    return {"attention_matmuls_fp8": done, "attention_tensors_fp8": len(dq_of), "attention_skipped": skipped}


@dataclass(frozen=True)
class Fp8Settings:
    """One fp8 configuration: weight scales per tensor or per output channel, the weight layers kept
    fp16 (node-name patterns) besides `quantize_qdq.EXCLUDE`, and whether attention's two batched matmuls
    run fp8 too (`insert_fp8_attention_qdq`)."""

    name: str
    per_channel: bool = False
    float_patterns: tuple[str, ...] = ()
    attention: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> Fp8Settings:
        return cls(d["name"], bool(d["per_channel"]), tuple(d["float_patterns"]), bool(d.get("attention", False)))


#: Node-name patterns of the layer kinds (the exporter's scoped names, the same in the one-step transformer
#: and every step of the unrolled denoiser). A candidate keeps fp16 every int8 layer outside its kinds.
FF = r"/ff/"  # the feed-forward pair: 8 D^2 of a block's 14 D^2 weight MACs per image token
ATTN_OUT = r"/attn[12]/to_out"  # the two attention output projections: 2 D^2
FF_DOWN = r"/ff/net\.2/"  # the feed-forward down projection: 4 D^2


def _only(*kinds: str) -> tuple[str, ...]:
    """float_patterns that keep fp16 every layer outside `kinds` (a negative lookahead on the node name)."""
    return (r"^(?!.*(" + "|".join(kinds) + "))",)


#: Tried in this order (most fp8 MACs per image token at XL's 4096 tokens first: a block's weight layers are
#: 14 D^2, its attention matmuls 2 T D (self) + 2 L D (cross), so at T = 4096, D = 1152 attention is about
#: half of the int8 layers' MACs and ModelOpt's fp8 recipe quantizes it, issue #23); every candidate is
#: measured and recorded, and the first whose error on the unrolled denoiser is within `SELECT_FRACTION` of
#: the fp8 gate wins (`choose`, `prepare._choose_fp8`). Per-channel weight scales throughout:
#: on the trained tiny's one-step transformer they measured lower error than per-tensor (2.64e-2 vs
#: 2.97e-2 with every int8 layer fp8; 1.55e-2 vs 1.62e-2 with the feed-forward only), and per-tensor
#: activations with per-channel weights is ModelOpt's ONNX fp8 form for TensorRT. Every candidate's
#: figures: benchmarks/results/fp8_candidates.md (benchmarks/fp8_candidates.py).
CANDIDATES = (
    Fp8Settings("int8 layers + attention", per_channel=True, attention=True),
    Fp8Settings("feed-forward + attention out + attention", True, _only(FF, ATTN_OUT), attention=True),
    Fp8Settings("feed-forward + attention", per_channel=True, float_patterns=_only(FF), attention=True),
    Fp8Settings("int8 layers", per_channel=True),
    Fp8Settings("feed-forward + attention out", per_channel=True, float_patterns=_only(FF, ATTN_OUT)),
    Fp8Settings("feed-forward", per_channel=True, float_patterns=_only(FF)),
    Fp8Settings("feed-forward down", per_channel=True, float_patterns=_only(FF_DOWN)),
    Fp8Settings("attention out", per_channel=True, float_patterns=_only(ATTN_OUT)),
)
#: A candidate is chosen when its error on the calibration trajectories is at most this share of the fp8
#: tolerance: the gate itself is measured on other (held-out) prompts, and on the trained tiny the 4-step
#: error of one placement moves by +-30% between prompt sets (per-sample errors 0.02-0.4).
SELECT_FRACTION = 0.8


def choose(errors: list[float], limit: float) -> int:
    """Index of the chosen candidate, given every candidate's measured error in `CANDIDATES` order: the
    first at most `limit`, else the lowest (the gate then decides whether the bundle ships it)."""
    ok = [i for i, e in enumerate(errors) if e <= limit]
    return ok[0] if ok else min(range(len(errors)), key=lambda i: errors[i])


def fp8_weight_share(src: Path, settings: Fp8Settings) -> float:
    """Share of the weight-layer weights (counted per node, so the K steps of the unrolled graph each
    count: a proxy for weight MACs per token) that `settings` runs in fp8."""
    import onnx

    from . import fp16, quantize_qdq

    model = onnx.load(str(src), load_external_data=False)
    fp16.drop_weight_identities(model)
    weights, _ = quantize_qdq.weight_layers(model)
    skip = set(quantize_qdq.excluded_nodes(model, quantize_qdq.EXCLUDE + settings.float_patterns))
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    total = sum(sizes.get(nodes[n].input[1], 0) for n in weights)
    fp8 = sum(sizes.get(nodes[n].input[1], 0) for n in weights if n not in skip)
    return fp8 / total if total else 0.0


def quantize(
    src: Path,
    dst: Path,
    graph_name: str,
    feeds_list: list[dict],
    ranges: dict | None = None,
    settings: Fp8Settings | None = None,
) -> dict:
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
    settings = settings or CANDIDATES[0]
    skip = set(quantize_qdq.excluded_nodes(model, quantize_qdq.EXCLUDE + settings.float_patterns))
    counts = insert_fp8_qdq(model, [n for n in weights if n not in skip], ranges, settings.per_channel)
    if settings.attention:
        counts |= insert_fp8_attention_qdq(model, attention_layers(model), ranges)
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
            "settings": asdict(settings),
            "format": "E4M3FN, per-tensor activations, "
            + ("per-output-channel" if settings.per_channel else "per-tensor")
            + " weights, zero point 0, weights stored fp8",
            "calibration": {"method": "MinMax (max |value| / 448)", "samples": len(feeds_list)},
            "excluded": sorted(skip),
            "activation_matmuls_float": len(activation_layers) - counts.get("attention_matmuls_fp8", 0),
        },
    }
