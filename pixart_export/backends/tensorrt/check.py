"""Static proof, on any host, that a TensorRT bundle's graphs will parse and build for its target.

`pixart-export check --target trt-t4 DIR` runs these checks on every graph of a bundle (or on loose
.onnx files); `build --target trt-*` runs them (the last stage of `prepare.py`) before it writes the
bundle. They need only `onnx` (no TensorRT, no GPU, no torch).

1. operators: every node's op is in the TensorRT ONNX parser's supported set (`TRT_OPS`, written from
   onnx/onnx-tensorrt `docs/operators.md` for TensorRT 8.5-10.x, with the version an op arrived in),
   in the default domain, at an opset the parser reads, with the restrictions that can be seen
   statically (Einsum without ellipsis, Resize modes, constant Slice/Squeeze/Unsqueeze axes, Conv
   weights that are initializers or dequantized initializers);
2. data types: no fp64, strings or complex tensors; bf16 only where the target has it; int8 only as
   the int8 side of a Q/DQ pair; fp8 only on sm >= 8.9;
3. Q/DQ: what TensorRT's explicit quantization accepts: int8 zero-points equal to 0, scales positive,
   finite constants, per-tensor scales on activations, per-channel scales only on constant weights
   along the output-channel axis of their consumer (MatMul [K, N]: axis 1; Conv/Gemm(transB): axis 0);
   and what this toolchain allows: Q/DQ only in front of a MatMul/Gemm/Conv with a constant weight,
   never int8 on an activation x activation matmul (attention: an int8 softmax output zeroes most attention
   probabilities at thousands of tokens, see `quantize_qdq`); fp8 on both inputs of one is allowed (fp8
   attention, `quantize_fp8.insert_fp8_attention_qdq`);
4. shapes: only the batch axis is dynamic; latent sizes and image sizes lie within the target's
   optimisation profile (`targets.TrtProfile`), and the graph's declared inputs match the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...manifest import GraphRecord, Manifest, version_tuple

#: fp8 tensor cores exist from compute capability 8.9 (Ada) on.
FP8_MIN_SM = 89

#: op -> TensorRT version that first parses it ("8.5" = in the 8.5 table of operators.md). Ops of
#: the table marked N (not supported) are absent. Only what a diffusion graph may contain matters,
#: but the list is the parser's, not ours, so a future exporter change is caught rather than assumed.
TRT_OPS: dict[str, str] = {
    op: "8.5"
    for op in (
        "Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil "
        "Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace "
        "DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather "
        "GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual "
        "GridSample GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu "
        "Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean "
        "MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad "
        "ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform "
        "RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean "
        "ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round "
        "ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice "
        "Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK "
        "Transpose Trilu Unsqueeze Upsample Where Xor"
    ).split()
}
TRT_OPS.update(
    {
        "LayerNormalization": "8.6",
        "GroupNormalization": "10.0",
        "BitwiseAnd": "10.0",
        "BitwiseOr": "10.0",
        "BitwiseNot": "10.0",
        "BitwiseXor": "10.0",
        "Gelu": "10.0",
    }
)
#: Highest ONNX opset each TensorRT major parses (8.5: 17; 10.x: 20). We export 17.
MAX_OPSET = {"8": 17, "10": 20, "11": 20}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
#: ONNX element types: 1 float, 2 uint8, 3 int8, 6 int32, 7 int64, 9 bool, 10 float16, 11 double,
#: 16 bfloat16, 17-20 float8 variants. TensorRT 10 handles int64 (it was cast down to int32 before).
OK_TYPES = {1, 6, 7, 9, 10}
FP8_TYPES = {17, 18, 19, 20}
NAMES = {2: "uint8", 3: "int8", 8: "string", 11: "double", 14: "complex64", 15: "complex128", 16: "bfloat16"}


@dataclass
class CheckReport:
    file: str
    problems: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    qdq_pairs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def is_constant(name: str, inits, producers) -> bool:
    """`name` is an initializer, a Constant's output, or the dequantized form of either: a weight."""
    p = producers.get(name)
    if name in inits or (p is not None and p.op_type == "Constant"):
        return True
    if p is not None and p.op_type == "DequantizeLinear":
        return is_constant(p.input[0], inits, producers)
    return False


