"""The TensorRT bundles' text-encoder graph for a T5 too large for the fp32 export (T5-XXL: 17.7 GiB in
fp32), made block by block in the precision of the target's T5 plan (`t5_plan.py`) and never held whole.

Why: the fp32 ONNX export traces the resident fp32 model and holds about 2.3x its weights
(`benchmarks/results/export_xl.md`; ~41 GiB for T5-XXL), and `fp16.convert` / `bf16.convert` load a
whole graph. Here every step works on one block (0.8 GB in fp32 at XXL width), so the peak is a few
times one block's weights (its trace, its onnxruntime range session, its conversion) plus the kept
reference activations, whatever the number of layers (measured: 7.15 GiB at full size, in block 0;
`tests/test_tensorrt_t5_blockwise.py` checks that it does not grow with the layers):

1. pieces (`pieces`): the encoder as 2 + N small fp32 graphs traced from transformers' own modules of
   the streamed reference (`reference/t5_streamed.py`): `head` (input_ids, attention_mask -> the token
   embeddings and the attention bias: the relative position bias combined with the padding mask exactly
   as T5's attention combines them, `_combine`), `block.i` (hidden, bias -> hidden; block i's weights
   read from the files for its trace only) and `tail` (the final RMSNorm -> prompt_embeds). Node names
   are the exported graph's (`/text_encoder/encoder/block.3/layer.1/DenseReluDense/wo/MatMul`), so the
   precision rules that match names (`fp16.KNOWN_OVERFLOW`: `wo` and the residual adds; the norm scope)
   apply as they do to an exported T5.
2. measured ranges (fp16 plan, rule 4 of `fp16.py`): the streamed reference runs the calibration
   prompts with forward pre-hooks on its blocks and final norm that keep each piece's fp32 inputs; each
   fp32 piece then runs on them (`fp16.activation_ranges`), which gives every value of the piece its
   measured maximum, layer by layer, from one block's graph at a time: no fp32 graph of the model.
3. each piece is converted by the code that converts an exported graph (`fp16.convert`, with the
   piece's ranges, or `bf16.convert`; fp32 as traced for a fallback) and appended to the one
   `text_encoder` graph (`_Assembly`): values renamed, every weight written to the graph's external-data
   file as the piece is appended, so the graph proto holds no weight and the process one piece at a time.
   Between pieces the hidden state is an fp32 graph value (`keep_io_types` of the converter; in the fp16
   plan the residual adds producing it are fp32 anyway); the fp16 Cast of the shared attention bias is
   made once, not once per block (`_dedupe_casts`).
4. verification (`verify`): the graph as written, piece by piece (each extracted from the file with
   `onnx.utils.Extractor`, reading only its own weights), chained (each piece reads the previous
   prepared piece's output), against the streamed fp32 reference on the held-out prompts: the
   prompt-embedding relative L2 of the whole prepared encoder, gated by `verify.TOLERANCES`, and the
   hidden state's error after every block. Chained pieces rather than one session because onnxruntime's
   CPU provider runs fp16 MatMuls through fp32 copies of their weights (19 GiB for XXL) and has no bf16
   kernels (bf16 pieces run as their `bf16.simulation`: fp32 weights again); the chain computes exactly
   what the whole graph computes, since the pieces' boundaries are graph values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...manifest import Precision

#: external tensors start on a page boundary (so a loader may map them); tensors below this stay in the proto
ALIGN = 4096
INLINE_BELOW = 1024
SCOPE = "/text_encoder/encoder"
#: the graph values between pieces
HIDDEN = "t5.hidden.{}"
BIAS = "t5.attention_bias"
HOW = (
    "exported directly, block by block from the weights (backends/tensorrt/t5_blockwise.py): the fp32 "
    "export would hold ~2.3x the fp32 weights"
)
VERIFIED_BY = (
    "chained pieces in onnxruntime (head, each block, final norm, extracted from the written graph) "
    "against the streamed fp32 reference (reference/t5_streamed.py)"
)


@dataclass
class Piece:
    """One piece of the encoder: `tag` names it ("head", "block.3", "tail")."""

    tag: str
    inputs: list[str]  # its input names in the assembled graph
    outputs: list[str]


def pieces(num_layers: int) -> list[Piece]:
    out = [Piece("head", ["input_ids", "attention_mask"], [HIDDEN.format(0), BIAS])]
    out += [Piece(f"block.{i}", [HIDDEN.format(i), BIAS], [HIDDEN.format(i + 1)]) for i in range(num_layers)]
    return out + [Piece("tail", [HIDDEN.format(num_layers)], ["prompt_embeds"])]


# -- torch modules whose traces are the pieces -----------------------------------------------------------------
def _combine(config, bias, mask, embeds):
    """The additive attention bias of every layer: relative position bias + padding mask, as transformers'
    T5 attention makes it (sdpa: `create_position_bias_mask`, masked entries the dtype's minimum; eager:
    bias + the float mask), so a block run with it as `position_bias` and no mask computes what the
    reference's block computes."""
    impl = config._attn_implementation
    if impl == "sdpa":
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        return create_position_bias_mask(bias, mask, False, embeds, embeds)
    if impl == "eager":
        return bias if mask is None else bias + mask
    raise ValueError(f"T5 attention implementation {impl!r}: the block-wise export knows sdpa and eager")


