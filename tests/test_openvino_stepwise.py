"""`stepwise.py`: the unrolled denoiser's int8 moved step by step from the one-step graph's NNCF
quantisation, on tiny's fp32 IR (the whole-graph NNCF calibration it replaces is the comparison)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

from tests._openvino_engine import tiny_model

ov = pytest.importorskip("openvino")


@functools.lru_cache(maxsize=None)
def _ir(folder: Path) -> dict[str, Path]:
    """fp32 IR of tiny's one-step and unrolled graphs (from the session's shared export)."""
    from tests._exports import fp32_export

    out = {}
    for graph in ("transformer", "denoiser_lcm4"):
        out[graph] = folder / f"{graph}.xml"
        ov.save_model(
            ov.convert_model(str(fp32_export() / f"{graph}_128x128.onnx")), str(out[graph]), compress_to_fp16=False
        )
    return out


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    return _ir(tmp_path_factory.mktemp("stepwise-ir"))


@pytest.fixture(scope="module")
def samples():
    from pixart_export.backends.openvino.quantize import _calibrate

    options = {
        "calibration_prompts": ["a red circle", "a blue square above a green triangle", "a yellow star", "a cat"],
        "transformer_prompts": 2,
        "denoiser_prompts": 2,
        "held_out_prompts": 1,
    }
    return _calibrate(tiny_model(), options, (128, 128), 4, log=lambda m: None)


def _fq_highs(xml: Path) -> dict[str, float]:
    """{activation quantiser name: its input_high} of an IR."""
    graph = ov.Core().read_model(str(xml))
    return {
        op.get_friendly_name(): float(np.max(op.input_value(2).get_node().get_data()))
        for op in graph.get_ops()
        if op.get_type_name() == "FakeQuantize"
    }


def test_stepwise_matches_whole_graph_calibration(ir, samples, tmp_path):
    """Same settings, same trajectories: the stepwise graph's error against fp32 is within the int8 gate and
    close to NNCF's whole-graph calibration of the unrolled graph; every step has quantisers of its own,
    with its own scales; the int8 weights are stored once for the K steps; the graph compiles at the
    parity's static shapes.

    Tolerance: `verify.tolerance("denoiser_lcm4", INT8)` (0.1 rel L2, the build's gate for the graph). The
    comparison with the whole-graph calibration (within 1.5x + 0.01 of it) is what says the moved
    quantisers sit where NNCF puts them: misplaced or missing ones give errors several times larger
    (SmoothQuant's misfit on tiny is 0.36 against 0.05: `quantize.CANDIDATES`).

    The settings quantise the adaLN MLP (the build's first candidate otherwise): in the one-step graph its timestep is
    an input; in the unrolled graph it reads only the constant t_k broadcast to the batch, which NNCF leaves
    float and OpenVINO folds once shapes are static. Moving those quantisers made the graph fail to compile
    at static shapes ("m_element_type.is_static()"); they stay float, as whole-graph NNCF leaves them."""
    from pixart_export.backends.openvino.quantize import CANDIDATES, STEPWISE, QuantSettings, quantize_ir, score
    from pixart_export.backends.openvino.stepwise import quantize_unrolled
    from pixart_export.manifest import Precision
    from pixart_export.verify import tolerance

    train, held = samples
    # the build's first candidate with the adaLN MLP taken out of its float scope
    shipped = CANDIDATES[0]
    floats = tuple(p for p in shipped.ignored_patterns if "adaln" not in p)
    assert len(floats) == len(shipped.ignored_patterns) - 1
    settings = QuantSettings("adaln-int8", shipped.smooth_quant_alpha, floats)
    by_step = train[STEPWISE.format("denoiser_lcm4")]
    assert [len(s) for s in by_step] == [2, 2, 2, 2]
    assert [float(s[0]["timestep"][0]) for s in by_step] == [999.0, 759.0, 499.0, 259.0]
    files, reports = quantize_unrolled(
        ir["transformer"], ir["denoiser_lcm4"], tmp_path / "stepwise.xml", by_step, settings, tmp_path, quantize_ir
    )
    assert files == ["stepwise.xml", "stepwise.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stepwise.bin", "stepwise.xml"]  # no step IR left
    quantize_ir(ir["denoiser_lcm4"], tmp_path / "whole.xml", train["denoiser_lcm4"], settings)
    got = score(tmp_path / "stepwise.xml", ir["denoiser_lcm4"], held["denoiser_lcm4"])["rel_l2_mean"]
    whole = score(tmp_path / "whole.xml", ir["denoiser_lcm4"], held["denoiser_lcm4"])["rel_l2_mean"]
    assert got < tolerance("denoiser_lcm4", Precision.INT8).rel_l2
    assert got <= 1.5 * whole + 0.01, (got, whole)

    assert [r["step"] for r in reports] == [0, 1, 2, 3]
    assert all(r["activation_quantizers"] > 0 for r in reports)
    assert reports[0]["weights_new"] > 0 and reports[0]["computed_once_by_step_0"] == 0
    # no SmoothQuant: steps 1-3 reuse step 0's int8 weights; the prompt's cross-attention keys/values are
    # computed once (by step 0) in the unrolled graph; the adaLN MLP of t_k stays float at every step
    assert all(r["weights_new"] == 0 and r["weights_shared_with_an_earlier_step"] > 0 for r in reports[1:])
    assert all(r["computed_once_by_step_0"] > 0 for r in reports[1:])
    assert all(r["left_float_as_constant_in_the_unrolled_graph"] > 0 for r in reports)
    size, whole_size = (tmp_path / "stepwise.bin").stat().st_size, (tmp_path / "whole.bin").stat().st_size
    assert size <= 1.02 * whole_size

    highs = _fq_highs(tmp_path / "stepwise.xml")
    steps = {int(m.group(1)) for n in highs if (m := re.match(r"/step\.(\d)/", n))}
    assert steps == {0, 1, 2, 3}
    assert not any("/adaln_single/" in n for n in highs)
    # each step's scales are its own: the same quantiser differs between the first and the last step
    name = next(n for n in highs if n.startswith("/step.3/transformer/transformer_blocks.1/"))
    assert highs[name] != highs[name.replace("/step.3/", "/step.0/", 1)]

    core = ov.Core()
    graph = core.read_model(str(tmp_path / "stepwise.xml"))
    static = {
        p.get_any_name(): [2 if d.is_dynamic else d.get_length() for d in p.get_partial_shape()] for p in graph.inputs
    }
    graph.reshape({name: ov.PartialShape(shape) for name, shape in static.items()})
    core.compile_model(graph, "CPU")


def test_a_graph_that_is_not_the_unrolled_one_is_refused(ir, samples, tmp_path):
    from pixart_export.backends.openvino.quantize import CANDIDATES, STEPWISE, quantize_ir
    from pixart_export.backends.openvino.stepwise import StepwiseError, quantize_unrolled

    train, _ = samples
    by_step = train[STEPWISE.format("denoiser_lcm4")]
    for unrolled, given, count in ((ir["transformer"], by_step, 4), (ir["denoiser_lcm4"], by_step[:3], 3)):
        with pytest.raises(StepwiseError, match=f"not a {count}-step unrolled graph"):
            quantize_unrolled(
                ir["transformer"], unrolled, tmp_path / "x.xml", given, CANDIDATES[0], tmp_path, quantize_ir
            )
    assert not list(tmp_path.iterdir())
