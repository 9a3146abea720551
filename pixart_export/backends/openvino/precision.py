"""bf16 for the float ops of an int8 graph, per op group, chosen by measurement (issue #22, item 3).

An NNCF int8 graph still computes most of its ops in floating point: attention (OpenVINO fuses it
into `ScaledDotProductAttention`), the normalisations (`MVN`), the MatMuls NNCF left float (outside
the blocks, `quantize.OUTSIDE_BLOCKS`), the outputs of the int8 MatMuls, and the elementwise rest
(adaLN modulation, GELU, the LCM update arithmetic). On a CPU with AVX-512 BF16 or AMX the CPU plugin
runs all of them in bf16 when a graph is compiled with `INFERENCE_PRECISION_HINT=bf16`; with `f32` none.

In between: OpenVINO keeps a node in its original precision under a lower inference precision when
the node carries the runtime-info attribute `ov::DisableFP16Compression` (set as "precise_0"; the IR
stores it as `DisablePrecisionConversion`, read back under that name; the CPU plugin honours it for
bf16 as for f16: openvinotoolkit/openvino#21440, and `tests/test_openvino_precision.py` checks it on
the IR as read back). So a graph can run bf16 for some op groups and f32 for the rest: compile it with the
bf16 hint and mark every op of the groups that stay f32 (`mark`). Data-movement ops (Reshape,
Transpose, ...) whose input comes from a marked op are marked too, so an f32 region is not rounded to
bf16 on its way through them.

The choice (`choose`), on the unrolled denoiser with held-out calibration samples, against the fp32
graph, beside the int8 graph with every float op f32 (its error `e_f32`, its time `t_f32`):
1. each group alone in bf16 (the others marked): its error and median time;
2. groups added greedily, the least error first; a group is kept where the set's error stays within
   `ERROR_BUDGET` x `e_f32` (bf16 may add at most 10% to the int8 error: the rule the build applied to
   "all or nothing" before) and the set meets the graph's int8 gate on the verify stage's fixed inputs
   (`fixed_check`); the set kept must then be faster than all-f32 (interleaved timing, medians),
   otherwise no group runs bf16.
The manifest's `quantisation.graphs[file].bf16_ops` keeps every figure, the groups chosen, and the
operations the compiled graph actually runs in bf16 (read back from the CPU plugin's runtime model).

Measured (2-core AMD EPYC, AVX-512 BF16, no AMX; openvino 2026.4; shared machine):
- trained tiny, unrolled int8 denoiser, 2 held-out prompts, rel L2 vs fp32 (all float ops f32: 0.0688):
  bf16 normalisation alone 0.0528, elementwise alone 0.0632, attention / float MatMuls / int8 MatMul
  outputs alone 0.0725 each, with the same 144 executed nodes in bf16: those marks changed nothing the
  plugin ran (its ScaledAttn runs f32 here whatever the hint, and 144 nodes, among them 18
  FullyConnected and 48 fused Subgraphs, run bf16 under the bf16 hint marked or not). Every group fitted
  the budget, but bf16 for the least-error group set measured 0.117 on the fixed inputs (gate 0.1): the
  graph stays f32.
- XL int8 step (512 px, 1024 tokens, random weights, batch 1, `benchmarks/xl_cpu_settings.py`): bf16 for
  every float op 1.28x faster than f32 at 4.4e-2 rel L2 against the f32 step; elementwise alone 1.24x at
  the same 4.4e-2: the time and the error are both the elementwise group's (adaLN modulation, GELU,
  residual adds), ~25x the int8 step's own error against fp32 (1.8e-3 on the XL stand-in's calibration
  inputs, README), so the budget would reject it there too (not measured by a full XL build).

On a CPU without native bf16 none of this runs: the graph is compiled `f32` and carries no marks, as
before (`runner.runnable_precision` would turn a recorded bf16 into f32 there anyway).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

#: The runtime-info key of `ov::DisableFP16Compression` ("precise", version "0") as it is set; the IR stores
#: it as the attribute `DisablePrecisionConversion` (version 0), the key it has when the IR is read back.
PRECISE = "precise_0"
READ_BACK = "DisablePrecisionConversion_0"


def is_marked(op) -> bool:
    """Whether `op` carries the mark, set here or read from an IR."""
    rt = op.get_rt_info()
    return PRECISE in rt or READ_BACK in rt


#: The op groups, in the order they are reported.
GROUPS = ("attention", "normalisation", "float_matmuls", "int8_matmul_outputs", "elementwise")
#: The bf16 groups may add at most this factor to the int8 graph's error against fp32 (held-out samples).
ERROR_BUDGET = 1.10
#: Ops that only move or reshape data: marked when their data input is, never a group of their own.
MOVEMENT = frozenset(
    ("Reshape", "Transpose", "Unsqueeze", "Squeeze", "Concat", "Slice", "StridedSlice", "Gather", "Broadcast", "Tile")
)
#: Ops never marked: graph ends, constants, precision changes, quantisation, shape arithmetic.
NEVER = frozenset(("Parameter", "Result", "Constant", "Convert", "FakeQuantize", "ShapeOf", "Range"))


def _constant_path(output) -> bool:
    """Whether a value is computed from constants only (weights and their int8 decompression)."""
    stack, seen = [output.get_node()], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = node.get_type_name()
        if kind == "Constant":
            continue
        if kind in ("Parameter", "FakeQuantize") or node.get_input_size() == 0:
            return False
        stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return True


def _int8_weights(output) -> bool:
    """Whether a constant-path value holds int8 weights (an i8/u8 Constant behind their decompression)."""
    node = output.get_node()
    while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape", "Transpose"):
        if node.get_type_name() == "Convert":
            source = node.input_value(0)
            return source.get_element_type().get_type_name() in ("i8", "u8")
        node = node.input_value(0).get_node()
    return False


def op_group(op) -> str | None:
    """The group of one op of an int8 graph; None for ops that are never marked or only move data."""
    kind = op.get_type_name()
    if kind in NEVER or kind in MOVEMENT or not op.get_output_size():
        return None
    if not op.get_output_element_type(0).is_real():
        return None  # shape and index arithmetic
    inputs = [op.input_value(i) for i in range(op.get_input_size())]
    if all(_constant_path(v) for v in inputs):
        return None  # weights and their decompression: folded by the plugin
    if kind in ("ScaledDotProductAttention", "Softmax"):
        return "attention"
    if kind == "MatMul":
        weights = [v for v in inputs if _constant_path(v)]
        if not weights:
            return "attention"  # activation x activation: Q.K^T, P.V where not fused
        return "int8_matmul_outputs" if _int8_weights(weights[0]) else "float_matmuls"
    if kind in ("MVN", "NormalizeL2", "GroupNormalization", "LayerNormalization"):
        return "normalisation"
    return "elementwise"


def groups_of(model) -> dict[str, int]:
    """How many ops of `model` each group holds."""
    counts = Counter(op_group(op) for op in model.get_ordered_ops())
    return {g: counts.get(g, 0) for g in GROUPS}


def mark(model, bf16_groups) -> int:
    """Marks every op outside `bf16_groups` (and the data movement fed by a marked op) to stay f32 under a
    bf16 inference precision; clears the marks of the rest. Returns the number of ops marked."""
    keep_bf16 = set(bf16_groups)
    unknown = keep_bf16 - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown op groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    marked: set[str] = set()
    for op in model.get_ordered_ops():  # topological: a movement op's producer is decided before it
        group, kind = op_group(op), op.get_type_name()
        if group is not None:
            precise = group not in keep_bf16
        elif kind in MOVEMENT and op.get_input_size():
            precise = op.input_value(0).get_node().get_friendly_name() in marked
        else:
            precise = False
        rt = op.get_rt_info()
        if precise:
            rt[PRECISE] = ""
            marked.add(op.get_friendly_name())
        else:
            for key in (PRECISE, READ_BACK):
                if key in rt:
                    del rt[key]
    return len(marked)


def write_marked(xml_in: Path, xml_out: Path, bf16_groups) -> int:
    """`xml_in` with the marks of `mark(bf16_groups)`, saved as `xml_out` (+ .bin); the number of ops marked."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_in))
    count = mark(model, bf16_groups)
    ov.save_model(model, str(xml_out), compress_to_fp16=False)
    return count


