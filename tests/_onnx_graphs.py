"""Small hand-made ONNX graphs for the precision and check tests (no export needed, milliseconds)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def f32(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def linear_residual(k=16, n=16, seed=0, scale=1.0):
    """y = x + (x @ W) * 0.5 + sin(t * 500): a linear layer on a residual stream and a timestep phase."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.2 * scale).astype(np.float32), "W")
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    freq = numpy_helper.from_array(np.array(500.0, np.float32), "freq")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="/block.0/ff/proj/MatMul"),
        helper.make_node("Mul", ["h", "half"], ["h2"], name="/block.0/ff/Mul"),
        helper.make_node("Add", ["x", "h2"], ["r"], name="/block.0/Add"),
        helper.make_node("Mul", ["t", "freq"], ["phase"], name="/time_proj/Mul"),
        helper.make_node("Sin", ["phase"], ["s"], name="/time_proj/Sin"),
        helper.make_node("Add", ["r", "s"], ["y"], name="/block.0/Add_1"),
    ]
    return model(nodes, [f32("x", "B", 8, k), f32("t", "B", 1, 1)], [f32("y", "B", 8, n)], [w, half, freq])


def feeds(batch=2, k=16, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((batch, 8, k)).astype(np.float32),
        "t": rng.uniform(0, 999, (batch, 1, 1)).astype(np.float32),
    }
