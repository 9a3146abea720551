"""bf16 graphs for TensorRT on sm >= 8.0 (trt-a100, trt-h100): the text encoder's precision plan there.

T5 v1.1 was trained in bf16, whose range is fp32's: the fp16 overflow of its feed-forward output (why
the fp16 graphs keep `wo` and the residual adds fp32) cannot happen, so the bf16 graph keeps only the
structural fp32 islands (normalisations, phase and index arithmetic: `fp16.KEEP_CHOICES[DEFAULT_KEEP]`)
and every weight is bf16: half of fp32's memory with no overflow exceptions.

Made from the fp16 conversion's structure (same islands, same Cast placement, `fp16.convert` without
the overflow rules), retyped fp16 -> bf16; the weights are rounded to bf16 from the fp32 originals
(round to nearest even, ml_dtypes), not from their fp16 copies.

onnxruntime's CPU provider has no bf16 kernels (MatMul, Add, Softmax... all NOT_IMPLEMENTED in 1.2x;
only Cast and LayerNormalization run), so the graph is verified by a faithful cast simulation
(`simulation`): the same graph with every bf16 tensor computed in fp32 and rounded to bf16 where the
bf16 graph stores it (a Cast to bf16 and back after every node whose output is bf16; weights hold their
bf16 values). That is bf16 *storage* rounding with fp32 arithmetic inside each op, the same fidelity as
the fp16 graphs' onnxruntime check; a GPU's bf16 GEMM accumulates in fp32 too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_FP32, _FP16, _BF16 = 1, 10, 16


def _bf16_tensor(name: str, values: np.ndarray):
    import ml_dtypes
    from onnx import helper

    raw = np.ascontiguousarray(np.asarray(values, np.float32).astype(ml_dtypes.bfloat16)).view(np.uint16).tobytes()
    return helper.make_tensor(name, _BF16, list(np.shape(values)), raw, raw=True)


def _retype_attr_tensor(attr, originals: dict) -> None:
    from onnx import numpy_helper

    t = attr.t
    if t.data_type == _FP16:
        values = numpy_helper.to_array(t).astype(np.float32)
        original = originals.get(t.name) if t.name else None  # Constant tensors are mostly unnamed
        if original is not None and original.shape == values.shape:
            values = original
        attr.t.CopyFrom(_bf16_tensor(t.name, values))


def convert(src: Path, dst: Path, graph_name: str) -> dict:
    """Write the bf16 graph of `src` (fp32) to `dst`; returns {"kept_fp32", "files", "keep", "casts"}."""
    import onnx
    from onnx import numpy_helper

    from . import fp16

    src, dst = Path(src), Path(dst)
    staged = dst.with_name(f".{dst.stem}.fp16.onnx")
    try:
        conv = fp16.convert(src, staged, graph_name, None, bound=float("inf"), overflow_rules=False)
        model = onnx.load(str(staged), load_external_data=True)
    finally:
        staged.unlink(missing_ok=True)
        (staged.parent / f"{staged.name}.data").unlink(missing_ok=True)
    source = onnx.load(str(src), load_external_data=True)
    originals = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    originals.update(
        {
            a.t.name: numpy_helper.to_array(a.t)
            for n in source.graph.node
            for a in n.attribute
            if a.type == a.TENSOR and a.t.name
        }
    )
    del source
    graph = model.graph
    inits = []
    for t in graph.initializer:
        if t.data_type == _FP16:
            values = originals.get(t.name)
            if values is None or values.shape != tuple(t.dims):
                values = numpy_helper.to_array(t).astype(np.float32)
            inits.append(_bf16_tensor(t.name, values))
        else:
            inits.append(t)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        if v.type.tensor_type.elem_type == _FP16:
            v.type.tensor_type.elem_type = _BF16
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == _FP16:
                a.i = _BF16
            elif a.type == a.TENSOR:
                _retype_attr_tensor(a, originals)
    onnx.save_model(model, str(dst))
    onnx.checker.check_model(str(dst), full_check=False)
    return {**conv, "files": [dst.name], "casts": sum(n.op_type == "Cast" for n in graph.node)}


def simulation(path: Path):
    """The bf16 graph at `path` as an fp32 graph onnxruntime runs: bf16 weights as their fp32 values,
    every bf16 tensor rounded to bf16 (Cast to bf16 and back) right after the node that makes it."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    bf16_values = {v.name for v in graph.value_info if v.type.tensor_type.elem_type == _BF16}
    inits = []
    for t in graph.initializer:
        if t.data_type == _BF16:
            inits.append(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
        else:
            inits.append(t)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    nodes = []
    for node in graph.node:
        for a in node.attribute:
            if a.type == a.TENSOR and a.t.data_type == _BF16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
        cast_to_bf16 = node.op_type == "Cast" and any(a.name == "to" and a.i == _BF16 for a in node.attribute)
        if cast_to_bf16:
            for a in node.attribute:
                if a.name == "to":
                    a.i = _FP32
        nodes.append(node)
        for i, out in enumerate(node.output):
            if out in bf16_values or cast_to_bf16:
                pre, mid = f"{out}__fp32", f"{out}__bf16"
                node.output[i] = pre
                nodes.append(helper.make_node("Cast", [pre], [mid], to=_BF16, name=f"{node.name}/round_bf16"))
                nodes.append(helper.make_node("Cast", [mid], [out], to=_FP32, name=f"{node.name}/back_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        if v.type.tensor_type.elem_type == _BF16:
            v.type.tensor_type.elem_type = _FP32
    del graph.value_info[:]  # re-inferred by onnxruntime
    return model
