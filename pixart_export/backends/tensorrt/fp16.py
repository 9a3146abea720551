"""fp32 ONNX graph -> fp16 ONNX graph for strongly typed TensorRT, numerically sensitive nodes kept fp32.

TensorRT 11 has no FP16 builder flag: a strongly typed network runs each layer in the type its
tensors have in the ONNX file, so the precision decision is made here, on CPU, and verified in ONNX
Runtime before any GPU sees it.

Tool: onnxconverter-common's `float16.convert_float_to_float16` with a *node block list*. It rewrites
initializers and value types, and inserts the Cast pairs around blocked nodes itself. TensorRT Model
Optimizer's AutoCast does the same job but `nvidia-modelopt[onnx]` pulls onnxruntime-gpu, cupy and an
older onnx into the environment (checked with `pip install --dry-run`), which would replace the
onnxruntime this project verifies with; onnxconverter-common is pure Python on top of onnx.

Which nodes stay fp32 (`plan_fp32_nodes`), each with its reason recorded in the manifest:
1. structural, by the `keep` choice (`KEEP_CHOICES`): normalisations (LayerNormalization /
   InstanceNormalization / GroupNormalization ops and every node under a module whose name contains
   "norm", e.g. T5's RMSNorm as Pow/ReduceMean/Sqrt/Div) always; Softmax and the other transcendental
   ops (Exp, Log, Pow, Sqrt, Reciprocal, Erf) only in the larger choices. Every fp32 island costs a Cast
   pair, and a Cast between attention's MatMul and Softmax keeps TensorRT from fusing attention, so the
   default (`DEFAULT_KEEP`) is the smallest set whose error was measured acceptable
   (`benchmarks/fp16_casts.py`, table in `benchmarks/results/fp16_casts.md`). Normalisations stay fp32
   whatever onnxruntime measures: its CPU kernels accumulate in fp32 inside an fp16 op, TensorRT's fp16
   normalisation does not (TensorRT itself warns that an fp16 LayerNorm after attention may overflow),
   so the CPU cannot show that error. Sin, Cos and Range always stay fp32 (rule 2);
2. phase and index arithmetic: everything that feeds a Sin/Cos (the timestep embedding multiplies
   t <= 999 by frequencies: fp16 has a spacing of 0.5 at 999, which scrambles the phase) or a Cast to an
   integer type (T5's relative-position buckets: a rounding error flips the floor to another bucket);
3. known overflow (`KNOWN_OVERFLOW`): T5's feed-forward output projection and the residual adds of the
   encoder. T5 v1.1 XXL is known to overflow fp16 there on real prompts (transformers keeps `wo` in fp32
   for the same reason); a tiny random T5 never shows it, so the rule is by name;
4. measured: any node with a float input or output whose largest |value| over the calibration prompt
   set exceeds `FP16_SAFE_MAX`.
Graph inputs and outputs keep their fp32 types (`keep_io_types`), so the contract of ARCHITECTURE.md
and the runtime's buffers do not change; TensorRT places the casts at the edges.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

#: Largest finite fp16.
FP16_MAX = 65504.0
#: A node whose measured activations exceed this stays fp32. 16x below FP16_MAX: calibration prompts
#: are a sample, and activations of other prompts/seeds can be a few times larger; at 16x, an
#: activation would have to grow 16-fold over the largest one measured to overflow.
FP16_SAFE_MAX = FP16_MAX / 16

SENSITIVE_OPS = frozenset(
    {
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "BatchNormalization",
        "Softmax",
        "LogSoftmax",
        "Exp",
        "Log",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Sin",
        "Cos",
        "Erf",
        "Range",
    }
)
#: Key suffix of `activation_ranges` for a value's largest (signed) value.
POSITIVE = "::max"
NORM_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization"})
#: Ops fp32 in every choice: phase and index producers (rule 2), a few scalar nodes per graph.
ALWAYS_OPS = frozenset({"Sin", "Cos", "Range"})
#: {choice: (ops kept fp32, whether nodes under a "norm" scope are kept)}, from most fp32 to least.
#: "none" keeps only rules 2-4: measured for comparison, never shipped (normalisations, module docstring).
KEEP_CHOICES = {
    "all_sensitive": (SENSITIVE_OPS, True),
    "norms_softmax": (NORM_OPS | {"Softmax", "LogSoftmax"}, True),
    "norms": (NORM_OPS, True),
    "none": (frozenset(), False),
}
#: The shipped choice: measured in benchmarks/results/fp16_casts.md (fewest Cast pairs within the error
#: margin at 4096 tokens, normalisations fp32).
DEFAULT_KEEP = "norms"
NORM_SCOPE = re.compile(r"/[^/]*norm[^/]*/", re.IGNORECASE)
#: {graph name: node-name patterns}: overflow known from the real model (see the module docstring).
KNOWN_OVERFLOW = {
    "text_encoder": (re.compile(r"/DenseReluDense/wo/"), re.compile(r"/encoder/block\.\d+/layer\.\d+/Add(_\d+)?$")),
}
#: Ops through which phase/index arithmetic is followed back from a Sin/Cos or integer Cast.
_ARITH = frozenset(
    {
        "Mul",
        "Add",
        "Sub",
        "Div",
        "Neg",
        "Abs",
        "Min",
        "Max",
        "Where",
        "Floor",
        "Ceil",
        "Log",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Expand",
        "Concat",
        "Slice",
        "Gather",
        "Cast",
        "Identity",
        "Tile",
        "Clip",
        "Round",
    }
)
_INT_TYPES = {2, 3, 4, 5, 6, 7, 9, 12, 13}  # onnx uint8 int8 uint16 int16 int32 int64 bool uint32 uint64


def _infer(model):
    import onnx

    return onnx.shape_inference.infer_shapes(model, data_prop=False)


def activation_ranges(path: Path, feeds_list: list[dict[str, np.ndarray]], chunk: int = 512) -> dict[str, float]:
    """{value name: max |value|} of every fp32 value of the graph at `path` over `feeds_list`, and
    {value name + POSITIVE: largest value} (the side that can overflow a Softmax).

    Intermediate values are exposed as extra graph outputs in chunks of `chunk` (so a large graph
    never holds all its activations at once), each chunk run over every feed.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    inferred = _infer(model) if model.ByteSize() < 2**31 - 2**26 else model
    floats = {v.name: v for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names = sorted(floats)
    ranges: dict[str, float] = {}
    outputs = [o.name for o in model.graph.output]
    for start in range(0, max(len(names), 1), chunk):
        part = names[start : start + chunk]
        probe = onnx.load(str(path), load_external_data=False)
        del probe.graph.output[:]
        for n in part:
            probe.graph.output.append(floats[n])
        for o in model.graph.output:
            probe.graph.output.append(o)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = _serialise_beside(probe, path)
        try:
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        finally:
            if isinstance(source, str):
                Path(source).unlink(missing_ok=True)  # onnxruntime has read it (weights included)
        want = part + (outputs if start == 0 else [])
        input_names = [i.name for i in session.get_inputs()]
        for feeds in feeds_list:
            got = session.run(want, {k: feeds[k] for k in input_names})
            for name, value in zip(want, got):
                m = float(np.max(np.abs(value))) if value.size else 0.0
                ranges[name] = max(ranges.get(name, 0.0), m)
                top = float(np.max(value)) if value.size else 0.0
                ranges[name + POSITIVE] = max(ranges.get(name + POSITIVE, -np.inf), top)
        del session
    for inp in model.graph.input:
        for feeds in feeds_list:
            value = feeds.get(inp.name)
            if value is not None and value.dtype == np.float32 and value.size:
                ranges[inp.name] = max(ranges.get(inp.name, 0.0), float(np.max(np.abs(value))))
                ranges[inp.name + POSITIVE] = max(ranges.get(inp.name + POSITIVE, -np.inf), float(np.max(value)))
    return ranges


def has_external_data(path: Path) -> bool:
    """Whether the graph keeps weights in external data (the > 2 GB case, whatever the file names)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _serialise_beside(model, path: Path) -> bytes | str:
    """Bytes for onnxruntime; a graph with external data is written next to `path` (its data is relative)."""
    if not any(t.data_location == 1 for t in model.graph.initializer):
        return model.SerializeToString()
    probe = Path(path).with_name(f".{Path(path).stem}.probe.onnx")
    import onnx

    onnx.save_model(model, str(probe))
    return str(probe)


def drop_weight_identities(model) -> int:
    """Remove `Identity(initializer)` nodes (the exporter's aliases of tied weights) by pointing their
    consumers at the initializer itself. onnxconverter-common types such an Identity's output fp16
    even when the weight stays fp32 for a blocked consumer, which makes an invalid graph."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return 0
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in keep:
        node.input[:] = [alias.get(i, i) for i in node.input]
    del graph.node[:]
    graph.node.extend(keep)
    kept_info = [v for v in graph.value_info if v.name not in alias]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(alias)


def drop_noop_casts(model) -> int:
    """Remove `Cast(to=float)` nodes whose input is already float (the exporter writes them for
    `.to(dtype)` in attention and position embeddings), by pointing their consumers at the input. Kept,
    each would become three Casts on an activation tensor after conversion (to fp32, the kept Cast, back
    to fp16). Needs the model's value types (shape inference or an exported graph's value_info)."""
    import onnx

    graph = model.graph
    fp32 = onnx.TensorProto.FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    types.update({t.name: t.data_type for t in graph.initializer})
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Cast"
        and any(a.name == "to" and a.i == fp32 for a in n.attribute)
        and types.get(n.input[0]) == fp32
        and n.output[0] not in outputs
    }
    if not alias:
        return 0

    def root(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    keep = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in alias)]
    for node in keep:
        node.input[:] = [root(i) for i in node.input]
    del graph.node[:]
    graph.node.extend(keep)
    kept_info = [v for v in graph.value_info if v.name not in alias]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(alias)


