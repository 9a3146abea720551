"""Export stage: a loaded reference model -> fp32 ONNX graphs (one per `GraphSpec` and resolution bucket).

Exporter choice: the TorchScript exporter, `torch.onnx.export(..., dynamo=False)`. torch 2.13's
dynamo exporter was seen to emit an invalid Squeeze for this transformer and to fail on the T5
encoder unless eager attention is chosen; the TorchScript tracer handles both, deduplicates
parameters shared by repeated calls of one module (so the unrolled denoiser stores its weights
once), and names nodes by module path.

After tracing each file is post-processed once:
- intermediate *value* names are shortened (`v123`): the TorchScript exporter names every value
  after its node (`/step.2/transformer/transformer_blocks.0/attn1/Add_output_0`), which repeats the
  node name and, on the unrolled graph, costs more bytes than a small model's weights. Node names,
  graph inputs/outputs and initializers keep their names; node names are what quantisation
  exclusions and TensorRT layer names use.
- graphs over 2 GB go to external data (one `<file>.data` beside each graph: protobuf's limit);
- in the unrolled denoiser, the LCM update's root-scope nodes are named after their step
  (`/step.2/lcm/Mul`, see `_name_lcm_nodes`);
- `onnx.checker` runs on the file as written (by path, so external data is checked too).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..graphs import OPSET, Dims, GraphSpec, fixed_inputs, graph_specs

#: protobuf cannot serialise a message over 2 GiB; stay under it with a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def default_num_copies(num_layers: int) -> int:
    """N for a transformer exported without a ControlNet: the paper's N = 13 for 28 blocks."""
    return max(1, num_layers // 2 - 1)


def model_dims(model, height: int = 0, width: int = 0, steps: int = 4) -> Dims:
    """The symbol values of ARCHITECTURE.md for this model and bucket (height/width in pixels)."""
    from reference.text import MAX_TEXT_LEN

    cfg = model.dit.config
    n = model.controlnet.config.num_copies if model.controlnet is not None else default_num_copies(cfg.num_layers)
    f = model.vae_scale_factor
    return Dims(
        L=MAX_TEXT_LEN,
        C=cfg.caption_channels,
        D=cfg.inner_dim,
        N=n,
        h=height // f,
        w=width // f,
        patch=cfg.patch_size,
        steps=steps,
        vae_factor=f,
        vocab=int(model.text_encoder.config.vocab_size),
    )


def check_exportable(model, resolutions: list[tuple[int, int]], steps: int) -> None:
    """Refuse, with one line each, what this exporter does not produce."""
    if not 1 <= steps <= 8:
        raise UserError(f"--steps {steps}: LCM sampling takes 1 to 8 steps")
    for h, w in resolutions:
        if error := model.resolution_error(h, w):
            raise UserError(error)


def wrapper_for(spec: GraphSpec, model, steps: int):
    """The torch module whose trace is `spec`'s graph."""
    from reference.schedules import lcm_timesteps

    from . import wrappers as W

    if spec.name == "text_encoder":
        return W.TextEncoderGraph(model.text_encoder)
    if spec.name == "transformer":
        return W.TransformerGraph(model.dit)
    if spec.name == "controlnet":
        return W.ControlNetGraph(model.dit, model.controlnet)
    if spec.name.startswith("denoiser_lcm"):
        return W.DenoiserGraph(
            model.dit, model.controlnet if spec.control else None, lcm_timesteps(steps, model.lcm_spacing)
        )
    if spec.name == "vae_decoder":
        return W.VaeDecoderGraph(model.vae)
    if spec.name == "vae_encoder":
        return W.VaeEncoderGraph(model.vae)
    if spec.name == "vae_decoder_preview":
        if model.vae_preview is None:
            raise UserError("this model carries no preview decoder: give its folder with --preview-decoder DIR")
        return W.VaeDecoderGraph(model.vae_preview)
    raise KeyError(spec.name)


def _compact_value_names(graph) -> None:
    """Rename intermediate values to `v<n>` (see module docstring); names that leave the graph stay."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {i.name for i in graph.initializer}
    rename: dict[str, str] = {}
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out and out not in keep:
                rename[out] = f"v{len(rename)}"
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for info in graph.value_info:
        info.name = rename.get(info.name, info.name)


def _name_lcm_nodes(graph) -> None:
    """Give the unrolled loop's own arithmetic a step: `/Mul_3` -> `/step.1/lcm/Mul_3`.

    `lcm_step` runs outside any module, so the tracer leaves its nodes at the root scope. Nodes are in
    execution order, so a root node belongs to the LCM update of the last step whose transformer ran
    before it (`/inputs/...` before the first step: slicing `step_noise`). These ops carry c_skip
    ~1e-9 and alpha-bar ~4e-5 at t = 999 -- below fp16's range -- so quantisers must be able to keep
    them in fp32 by pattern (`*/lcm/*`). Exporter-made names without a leading `/` stay as they are.
    """
    step = None
    for node in graph.node:
        if node.name.startswith("/step."):
            step = node.name.split("/")[1]
        elif node.name.startswith("/"):
            node.name = f"/{step}/lcm{node.name}" if step else f"/inputs{node.name}"


def _set_shapes(graph, shapes: dict[str, list]) -> None:
    """Write the contract's shapes on the graph's inputs/outputs: the tracer's shape inference names
    static output axes symbolically at times (`Mulprompt_embeds_dim_1`); the contract says 120."""
    for value in list(graph.input) + list(graph.output):
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[value.name]:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def finish_onnx(
    raw_path: Path, path: Path, metadata: dict[str, str], shapes: dict[str, list] | None = None
) -> list[str]:
    """Post-process a traced file into `path` (+ external data if large); returns the files written."""
    import onnx

    model = onnx.load(str(raw_path), load_external_data=True)
    _compact_value_names(model.graph)
    _set_shapes(model.graph, shapes or {})
    if any(n.name.startswith("/step.") for n in model.graph.node):
        _name_lcm_nodes(model.graph)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    big = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    files = [path.name]
    if big:
        data = f"{path.name}.data"
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data,
            size_threshold=1024,
        )
        files.append(data)
    else:
        onnx.save_model(model, str(path))
    del model
    onnx.checker.check_model(str(path), full_check=False)
    return files


def export_graph(
    module, spec: GraphSpec, dims: Dims, path: Path, metadata: dict[str, str] | None = None, batch: int = 2
) -> list[str]:
    """Trace `module` on fixed inputs of batch `batch` and write `path`; returns the file names written."""
    import torch

    inputs = fixed_inputs(spec, dims, batch)
    args = tuple(torch.from_numpy(inputs[t.name]) for t in spec.inputs)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as scratch:
        raw = Path(scratch) / path.name
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                args,
                str(raw),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        shapes = {t.name: dims.shape(t) for t in spec.inputs + spec.outputs}
        return finish_onnx(raw, path, {"pixart_export.graph": spec.name, **(metadata or {})}, shapes)


def is_streamed(text_encoder) -> bool:
    """A T5 the reference streams from disk (`reference/t5_streamed.py`): too large to trace in fp32."""
    return bool(getattr(text_encoder, "streamed", False))


def direct_record(spec: GraphSpec, dims: Dims, text_encoder) -> dict:
    """The record of a text encoder that is not exported here: no ONNX file, the weights' folder instead.

    A backend whose `direct_text_encoder` is true converts it from those weights (OpenVINO: `t5_direct.py`;
    TensorRT: `backends/tensorrt/t5_blockwise.py`); `build` refuses the others before any work
    (`check_text_encoder`)."""
    return {
        "graph": spec.name,
        "file": None,
        "files": [],
        "height": None,
        "width": None,
        "precision": "fp32",
        "opset": OPSET,
        **io_signature(spec, dims),
        "bytes": 0,
        "export_seconds": 0.0,
        "direct_from": str(text_encoder.folder),
    }


def check_text_encoder(model, target) -> None:
    """Refuse, before any work, a streamed T5 on a target that would need its fp32 export."""
    if not is_streamed(model.text_encoder) or getattr(target.backend, "direct_text_encoder", False):
        return
    from reference.t5_streamed import fp32_bytes

    gib = fp32_bytes(model.text_encoder.folder) / 2**30
    raise UserError(
        f"{target.name}: the text encoder ({model.text_encoder.num_parameters() / 1e9:.2f} B parameters, "
        f"{gib:.1f} GiB in fp32) is too large for the fp32 ONNX export, which holds about 2.3x the weights "
        f"in memory ({2.3 * gib:.0f} GiB; benchmarks/results/export_xl.md); ov-cpu-int8 converts it "
        "directly from bf16 weights to int8, the trt-* targets export it block by block in their T5 plan's "
        "precision (README: 'The full-size model')"
    )


def io_signature(spec: GraphSpec, dims: Dims) -> dict:
    """Names, dtypes and shapes ("B" for the dynamic batch) as the manifest records them."""

    def one(t):
        return {"name": t.name, "dtype": t.dtype, "shape": dims.shape(t)}

    return {"inputs": [one(t) for t in spec.inputs], "outputs": [one(t) for t in spec.outputs]}


def export_model(
    model,
    out_dir: Path,
    resolutions: list[tuple[int, int]],
    steps: int = 4,
    on_graph: Callable[[str], None] | None = None,
) -> list[dict]:
    """Export every graph for every resolution bucket into `out_dir`; returns one record per file.

    `on_graph(label)` is called before each export (progress output).
    """
    check_exportable(model, resolutions, steps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(
        steps,
        control=model.controlnet is not None,
        multi_aspect=model.dit.config.resolved_additional_conditions,
        preview=model.vae_preview is not None,
    )
    records = []
    for spec in specs:
        buckets = resolutions if spec.spatial else [(None, None)]
        for h, w in buckets:
            dims = model_dims(model, h or resolutions[0][0], w or resolutions[0][1], steps)
            name = spec.filename(h, w)
            if on_graph:
                on_graph(name)
            if spec.name == "text_encoder" and is_streamed(model.text_encoder):
                records.append(direct_record(spec, dims, model.text_encoder))
                continue
            started = time.perf_counter()
            module = wrapper_for(spec, model, steps)
            files = export_graph(module, spec, dims, out_dir / name, {"pixart_export.steps": str(steps)})
            record = {
                "graph": spec.name,
                "file": name,
                "files": files,
                "height": h,
                "width": w,
                "precision": "fp32",
                "opset": OPSET,
                **io_signature(spec, dims),
                "bytes": sum(os.path.getsize(out_dir / f) for f in files),
                "export_seconds": round(time.perf_counter() - started, 2),
            }
            if spec.name.startswith("denoiser_lcm"):
                record["lcm"] = module.constants()
            records.append(record)
    return records
