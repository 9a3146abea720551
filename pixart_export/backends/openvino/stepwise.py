"""int8 of the unrolled denoiser, calibrated one LCM step at a time on the one-step `transformer` graph.

Why not NNCF on the unrolled graph itself: NNCF calibrates by running the graph with its statistics
outputs, and OpenVINO's execution of that statistics model grows with the graph. On a 28-block stand-in
at 4096 tokens (1024 px) `nncf.quantize` of `denoiser_lcm4` peaked at 12.64 GiB against 1.91 GiB for a
plain inference, and observing only step 0 still took 11.82 GiB; the one-step graph quantised in 3.87
GiB (`benchmarks/results/int8_calibration_memory.md`). At PixArt-XL's width the unrolled calibration
was OOM-killed at 24.3 GiB (issue #21), so the 1024 px int8 build could not finish on a 24 GiB machine.

What this does instead: step k of the unrolled graph *is* the one-step graph at timestep t_k; the
exporter names its ops `/step.k` + the one-step graph's names (`export/wrappers.py`). So step k's int8
is NNCF's quantisation of the one-step graph calibrated on step k's inputs along the reference
trajectories (`calibration.collect`, the same prompts and seeds the unrolled calibration used), and
what NNCF added there (FakeQuantize on activations, int8 weights with their scales, SmoothQuant's
multiplies, FastBiasCorrection's biases) is moved onto step k of the unrolled fp32 graph. Each step
keeps its own activation scales, as whole-graph calibration gave it; a weight that comes out identical
for every step (no SmoothQuant) is one int8 constant shared by the K steps. Ops the unrolled graph
computes once for all steps (the caption projection, the prompt's cross-attention keys and values:
only `/step.0/...` exists) take step 0's quantisation, as they see the same input at every step.

The one-step graph also adds the ControlNet residuals (zeros here) before blocks 1..N; the unrolled
plain graph has no such adds, and they carry no quantiser. Everything else is matched by name and
checked by op type and attributes: a mismatch is an error, never a silently different graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

#: Node types that are values, not computations: never matched as ops, never moved as frontiers.
_LEAVES = ("Constant",)
_OPEN = ("Parameter",)
#: Readers of nothing but a shape (a quantiser does not change it) and the graph's outputs: left as they are.
_SHAPE_ONLY = ("ShapeOf", "Result")


class StepwiseError(RuntimeError):
    """The one-step graph's quantisation does not fit the unrolled graph (names, types or attributes)."""


@dataclass
class StepReport:
    """What was moved onto one step."""

    step: int
    activation_quantizers: int = 0
    weights_new: int = 0
    weights_shared: int = 0
    constants_changed: int = 0
    computed_once: list[str] = field(default_factory=list)  # changed ops only step 0 holds (hoisted)
    timestep_only: list[str] = field(default_factory=list)  # changed ops that read no input data there

    def as_dict(self) -> dict:
        return {
            "step": self.step,
            "activation_quantizers": self.activation_quantizers,
            "weights_new": self.weights_new,
            "weights_shared_with_an_earlier_step": self.weights_shared,
            "constants_changed": self.constants_changed,
            "computed_once_by_step_0": len(self.computed_once),
            "left_float_as_constant_in_the_unrolled_graph": len(self.timestep_only),
        }


def step_name(name: str, step: int) -> str:
    """The unrolled graph's name of a one-step op: `/transformer/x` -> `/step.2/transformer/x`."""
    return f"/step.{step}{name}"


def _constant_equal(a, b) -> bool:
    import numpy as np

    if a.get_output_element_type(0) != b.get_output_element_type(0):
        return False
    x, y = a.get_data(), b.get_data()
    return x.shape == y.shape and np.array_equal(x, y)