def runtime_precisions(compiled) -> dict[str, dict[str, int]]:
    """{runtime precision: {layer type: count}} of a compiled model's executed nodes (what the CPU plugin
    chose; reorders and inputs/outputs left out)."""
    out: dict[str, Counter] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        layer = rt["layerType"].astype(str)
        if layer in ("Input", "Output", "Reorder", "Convert"):
            continue
        out.setdefault(rt["runtimePrecision"].astype(str), Counter())[layer] += 1
    return {p: dict(sorted(c.items())) for p, c in sorted(out.items())}


class _Scorer:
    """Error against fp32 outputs (computed once) and median latency of graph variants."""

    def __init__(self, reference_xml: Path, samples: list[dict]):
        import openvino as ov

        from .runner import compile_config, compile_graph, run_compiled

        self.core = ov.Core()
        self.samples = samples
        ref = compile_graph(reference_xml, compile_config("f32"), self.core)
        self.want = [run_compiled(ref, feeds)[0] for feeds in samples]
        del ref

    def compile(self, xml: Path, precision: str):
        from .runner import compile_config, compile_graph

        return compile_graph(xml, compile_config(precision), self.core)

    def error(self, compiled) -> float:
        from ...metrics import rel_l2
        from .runner import run_compiled

        return float(np.mean([rel_l2(run_compiled(compiled, f)[0], w) for f, w in zip(self.samples, self.want)]))

    def seconds(self, compiled_models: list, repeats: int) -> list[float]:
        """Median seconds of one run of each model over the samples, the models interleaved."""
        from .runner import run_compiled

        times: list[list[float]] = [[] for _ in compiled_models]
        for _ in range(repeats):
            for i, compiled in enumerate(compiled_models):
                t0 = time.perf_counter()
                for feeds in self.samples:
                    run_compiled(compiled, feeds)
                times[i].append(time.perf_counter() - t0)
        return [statistics.median(t) for t in times]