def plan_fp32_nodes(
    model,
    graph_name: str,
    ranges: dict[str, float] | None = None,
    bound: float = FP16_SAFE_MAX,
    keep_choice: str = DEFAULT_KEEP,
    overflow_rules: bool = True,
) -> dict[str, str]:
    """{node name: reason} for the nodes that stay fp32 (rules 1-4 of the module docstring);
    `keep_choice` is a key of `KEEP_CHOICES` (rule 1); `overflow_rules=False` drops rule 3 (the bf16
    graphs: bf16 has fp32's range)."""
    ops, norm_scope = KEEP_CHOICES[keep_choice]
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    plan: dict[str, str] = {}

    def keep(node, reason):
        plan.setdefault(node.name, reason)

    seeds = []
    for node in graph.node:
        if node.op_type in ops or node.op_type in ALWAYS_OPS:
            keep(node, f"sensitive op {node.op_type}")
        elif norm_scope and NORM_SCOPE.search(node.name):
            keep(node, "normalisation")
        elif node.op_type == "Cast" and any(a.name == "to" and a.i == 1 for a in node.attribute):
            keep(node, "Cast to fp32 (the converter does not retype Casts; it casts the result instead)")
        for pattern in KNOWN_OVERFLOW.get(graph_name, ()) if overflow_rules else ():
            if pattern.search(node.name):
                keep(node, f"known fp16 overflow in the real model ({pattern.pattern})")
        if node.op_type in ("Sin", "Cos"):
            seeds.append((node, "phase of a Sin/Cos"))
        elif node.op_type == "Cast" and any(a.name == "to" and a.i in _INT_TYPES for a in node.attribute):
            seeds.append((node, "float arithmetic rounded to an integer index"))
    for node, reason in seeds:  # rule 2: walk back through the arithmetic that feeds it
        stack = list(node.input)
        seen = set()
        while stack:
            name = stack.pop()
            src = producer.get(name)
            if src is None or src.name in seen or src.op_type not in _ARITH:
                continue
            seen.add(src.name)
            keep(src, reason)
            stack.extend(src.input)
    if ranges:
        # Softmax and the Add that puts a mask bias on its logits: only the positive side can overflow. A
        # large negative logit (the caption mask's -1e4) makes exp() 0 in fp16 as in fp32, so without this
        # every cross-attention Softmax stayed fp32 behind a Cast pair (benchmarks/results/fp16_casts.md).
        softmax_in = {n.input[0] for n in graph.node if n.op_type == "Softmax"}
        for node in graph.node:
            values = list(node.input) + list(node.output)
            one_sided = node.op_type == "Softmax" or (
                node.op_type in ("Add", "Sub", "Where") and any(o in softmax_in for o in node.output)
            )
            if one_sided and all(v + POSITIVE in ranges for v in values if v in ranges):
                big = max((ranges.get(v + POSITIVE, 0.0) for v in values), default=0.0)
                what = "largest logit"
            else:
                big = max((ranges.get(v, 0.0) for v in values), default=0.0)
                what = "max |activation|"
            if big > bound:
                keep(node, f"measured {what} {big:.3g} > fp16-safe bound {bound:.0f}")
    return plan