class _Mover:
    """Moves one quantised one-step graph's additions onto step `step` of `unrolled`."""

    def __init__(self, unrolled_ops: dict, fp32_step, shared: dict, step: int, on_data: set[str] | None = None):
        self.ops = unrolled_ops
        self.on_data = on_data if on_data is not None else set(unrolled_ops)
        self.ref = {op.get_friendly_name(): op for op in fp32_step.get_ops()}
        self.shared = shared  # digest of a pure-constant chain -> the Output already in the unrolled graph
        self.step = step
        self.attached: set[int] = set()
        self.report = StepReport(step)

    def _is_original(self, node) -> bool:
        return node.get_type_name() not in _LEAVES and node.get_friendly_name() in self.ref

    def _digest(self, out) -> str | None:
        """A digest of a subgraph made only of constants (a weight chain: int8 constant, Convert, scale
        Multiply); None if it reads any activation."""
        node = out.get_node()
        h = hashlib.blake2b(digest_size=20)
        h.update(f"{node.get_type_name()}:{out.get_index()}:{sorted(node.get_attributes().items())!r}".encode())
        if node.get_type_name() == "Constant":
            h.update(str(node.get_output_element_type(0)).encode())
            data = node.get_data()
            h.update(repr(data.shape).encode())
            h.update(memoryview(data.tobytes() if not data.flags.c_contiguous else data).cast("B"))
            return h.hexdigest()
        if self._is_original(node) or node.get_type_name() in _OPEN or node.get_input_size() == 0:
            return None
        for inp in node.inputs():
            d = self._digest(inp.get_source_output())
            if d is None:
                return None
            h.update(d.encode())
        return h.hexdigest()

    def _attach(self, node, frontier_name: str, frontier) -> None:
        """Rewire the new chain ending at `node` so that where it read the one-step graph's op
        `frontier_name` it reads `frontier` (the unrolled graph's same value); nodes renamed to the step."""
        if node.get_instance_id() in self.attached:
            return
        self.attached.add(node.get_instance_id())
        node.set_friendly_name(step_name(node.get_friendly_name(), self.step))
        for inp in node.inputs():
            src = inp.get_source_output()
            sn = src.get_node()
            if sn.get_type_name() in _LEAVES:
                continue
            if self._is_original(sn) or sn.get_type_name() in _OPEN:
                if sn.get_friendly_name() != frontier_name:
                    raise StepwiseError(
                        f"{node.get_friendly_name()} reads {sn.get_friendly_name()}, expected {frontier_name}"
                    )
                inp.replace_source_output(frontier)
            else:
                self._attach(sn, frontier_name, frontier)

    def move(self, quantised) -> StepReport:
        for op in quantised.get_ordered_ops():
            name = op.get_friendly_name()
            if op.get_type_name() in _LEAVES + _OPEN + _SHAPE_ONLY or name not in self.ref:
                continue
            f = self.ref[name]
            changed = []
            for port, inp in enumerate(op.inputs()):
                src, fsrc = inp.get_source_output(), f.input(port).get_source_output()
                sn, fn = src.get_node(), fsrc.get_node()
                if sn.get_type_name() == "Constant" and fn.get_type_name() == "Constant":
                    if not _constant_equal(sn, fn):
                        changed.append((port, "constant"))
                elif self._is_original(sn) or sn.get_type_name() in _OPEN:
                    if sn.get_friendly_name() != fn.get_friendly_name() or src.get_index() != fsrc.get_index():
                        raise StepwiseError(
                            f"{name} input {port}: reads {sn.get_friendly_name()}, fp32 graph reads "
                            f"{fn.get_friendly_name()}"
                        )
                else:
                    changed.append((port, "chain"))
            if not changed:
                continue
            target = self.ops.get(step_name(name, self.step))
            if target is None:
                if step_name(name, 0) in self.ops and self.step > 0:
                    self.report.computed_once.append(name)
                    continue
                raise StepwiseError(f"{name}: quantised in the one-step graph, absent from the unrolled graph")
            if step_name(name, self.step) not in self.on_data:
                # a value of the timestep alone in the unrolled graph (the adaLN embedding of the constant t_k):
                # NNCF leaves such shape-and-constant subgraphs float, and so does this
                self.report.timestep_only.append(name)
                continue
            if target.get_type_name() != op.get_type_name() or target.get_attributes() != op.get_attributes():
                raise StepwiseError(
                    f"{name}: {op.get_type_name()} in the one-step graph, "
                    f"{target.get_type_name()} (other attributes?) in the unrolled graph"
                )
            for port, kind in changed:
                self._replace(op, target, f, port, kind)
        return self.report

    def _replace(self, op, target, f, port: int, kind: str) -> None:
        src = op.input(port).get_source_output()
        old = target.input(port).get_source_output()
        if src.get_partial_shape().is_static and old.get_partial_shape().is_static:
            if src.get_partial_shape() != old.get_partial_shape():
                raise StepwiseError(
                    f"{op.get_friendly_name()} input {port}: {src.get_partial_shape()} would replace "
                    f"{old.get_partial_shape()}"
                )
        if kind == "constant":
            src.get_node().set_friendly_name(step_name(src.get_node().get_friendly_name(), self.step))
            target.input(port).replace_source_output(src)
            self.report.constants_changed += 1
            return
        digest = self._digest(src)
        if digest is not None:  # a weight chain: one copy for every step it is identical in
            if digest in self.shared:
                target.input(port).replace_source_output(self.shared[digest])
                self.report.weights_shared += 1
                return
            self._attach(src.get_node(), "", old)  # no frontier to meet
            self.shared[digest] = src
            target.input(port).replace_source_output(src)
            self.report.weights_new += 1
            return
        first = src.get_node().get_instance_id() not in self.attached
        self._attach(src.get_node(), f.input(port).get_source_output().get_node().get_friendly_name(), old)
        target.input(port).replace_source_output(src)
        self.report.activation_quantizers += int(first)