def choose(
    xml: Path,
    reference_xml: Path,
    samples: list[dict],
    fixed_check: Callable[[Path], tuple[float, float]],
    log: Callable[[str], None],
    repeats: int = 3,
) -> dict:
    """Chooses the bf16 op groups of the int8 graph `xml` (rewritten in place with the marks) against its
    fp32 form `reference_xml` on held-out `samples`. `fixed_check(xml)` -> (rel L2 with the bf16 hint on
    the verify stage's fixed inputs, that graph's int8 tolerance), asked for each set of groups the greedy
    step would keep. Returns the manifest record; its
    "inference_precision" is "bf16" where some groups were chosen, else "f32" (and `xml` then carries no
    marks)."""
    import openvino as ov

    scorer = _Scorer(reference_xml, samples)
    counts = groups_of(ov.Core().read_model(str(xml)))
    groups = [g for g in GROUPS if counts[g]]
    variant = xml.with_name(f".bf16-variant-{xml.name}")
    try:
        f32 = scorer.compile(xml, "f32")
        e_f32 = scorer.error(f32)
        rows = {}
        for g in groups:
            write_marked(xml, variant, [g])
            got = scorer.compile(variant, "bf16")
            rows[g] = {
                "ops": counts[g],
                "rel_l2": scorer.error(got),
                "bf16_nodes": sum(runtime_precisions(got).get("bf16", {}).values()),
            }
            log(
                f"      bf16 {g} alone ({counts[g]} ops, {rows[g]['bf16_nodes']} nodes run bf16): rel L2 "
                f"{rows[g]['rel_l2']:.4f} (all f32 {e_f32:.4f})"
            )
            del got
        chosen: list[str] = []
        error, fixed = e_f32, None
        budget = ERROR_BUDGET * e_f32
        trials = []
        for g in sorted(groups, key=lambda g: rows[g]["rel_l2"]):
            if rows[g]["rel_l2"] > budget:
                continue
            write_marked(xml, variant, chosen + [g])
            trial = {"groups": chosen + [g], "rel_l2": scorer.error(scorer.compile(variant, "bf16"))}
            if trial["rel_l2"] <= budget:
                trial["fixed_inputs_rel_l2"], tolerance = fixed_check(variant)
                trial["accepted"] = trial["fixed_inputs_rel_l2"] <= tolerance
            else:
                trial["accepted"] = False
            trials.append(trial)
            log(
                f"      bf16 {' + '.join(trial['groups'])}: rel L2 {trial['rel_l2']:.4f} (budget {budget:.4f})"
                + (f", fixed inputs {trial['fixed_inputs_rel_l2']:.4f}" if "fixed_inputs_rel_l2" in trial else "")
                + (" -> kept" if trial["accepted"] else " -> not kept")
            )
            if trial["accepted"]:
                chosen.append(g)
                error, fixed = trial["rel_l2"], trial["fixed_inputs_rel_l2"]
        record = {
            "mechanism": f"INFERENCE_PRECISION_HINT=bf16; rt_info {PRECISE!r} (ov::DisableFP16Compression) on the "
            "ops that stay f32",
            "groups": rows,
            "f32_rel_l2": e_f32,
            "budget_rel_l2": budget,
            "trials": trials,
            "chosen": chosen,
        }
        why = None
        if chosen:
            write_marked(xml, variant, chosen)
            got = scorer.compile(variant, "bf16")
            scorer.seconds([f32, got], 1)  # warm-up: the first runs allocate
            t_f32, t_bf16 = scorer.seconds([f32, got], repeats)
            record.update(rel_l2=error, fixed_inputs_rel_l2=fixed, seconds=t_bf16, f32_seconds=t_f32)
            if t_bf16 >= t_f32:
                why = f"bf16 for {', '.join(chosen)} was not faster ({t_bf16:.3f} s vs {t_f32:.3f} s f32)"
            else:
                record["runs_bf16"] = runtime_precisions(got)
            del got
        else:
            why = (
                f"no op group in bf16 stayed within {ERROR_BUDGET:.2f}x the all-f32 int8 error on held-out samples "
                "and within the int8 gate on the parity's fixed inputs"
            )
        if why:
            # `xml` itself was never rewritten: it stays the graph as quantised, without marks
            record.update(chosen=[], inference_precision="f32", why=f"f32 for every float op: {why} (measured)")
        else:
            for ext in (".xml", ".bin"):
                variant.with_suffix(ext).replace(xml.with_suffix(ext))
            record.update(
                inference_precision="bf16",
                why=f"bf16 for {', '.join(chosen)}: within {ERROR_BUDGET:.2f}x the all-f32 int8 error on held-out "
                "samples, faster, and within the int8 gate on the parity's fixed inputs (measured); the other "
                "groups' ops are marked to stay f32",
            )
        return record
    finally:
        for ext in (".xml", ".bin"):
            variant.with_suffix(ext).unlink(missing_ok=True)
