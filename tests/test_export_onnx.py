"""pixart_export.export_onnx: every graph exported, checker-clean, with the contract's IO and stable names."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from pixart_export.errors import UserError
from pixart_export.export import exporter as export_onnx
from pixart_export.graphs import OPSET, graph_specs
from pixart_export.manifest import to_json
from tests._tiny_engine import engine, model  # noqa: F401 - fixtures

ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_every_graph_exported_and_checked(engine):  # noqa: F811
    folder, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    names = {r["graph"] for r in manifest["graphs"]}
    assert names == {s.name for s in graph_specs(4, control=True)}
    assert names >= {
        "text_encoder",
        "transformer",
        "controlnet",
        "denoiser_lcm4",
        "denoiser_lcm4_controlnet",
        "vae_decoder",
        "vae_encoder",
    }
    for rec in manifest["graphs"]:
        model_proto = onnx.load(str(folder / rec["file"]))
        onnx.checker.check_model(model_proto, full_check=True)
        assert model_proto.opset_import[0].version >= OPSET >= 17
        ins = {v.name: v for v in model_proto.graph.input}
        outs = {v.name: v for v in model_proto.graph.output}
        assert list(ins) == [t["name"] for t in rec["inputs"]]
        assert list(outs) == [t["name"] for t in rec["outputs"]]
        for sig, vi in [(t, ins[t["name"]]) for t in rec["inputs"]] + [(t, outs[t["name"]]) for t in rec["outputs"]]:
            assert ONNX_DTYPES[vi.type.tensor_type.elem_type] == sig["dtype"], (rec["file"], sig["name"])
            assert _dims(vi) == sig["shape"], (rec["file"], sig["name"])  # "B" is the only symbolic axis
        for t in rec["inputs"] + rec["outputs"]:
            assert t["shape"].count("B") == 1 or t["name"] == "conditioning_scale"


def test_contract_shapes(engine):  # noqa: F811
    _, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    sig = {r["graph"]: r for r in manifest["graphs"]}
    io = lambda g, n: next(t["shape"] for t in sig[g]["inputs"] + sig[g]["outputs"] if t["name"] == n)  # noqa: E731
    assert io("transformer", "control_residuals") == [3, "B", 64, 128]  # [N,B,T,D], tiny: N 3, 8x8 tokens, D 128
    assert io("controlnet", "control_residuals") == [3, "B", 64, 128]
    assert io("denoiser_lcm4", "step_noise") == [3, "B", 4, 16, 16]  # [K-1,B,4,h,w]
    assert io("text_encoder", "prompt_embeds") == ["B", 120, 64]
    assert io("vae_decoder", "image") == ["B", 3, 128, 128]
    assert io("controlnet", "conditioning_scale") == [1]


def test_node_names_say_where_they_come_from(engine):  # noqa: F811
    folder, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    rec = next(r for r in manifest["graphs"] if r["graph"] == "denoiser_lcm4_controlnet")
    names = [n.name for n in onnx.load(str(folder / rec["file"])).graph.node]
    for step in range(4):
        assert any(re.match(rf"^/step\.{step}/transformer/transformer_blocks\.5/attn1/", n) for n in names)
        # ControlNet copy j is scoped by its index: exclusions can name one copy
        assert any(re.match(rf"^/step\.{step}/controlnet/controlnet\.1/copied_block/attn1/", n) for n in names)
        assert any(re.match(rf"^/step\.{step}/controlnet/transformer_blocks\.0/", n) for n in names)
        # the LCM update itself (outside any module) is named after its step too
        assert any(re.match(rf"^/step\.{step}/lcm/Mul", n) for n in names)
    assert not [n for n in names if n.startswith("/") and not n.startswith(("/step.", "/inputs/"))]
    one = next(r for r in manifest["graphs"] if r["graph"] == "transformer")
    assert any(
        n.startswith("/transformer/transformer_blocks.0/attn2/")
        for n in (n.name for n in onnx.load(str(folder / one["file"])).graph.node)
    )


def test_batch_is_dynamic(engine, model):  # noqa: F811
    """Exported at batch 2; run at batch 1 and 3 against the reference (parity uses batch 3 too)."""
    import onnxruntime as ort
    import torch

    from pixart_export.graphs import TRANSFORMER, fixed_inputs

    folder, manifest = engine

    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    rec = next(r for r in manifest["graphs"] if r["graph"] == "transformer")
    session = ort.InferenceSession(str(folder / rec["file"]), providers=["CPUExecutionProvider"])
    dims = export_onnx.model_dims(model, 128, 128)
    for batch in (1, 3):
        feeds = fixed_inputs(TRANSFORMER, dims, batch, seed=batch)
        got = session.run(None, feeds)[0]
        with torch.no_grad():
            want = model.dit.predict_noise(*(torch.from_numpy(feeds[n]) for n in TRANSFORMER.input_names)).numpy()
        assert got.shape == (batch, 4, 16, 16)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_large_graphs_use_external_data(tmp_path, model, monkeypatch):  # noqa: F811
    """Over the threshold a graph goes to one external .data file and still passes the checker."""
    from pixart_export.export.wrappers import VaeEncoderGraph
    from pixart_export.graphs import VAE_ENCODER

    monkeypatch.setattr(export_onnx, "EXTERNAL_DATA_THRESHOLD", 1000)
    path = tmp_path / "vae_encoder_128x128.onnx"
    files = export_onnx.export_graph(
        VaeEncoderGraph(model.vae), VAE_ENCODER, export_onnx.model_dims(model, 128, 128), path
    )
    assert files == [path.name, path.name + ".data"]
    assert path.stat().st_size < 200_000 < (tmp_path / files[1]).stat().st_size
    onnx.checker.check_model(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # scratch folder cleaned up


def test_refusals(model):  # noqa: F811
    with pytest.raises(UserError, match="multiples of 16"):
        export_onnx.check_exportable(model, [(120, 128)], 4)
    with pytest.raises(UserError, match="1 to 8"):
        export_onnx.check_exportable(model, [(128, 128)], 9)


def test_export_cli_several_buckets(tmp_path, model, capsys):  # noqa: F811
    """`export` without a ControlNet, two resolution buckets, K = 2: one file per bucket, loadable, no parity yet."""
    import json

    from pixart_export import runtime
    from pixart_export.cli import main
    from pixart_export.metrics import psnr_uint8
    from reference.pipeline import ReferencePipeline

    out = tmp_path / "onnx-tiny"
    assert main(["export", "--model", "tiny", "--resolution", "128", "128x256", "--steps", "2", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"] is None and manifest["resolutions"] == [[128, 128], [128, 256]]
    assert manifest["steps"] == 2 and manifest["lcm"]["timesteps"] == [999, 499]
    files = sorted(g["file"] for g in manifest["graphs"])
    assert files == sorted(
        ["text_encoder.onnx"]
        + [
            f"{g}_{r}.onnx"
            for g in ("transformer", "denoiser_lcm2", "vae_decoder", "vae_encoder")
            for r in ("128x128", "128x256")
        ]
    )
    assert "controlnet" not in " ".join(files)
    wide = next(g for g in manifest["graphs"] if g["file"] == "transformer_128x256.onnx")
    # exported without a ControlNet: N = layers // 2 - 1 residual slots
    assert next(t["shape"] for t in wide["inputs"] if t["name"] == "control_residuals") == [2, "B", 128, 128]
    got = runtime.load(out)("a wide picture", seed=2, resolution=(128, 256), output="np")
    want = ReferencePipeline(model)("a wide picture", steps=2, seed=2, resolution=(128, 256), output="pt").numpy()
    assert got.shape == (1, 3, 128, 256)
    assert psnr_uint8(got, want) >= 40.0  # the fp32 floor of verify.TOLERANCES
    assert "denoiser_lcm2_128x256.onnx" in capsys.readouterr().out