def data_dependent(model) -> set[str]:
    """Names of the ops whose values depend on the graph's input data. A ShapeOf's output depends only on a
    shape: in the unrolled graph the timestep of step k is the constant t_k broadcast to the batch (a shape),
    so its whole adaLN embedding folds to constants once shapes are static."""
    on_data: set[int] = set()
    names: set[str] = set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Parameter" or (
            kind not in ("ShapeOf", "Constant")
            and any(i.get_source_output().get_node().get_instance_id() in on_data for i in op.inputs())
        ):
            on_data.add(op.get_instance_id())
            names.add(op.get_friendly_name())
    return names


def quantize_unrolled(
    step_xml: Path,
    unrolled_xml: Path,
    xml_out: Path,
    samples_by_step: list[list[dict]],
    settings,
    work: Path,
    quantize_ir: Callable,
    log=lambda s: None,
) -> tuple[list[str], list[dict]]:
    """int8 `unrolled_xml` (fp32 IR of `denoiser_lcm{K}`) into `xml_out` (+ .bin), step k's quantisation
    being `quantize_ir(step_xml, out, samples_by_step[k], settings)` (`quantize.quantize_ir`: NNCF on the
    fp32 one-step graph); each step's one-step IR is written in `work` and removed. Returns the files
    written and a report per step."""
    import openvino as ov

    core = ov.Core()
    unrolled = core.read_model(str(unrolled_xml))
    fp32_step = core.read_model(str(step_xml))
    ops = {op.get_friendly_name(): op for op in unrolled.get_ops()}
    steps = len(samples_by_step)
    if not any(n.startswith(f"/step.{steps - 1}/") for n in ops) or any(n.startswith(f"/step.{steps}/") for n in ops):
        raise StepwiseError(f"{unrolled_xml.name}: not a {steps}-step unrolled graph")
    on_data = data_dependent(unrolled)
    shared: dict = {}
    reports = []
    for k, samples in enumerate(samples_by_step):
        q_xml = Path(work) / f".step{k}-{step_xml.name}"
        log(f"      step {k + 1}/{steps}: nncf.quantize of the one-step graph on {len(samples)} samples of step {k}")
        try:
            quantize_ir(step_xml, q_xml, samples, settings)
            quantised = core.read_model(str(q_xml))
            reports.append(_Mover(ops, fp32_step, shared, k, on_data).move(quantised).as_dict())
            del quantised
        finally:
            for f in (q_xml, q_xml.with_suffix(".bin")):
                f.unlink(missing_ok=True)
    unrolled.validate_nodes_and_infer_types()
    ov.save_model(unrolled, str(xml_out), compress_to_fp16=False)
    del unrolled, ops, shared
    return [xml_out.name, xml_out.with_suffix(".bin").name], reports