def restore_fp32_outputs(model) -> int:
    """Give every graph output its fp32 type back. `keep_io_types` leaves an output fp16 when the node
    producing it is blocked (the converter casts it down on the way out); the contract says fp32."""
    import onnx

    graph = model.graph
    fixed = 0
    for out in graph.output:
        t = out.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT16:
            continue
        inner = f"{out.name}__fp16"
        for node in graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        graph.node.append(
            onnx.helper.make_node(
                "Cast", [inner], [out.name], name=f"{out.name}/Cast_to_fp32", to=onnx.TensorProto.FLOAT
            )
        )
        t.elem_type = onnx.TensorProto.FLOAT
        fixed += 1
    return fixed


def reason_kind(reason: str) -> str:
    """The rule behind a reason string, for counting (the measured value is dropped)."""
    for kind in (
        "measured",
        "known fp16 overflow",
        "sensitive op",
        "normalisation",
        "Cast to fp32",
        "phase",
        "float arithmetic",
    ):
        if reason.startswith(kind):
            return kind
    return reason


def convert(
    src: Path,
    dst: Path,
    graph_name: str,
    ranges: dict[str, float] | None = None,
    bound: float = FP16_SAFE_MAX,
    keep_choice: str = DEFAULT_KEEP,
    drop_noops: bool = True,
    overflow_rules: bool = True,
) -> dict:
    """Write the fp16 graph of `src` to `dst`; returns {"kept_fp32": {node: reason}, "files": [...],
    "keep": the choice, "casts": Cast nodes in the written graph}. `drop_noops=False` keeps the
    exporter's float-to-float Casts (the former conversion, for comparison only)."""
    import onnx
    from onnxconverter_common import float16

    from ...export.exporter import EXTERNAL_DATA_THRESHOLD

    big = has_external_data(src)
    if big:  # the converter needs value types; onnx infers them for > 2 GB graphs only path to path
        inferred = Path(src).with_name(f".{Path(src).stem}.inferred.onnx")
        onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
        try:
            model = onnx.load(str(inferred), load_external_data=False)
            onnx.load_external_data_for_model(model, str(Path(src).parent))
        finally:
            inferred.unlink(missing_ok=True)
    else:
        model = onnx.load(str(src), load_external_data=True)
    drop_weight_identities(model)
    if drop_noops:
        if not big:  # a > 2 GB graph was loaded from its inferred copy: value types are there
            model = _infer(model)
        drop_noop_casts(model)
    plan = plan_fp32_nodes(model, graph_name, ranges, bound, keep_choice, overflow_rules)
    block_ops = list(float16.DEFAULT_OP_BLOCK_LIST)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every constant it clamps to +-1e4 (masks)
        half = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=block_ops, node_block_list=sorted(plan), disable_shape_infer=big
        )
    del model
    restore_fp32_outputs(half)
    files = [Path(dst).name]
    big = sum(t.ByteSize() for t in half.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    if big:
        data = f"{Path(dst).name}.data"
        onnx.save_model(
            half, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024
        )
        files.append(data)
    else:
        onnx.save_model(half, str(dst))
    onnx.checker.check_model(str(dst), full_check=False)
    casts = sum(n.op_type == "Cast" for n in half.graph.node)
    return {"kept_fp32": plan, "files": files, "keep": keep_choice, "casts": casts}


def count_casts(path: Path) -> dict[str, int]:
    """{"casts": Cast nodes, "tensor_casts": those on tensors of rank >= 2} of the graph at `path`.

    Each fp32 island adds a Cast pair at its edges. Casts of scalars and shape vectors (attention scales
    computed from shapes, index arithmetic) cost TensorRT nothing; a Cast on an activation tensor is a
    kernel of its own and a fusion boundary (between attention's MatMul and Softmax it keeps TensorRT
    from fusing attention), so that is the count to keep small."""
    import onnx

    model = _infer(onnx.load(str(path), load_external_data=False))
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
    rank.update({v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.output})
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    return {"casts": len(casts), "tensor_casts": sum(rank.get(n.output[0], 2) >= 2 for n in casts)}


def fp16_share(path: Path) -> float:
    """Fraction of MatMul/Gemm/Conv nodes that compute in fp16 (what makes the engine fast)."""
    import onnx

    model = _infer(onnx.load(str(path), load_external_data=False))
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    heavy = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    half = [n for n in heavy if types.get(n.input[0]) == onnx.TensorProto.FLOAT16]
    return len(half) / max(len(heavy), 1)