def check_ops(model, report: CheckReport, target) -> None:
    lo = target.trt.tensorrt[0]
    major = lo.split(".")[0]
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > MAX_OPSET.get(major, 17):
            report.problems.append(f"opset {imp.version} > {MAX_OPSET.get(major, 17)} that TensorRT {lo} parses")
        elif imp.domain not in ("", "ai.onnx"):
            report.problems.append(
                f"opset domain {imp.domain!r}: TensorRT parses the default ONNX domain only "
                "(was the graph optimised by onnxruntime? TensorRT graphs must not be)"
            )
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        report.ops[node.op_type] = report.ops.get(node.op_type, 0) + 1
        since = TRT_OPS.get(node.op_type)
        if node.domain not in ("", "ai.onnx"):
            report.problems.append(f"{node.name}: op {node.domain}::{node.op_type} is not an ONNX op TensorRT parses")
        elif since is None:
            report.problems.append(f"{node.name}: op {node.op_type} is not supported by the TensorRT ONNX parser")
        elif version_tuple(since) > version_tuple(lo):
            report.problems.append(f"{node.name}: op {node.op_type} needs TensorRT >= {since}, target allows {lo}")
        if node.op_type == "Einsum" and "..." in str(_attr(node, "equation", b"")):
            report.problems.append(f"{node.name}: Einsum with an ellipsis is not supported by TensorRT")
        if node.op_type == "Resize":
            mode = _attr(node, "mode", b"nearest").decode()
            coord = _attr(node, "coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in RESIZE_MODES or coord not in RESIZE_COORDS:
                report.problems.append(f"{node.name}: Resize mode {mode}/{coord} is not supported by TensorRT")
        if node.op_type == "Conv":
            w = node.input[1]
            if not is_constant(w, inits, producers):
                report.problems.append(
                    f"{node.name}: Conv weight {w} is not a constant (TensorRT needs an "
                    "initializer, or a dequantized one)"
                )


def _tensor_types(model):
    graph = model.graph
    out = {}
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        out[v.name] = v.type.tensor_type.elem_type
    for t in graph.initializer:
        out[t.name] = t.data_type
    for n in graph.node:
        if n.op_type == "Constant":
            t = _attr(n, "value")
            if t is not None:
                out[n.output[0]] = t.data_type
    return out


def check_types(model, report: CheckReport, target) -> None:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - very large graphs: check what is declared
        inferred = model
    types = _tensor_types(inferred)
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producers = {o: n for n in model.graph.node for o in n.output}
    bf16 = "bf16" in target.precisions
    for name, t in types.items():
        if t in OK_TYPES or t == 0:
            continue
        if t in FP8_TYPES:
            if target.trt.sm < FP8_MIN_SM:
                report.problems.append(f"{name}: fp8 tensor on {target.trt.arch} (fp8 needs sm >= 8.9)")
            continue
        if t == 16 and bf16:
            continue
        if t == 3:  # int8: only the quantized side of Q/DQ
            p = producers.get(name)
            uses = consumers.get(name, [])
            ok = (
                (p is not None and p.op_type == "QuantizeLinear")
                or (uses and all(u.op_type == "DequantizeLinear" and u.input[0] == name for u in uses))
                or (
                    uses
                    and all(u.op_type in ("QuantizeLinear", "DequantizeLinear") and name in u.input[2:] for u in uses)
                )
            )
            if not ok:
                report.problems.append(f"{name}: int8 tensor outside a Q/DQ pair")
            continue
        report.problems.append(
            f"{name}: dtype {NAMES.get(t, t)} is not supported by TensorRT"
            + (" (fp64: export in fp32)" if t == 11 else "")
        )


def check_qdq(model, report: CheckReport) -> None:
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: _attr(n, "value") for n in model.graph.node if n.op_type == "Constant"}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def value(name):
        t = inits.get(name) or consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    import numpy as np

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "QuantizeLinear":
            report.qdq_pairs += 1
        scale = value(node.input[1])
        if scale is None:
            report.problems.append(f"{node.name}: scale {node.input[1]} is not a constant")
            continue
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            report.problems.append(f"{node.name}: scales must be positive and finite (min {float(scale.min()):.3g})")
        if len(node.input) > 2 and node.input[2]:
            zp = value(node.input[2])
            if zp is None or np.any(zp != 0):
                report.problems.append(f"{node.name}: zero-point must be a constant 0 (symmetric int8)")
            elif zp.dtype not in (np.int8,) and not str(zp.dtype).startswith("float8"):
                report.problems.append(
                    f"{node.name}: zero-point type {zp.dtype}: TensorRT quantizes to int8 (or fp8), not uint8"
                )
        if scale.size > 1:  # per-channel
            axis = int(_attr(node, "axis", 1))
            weight = node.input[0] if node.op_type == "DequantizeLinear" else None
            if weight is None or weight not in inits:
                report.problems.append(
                    f"{node.name}: per-channel scales on an activation (TensorRT quantizes activations per tensor)"
                )
                continue
            w = inits[weight]
            for use in consumers.get(node.output[0], []):
                want = None
                if use.op_type == "MatMul" and use.input[1] == node.output[0] and len(w.dims) == 2:
                    want = 1
                elif use.op_type in ("Conv", "ConvTranspose"):
                    want = 0 if use.op_type == "Conv" else 1
                elif use.op_type == "Gemm":
                    want = 0 if _attr(use, "transB", 0) else 1
                if want is not None and axis % len(w.dims) != want:
                    report.problems.append(
                        f"{node.name}: per-channel axis {axis} is not the output-channel axis "
                        f"{want} of {use.op_type} {use.name}"
                    )
            if scale.size != w.dims[axis % len(w.dims)]:
                report.problems.append(f"{node.name}: {scale.size} scales for {w.dims[axis % len(w.dims)]} channels")