def _modules(streamed):
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    config = streamed.model.encoder.config

    class RelativeBias(torch.nn.Module):
        """Block 0's relative position bias, by transformers' own `T5Attention.compute_bias`."""

        compute_bias = T5Attention.compute_bias
        _relative_position_bucket = staticmethod(T5Attention._relative_position_bucket)

        def __init__(self, weight):
            super().__init__()
            self.is_decoder = False
            self.relative_attention_num_buckets = config.relative_attention_num_buckets
            self.relative_attention_max_distance = config.relative_attention_max_distance
            self.relative_attention_bias = torch.nn.Embedding.from_pretrained(weight, freeze=True)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = streamed.model.shared  # the reference's own table, not a copy
            name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            self.relative_bias = RelativeBias(streamed._read(name))

        def forward(self, input_ids, attention_mask):
            from transformers.masking_utils import create_bidirectional_mask

            embeds = self.embed_tokens(input_ids)
            mask = create_bidirectional_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask)
            length = input_ids.shape[1]
            bias = self.relative_bias.compute_bias(length, length, device=embeds.device)
            return embeds, _combine(config, bias, mask, embeds).expand(input_ids.shape[0], -1, -1, -1)

    class Block(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, hidden_states, attention_bias):
            return self.block(hidden_states, None, attention_bias)[0]

    class Tail(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.final_layer_norm = streamed.model.encoder.final_layer_norm

        def forward(self, hidden_states):
            return self.final_layer_norm(hidden_states)

    return Head, Block, Tail


def _block(streamed, i: int):
    """Block i of the streamed T5 with its fp32 weights read from the files: a new `T5Block` of the same
    config, not the reference's own module, whose hooks load and drop weights around each call (a trace
    would record them)."""
    import torch
    from transformers.models.t5.modeling_t5 import T5Block

    with torch.device("meta"):
        block = T5Block(streamed.model.encoder.config, has_relative_attention_bias=i == 0, layer_idx=i).eval()
    streamed._materialise(block, f"encoder.block.{i}.")
    return block


def _trace(module, args, input_names, output_names, path: Path) -> None:
    import torch

    from ...graphs import OPSET

    axes = {n: {0: "B"} for n in input_names + output_names}
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _name_piece(path: Path, tag: str, strip: str) -> None:
    """Give a traced piece the exported graph's node names (`/block/layer.0/...` ->
    `/text_encoder/encoder/block.3/layer.0/...`) and names unique in the assembled graph: values
    `<tag>.v<n>`, weights `text_encoder.encoder.<tag>.<where>`."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    graph = model.graph
    scope = f"{SCOPE}/{tag}" if tag.startswith("block.") else SCOPE
    for node in graph.node:
        name = node.name if node.name.startswith("/") else f"/{node.name}"
        if strip and name.startswith(f"/{strip}/"):
            name = name[len(strip) + 1 :]
        node.name = scope + name
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    inits = {t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    dotted = "text_encoder.encoder." + (f"{tag}." if tag.startswith("block.") else "")
    for node in graph.node:
        for name in node.input:
            if name in inits and name not in rename:
                if name.startswith("onnx::"):  # a weight the tracer transposed: named after its consumer
                    where = node.name[len(SCOPE) + 1 :].replace("/", ".")
                    rename[name] = f"text_encoder.encoder.{where}.weight_t"
                else:
                    rename[name] = dotted + (name[len(strip) + 1 :] if strip and name.startswith(strip + ".") else name)
        for out in node.output:
            if out and out not in keep:
                rename[out] = f"{tag}.v{len(rename)}"
    for t in graph.initializer:
        t.name = rename.get(t.name, t.name)
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for v in graph.value_info:
        v.name = rename.get(v.name, v.name)
    onnx.save_model(model, str(path))


# -- the reference's piece inputs --------------------------------------------------------------------------------
def reference_inputs(streamed, feeds_list: list[dict]) -> tuple[list[list[np.ndarray]], list[np.ndarray], list]:
    """Run the streamed fp32 reference once over all feeds (one batch: the streamed model reads its
    weights from disk on every call, 17.7 GiB for XXL) with pre-hooks on its blocks and final norm:
    ([block i, then the final norm -> [its input hidden state per feed]], [prompt embeddings per feed],
    [attention bias per feed]): what each piece reads in the reference, computed by the reference."""
    import torch

    encoder = streamed.model.encoder
    n = len(encoder.block)
    captured: list[np.ndarray | None] = [None] * (n + 1)

    def keep(i):
        def hook(module, args):
            captured[i] = args[0].detach().numpy().copy()

        return hook

    hooks = [block.register_forward_pre_hook(keep(i)) for i, block in enumerate(encoder.block)]
    hooks.append(encoder.final_layer_norm.register_forward_pre_hook(keep(n)))
    Head, _, _ = _modules(streamed)
    ids, mask = (torch.from_numpy(np.concatenate([f[k] for f in feeds_list])) for k in ("input_ids", "attention_mask"))
    try:
        with torch.no_grad():
            out = streamed.model(input_ids=ids, attention_mask=mask)[0].numpy()
            bias = Head().eval()(ids, mask)[1].numpy()
    finally:
        for h in hooks:
            h.remove()
    edges = np.cumsum([0] + [len(f["input_ids"]) for f in feeds_list])

    def split(a: np.ndarray) -> list[np.ndarray]:
        return [a[lo:hi] for lo, hi in zip(edges[:-1], edges[1:])]

    return [split(c) for c in captured], split(out), split(bias)


# -- assembly ----------------------------------------------------------------------------------------------------
class _Assembly:
    """The `text_encoder` graph being written: nodes and weight references in memory, weights on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data_name = f"{self.path.name}.data"
        self.data = open(self.path.with_name(self.data_name), "wb")
        self.nodes, self.initializers, self.value_info = [], [], []
        self.opset, self.ir_version = None, None
        self.inputs, self.outputs = [], []

    def _external(self, tensor) -> None:
        import onnx
        from onnx import numpy_helper
        from onnx.external_data_helper import set_external_data

        raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
        if len(raw) < INLINE_BELOW:
            return
        offset = self.data.tell()
        pad = (-offset) % ALIGN
        self.data.write(b"\0" * pad)
        self.data.write(raw)
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
        tensor.raw_data = raw  # onnx's helper marks only a tensor with raw data; the bytes are on disk now
        set_external_data(tensor, self.data_name, offset + pad, len(raw))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")

    def append(self, piece_path: Path, piece: Piece) -> None:
        import onnx

        model = onnx.load(str(piece_path), load_external_data=True)
        graph = model.graph
        if self.opset is None:
            self.opset, self.ir_version = list(model.opset_import), model.ir_version
            self.inputs = [_copy(onnx.ValueInfoProto, v) for v in graph.input]
        ports = {v.name: new for v, new in zip(graph.input, piece.inputs)}
        ports.update({v.name: new for v, new in zip(graph.output, piece.outputs)})
        tag = piece.tag

        def unique(name: str) -> str:  # the converter's own names (`graph_input_cast_0`) recur in every piece
            if name in ports:
                return ports[name]
            return name if not name or name.startswith((f"{tag}.", "text_encoder.")) else f"{tag}.{name}"

        scope = f"{SCOPE}/{tag}" if tag.startswith("block.") else SCOPE
        for node in graph.node:
            node.input[:] = [unique(n) for n in node.input]
            node.output[:] = [unique(n) for n in node.output]
            if not node.name.startswith(SCOPE):
                node.name = f"{scope}/{node.name}"
        # copies, not references: a reference to part of the loaded piece keeps all of it (its weights
        # included) in memory for as long as the assembly lives
        for tensor in graph.initializer:
            tensor.name = unique(tensor.name)
            self._external(tensor)
            self.initializers.append(_copy(onnx.TensorProto, tensor))
        self.nodes.extend(_copy(onnx.NodeProto, node) for node in graph.node)
        for v in graph.output:  # the boundary values' types (Extractor reads them)
            info = onnx.ValueInfoProto()
            info.CopyFrom(v)
            info.name = ports[v.name]
            (self.outputs if piece.tag == "tail" else self.value_info).append(info)
        del model

    def finish(self, shapes: dict[str, list], metadata: dict[str, str]) -> list[str]:
        import onnx
        from onnx import helper

        from ...export.exporter import _set_shapes

        self.data.close()
        graph = helper.make_graph(self.nodes, "text_encoder", self.inputs, self.outputs, self.initializers)
        graph.value_info.extend(self.value_info)
        _dedupe_casts(graph)
        self.casts = sum(node.op_type == "Cast" for node in graph.node)
        _set_shapes(graph, shapes)
        model = helper.make_model(graph, opset_imports=self.opset, producer_name="pixart_export")
        model.ir_version = self.ir_version
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save_model(model, str(self.path))
        onnx.checker.check_model(str(self.path), full_check=False)
        return [self.path.name, self.data_name]


def _copy(kind, message):
    out = kind()
    out.CopyFrom(message)
    return out


def _dedupe_casts(graph) -> int:
    """One Cast per (boundary value, type): each converted block casts the shared attention bias to fp16
    itself (`keep_io_types`); the first cast serves every block."""
    boundary = {v.name for v in graph.value_info} | {v.name for v in graph.input}
    seen: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in boundary:
            key = (node.input[0], tuple((a.name, a.i) for a in node.attribute))
            if key in seen:
                alias[node.output[0]] = seen[key]
                continue
            seen[key] = node.output[0]
        keep.append(node)
    for node in keep:
        node.input[:] = [alias.get(n, n) for n in node.input]
    del graph.node[:]
    graph.node.extend(keep)
    return len(alias)


# -- the graph ---------------------------------------------------------------------------------------------------
def build(
    streamed,
    dst: Path,
    precision: Precision,
    calib_feeds: list[dict],
    scratch: Path,
    shapes: dict[str, list],
    log=lambda m: None,
) -> dict:
    """Write the text-encoder graph of `streamed` (a `StreamedT5Encoder`) to `dst` (+ `dst.data`) in
    `precision` (fp16: the plan's fp32 islands, ranges measured on `calib_feeds`; bf16; fp32 as traced).
    Returns {"files", "kept_fp32": {node: reason}, "keep", "casts", "max_activation", "pieces", "seconds"}."""
    import torch

    from ...resources import release_freed_memory
    from . import bf16, fp16

    started = time.perf_counter()
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    encoder = streamed.model.encoder
    n = len(encoder.block)
    Head, Block, Tail = _modules(streamed)
    measure = precision == Precision.FP16
    if measure:
        captured, _, biases = reference_inputs(streamed, calib_feeds)
    assembly = _Assembly(dst)
    kept: dict[str, str] = {}
    top = 0.0
    keep_choice = None
    example = calib_feeds[0]
    ids, mask = (torch.from_numpy(example[k][:2]) for k in ("input_ids", "attention_mask"))
    with torch.no_grad():
        hidden, bias = Head().eval()(ids, mask)
    for k, piece in enumerate(pieces(n)):
        src = scratch / f"{piece.tag}.fp32.onnx"
        if piece.tag == "head":
            module, args, names, strip = Head(), (ids, mask), ["input_ids", "attention_mask"], ""
            feeds = list(calib_feeds) if measure else None
        elif piece.tag == "tail":
            module, args, names, strip = Tail(), (hidden,), ["hidden_states"], ""
            feeds = [{"hidden_states": h} for h in captured[n]] if measure else None
        else:
            i = k - 1
            block = _block(streamed, i)
            module, args, names, strip = Block(block), (hidden, bias), ["hidden_states", "attention_bias"], "block"
            feeds = (
                [{"hidden_states": h, "attention_bias": b} for h, b in zip(captured[i], biases)] if measure else None
            )
        outputs = ["hidden_out", "attention_bias_out"] if piece.tag == "head" else ["hidden_out"]
        _trace(module, args, names, outputs, src)
        if piece.tag.startswith("block."):
            with torch.no_grad():
                hidden = module(hidden, bias)  # the next block's example input
            del block
        del module
        _name_piece(src, piece.tag, strip)
        out = src
        if precision != Precision.FP32:
            out = scratch / f"{piece.tag}.{precision}.onnx"
            if measure:
                ranges = fp16.activation_ranges(src, feeds)
                top = max([top, *(v for key, v in ranges.items() if not key.endswith(fp16.POSITIVE) and v < np.inf)])
                conv = fp16.convert(src, out, "text_encoder", ranges)
            else:
                conv = bf16.convert(src, out, "text_encoder")
            kept.update(conv["kept_fp32"])
            keep_choice = conv["keep"]
            src.unlink()
        assembly.append(out, piece)
        out.unlink()
        release_freed_memory()  # the piece's buffers go back to the OS, not to a heap the next piece fragments
        log(f"      {piece.tag}: {precision}, {time.perf_counter() - started:.0f} s")
    if measure:
        del captured, biases
    files = assembly.finish(
        shapes,
        {"pixart_export.graph": "text_encoder", "pixart_export.direct": f"{precision}, block by block"},
    )
    return {
        "files": files,
        "kept_fp32": kept,
        "keep": keep_choice,
        "casts": assembly.casts,
        "max_activation": top,
        "pieces": [p.tag for p in pieces(n)],
        "seconds": round(time.perf_counter() - started, 1),
    }


# -- running the written graph piece by piece ------------------------------------------------------------------
class ChainedRunner:
    """The written text-encoder graph at `path` run piece by piece in onnxruntime (module docstring, 4.),
    one piece's session at a time: `run(record, feeds)` -> [prompt_embeds], like a backend runner;
    `chain(feeds_list)` -> (embeddings per feed, [hidden state after each block per feed])."""

    def __init__(self, path: Path, precision: Precision, num_layers: int, scratch: Path):
        self.path, self.precision, self.n = Path(path), Precision(precision), num_layers
        self.scratch = Path(scratch)

    def _session(self, piece: Piece):
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(self.path), load_external_data=False)
        sub = onnx.utils.Extractor(model).extract_model(piece.inputs, piece.outputs)
        sub.ir_version = model.ir_version
        del model
        beside = self.path.with_name(f".{self.path.stem}.{piece.tag}.onnx")  # its weights' paths are relative
        onnx.save_model(sub, str(beside))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            if self.precision == Precision.BF16:
                from . import bf16

                source = bf16.simulation(beside).SerializeToString()
            else:
                source = str(beside)
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        finally:
            beside.unlink(missing_ok=True)

    def chain(self, feeds_list: list[dict]) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        values = [{k: f[k] for k in ("input_ids", "attention_mask")} for f in feeds_list]
        hidden: list[list[np.ndarray]] = [[] for _ in feeds_list]
        for piece in pieces(self.n):
            session = self._session(piece)
            for v, h in zip(values, hidden):
                got = session.run(piece.outputs, {name: v[name] for name in piece.inputs})
                v.update(zip(piece.outputs, got))
                for name in piece.inputs:  # what later pieces no longer read
                    if name not in (BIAS,) and name not in piece.outputs:
                        v.pop(name, None)
                if piece.tag.startswith("block."):
                    h.append(got[0])
            del session
        return [v["prompt_embeds"] for v in values], hidden

    def run(self, record, feeds: dict) -> list[np.ndarray]:
        return [self.chain([feeds])[0][0]]