def check_qdq_placement(model, report: CheckReport) -> None:
    """A Q/DQ pair may feed a MatMul/Gemm/Conv only when that layer's weight (input 1) is a constant, or
    (fp8 attention, `quantize_fp8.insert_fp8_attention_qdq`) when both inputs of an activation x activation
    MatMul are fp8 DequantizeLinear outputs: int8 there stays refused (an int8 softmax output zeroes most
    attention probabilities at thousands of tokens)."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    fp8_zero = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN}
    producers = {o: n for n in model.graph.node for o in n.output}

    def fp8_dq(name: str) -> bool:
        p = producers.get(name)
        return p is not None and p.op_type == "DequantizeLinear" and len(p.input) > 2 and p.input[2] in fp8_zero

    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        fed = [i for i in node.input[:2] if (p := producers.get(i)) is not None and p.op_type == "DequantizeLinear"]
        if node.op_type == "MatMul" and len(fed) == 2 and all(fp8_dq(i) for i in node.input[:2]):
            continue
        if fed and not is_constant(node.input[1], inits, producers):
            report.problems.append(
                f"{node.name}: Q/DQ on a {node.op_type} without a constant weight (activation x activation, "
                "e.g. attention): int8 is for weight layers only; keep it float"
            )


def check_shapes(model, report: CheckReport, target, record: GraphRecord | None) -> None:
    profile = target.trt.profile
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        dynamic = [d.dim_param for d in dims if d.dim_param or not d.HasField("dim_value")]
        if any(p != "B" for p in dynamic):
            report.problems.append(
                f"input {value.name}: dynamic axes {dynamic}; only the batch axis 'B' may be "
                "dynamic (the profile fixes everything else)"
            )
    if record is None:
        return
    for key, px in (("height", record.height), ("width", record.width)):
        if px is not None and not profile.min_px <= px <= profile.max_px:
            report.problems.append(
                f"{key} {px} px is outside {target.name}'s profile ({profile.min_px}-{profile.max_px} px)"
            )
    declared = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    for inp in record.inputs:
        got = declared.get(inp.name)
        if got is None:
            report.problems.append(f"input {inp.name} of the manifest is missing from the graph")
        elif [str(d) for d in got] != [str(d) for d in inp.shape]:
            report.problems.append(f"input {inp.name}: graph shape {got} != manifest {list(inp.shape)}")


def check_file(path: Path, target, record: GraphRecord | None = None) -> CheckReport:
    """Every rule on one graph file; `record` (its manifest record) adds the shape and profile rules."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    report = CheckReport(Path(path).name)
    check_ops(model, report, target)
    check_types(model, report, target)
    check_qdq(model, report)
    check_qdq_placement(model, report)
    if report.qdq_pairs and "int8" not in target.precisions:
        report.problems.append(f"int8 Q/DQ graph, but {target.name} ({target.trt.arch}) has no int8 in this toolchain")
    check_shapes(model, report, target, record)
    return report


def check_bundle(folder: Path, target, manifest: Manifest | None = None, on_file=None) -> list[CheckReport]:
    """Every graph of a bundle (`manifest`: its records, read and validated by the caller as the runtime
    reads them), or every .onnx file of a plain folder (`manifest` None)."""
    from ...manifest import MANIFEST

    folder = Path(folder)
    reports: list[CheckReport] = []
    if manifest is not None:
        items = [(folder / r.file, r) for r in manifest.graphs]
        if manifest.target != target.name:
            mismatch = CheckReport(MANIFEST)
            mismatch.problems.append(
                f"bundle was built for {manifest.target!r}, not {target.name!r}: "
                f"build a bundle with --target {target.name}"
            )
            reports.append(mismatch)
    else:
        items = [(p, None) for p in sorted(folder.glob("*.onnx"))]
    for path, rec in items:
        if on_file:
            on_file(path.name)
        reports.append(check_file(path, target, rec))
    return reports


def reports_json(reports: list[CheckReport], target) -> dict:
    """The `check --json` document."""
    lo, hi = target.trt.tensorrt
    return {
        "target": target.name,
        "arch": target.trt.arch,
        "tensorrt": [lo, hi],
        "ok": all(r.ok for r in reports),
        "files": [
            {"file": r.file, "ok": r.ok, "problems": r.problems, "ops": r.ops, "q_nodes": r.qdq_pairs} for r in reports
        ],
    }


def format_reports(reports: list[CheckReport], target) -> str:
    lo, hi = target.trt.tensorrt
    lines = [f"check for {target.name} ({target.trt.arch}, TensorRT {lo}{' to ' + hi if hi else '+'}):"]
    for r in reports:
        lines.append(
            f"  {r.file:44} {len(r.ops):3d} op types, {sum(r.ops.values()):6d} nodes, "
            f"{r.qdq_pairs:4d} Q nodes  {'ok' if r.ok else 'FAIL'}"
        )
        lines += [f"      - {p}" for p in r.problems[:20]]
        if len(r.problems) > 20:
            lines.append(f"      ... and {len(r.problems) - 20} more")
    lines.append(f"check: {'PASS' if all(r.ok for r in reports) else 'FAIL'}")
    return "\n".join(lines)