class ReferenceRunner:
    """The streamed fp32 reference as a runner of the text-encoder record (the fp32 side of end to end)."""

    def __init__(self, streamed):
        self.streamed = streamed

    def run(self, record, feeds: dict) -> list[np.ndarray]:
        import torch

        ids, mask = (torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
        return [self.streamed(input_ids=ids, attention_mask=mask)[0].numpy()]


def _rel_l2(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    num = sum(float(np.sum((g.astype(np.float64) - w) ** 2)) for g, w in zip(got, want))
    den = sum(float(np.sum(w.astype(np.float64) ** 2)) for w in want)
    return float(np.sqrt(num / max(den, 1e-30)))


def verify(streamed, path: Path, precision: Precision, feeds_list: list[dict], scratch: Path) -> tuple[dict, list]:
    """(the parity row of the written graph vs the streamed reference on `feeds_list`, the hidden state's
    relative L2 after each block along the chain)."""
    from ...verify import _row, tolerance

    n = len(streamed.model.encoder.block)
    captured, want, _ = reference_inputs(streamed, feeds_list)
    got, hidden = ChainedRunner(path, precision, n, scratch).chain(feeds_list)
    per_block = [
        round(_rel_l2([h[i] for h in hidden], captured[i + 1]), 6)  # block i's output is block i+1's input
        for i in range(n)
    ]
    row = _row(
        "text_encoder",
        "prompt_embeds",
        Path(path).name,
        precision,
        list(zip(got, want)),
        tolerance("text_encoder", precision),
        inputs="held-out prompts",
        samples=len(feeds_list),
        against="PyTorch reference (streamed fp32 T5)",
        verified_by=VERIFIED_BY,
    )
    return row, per_block
