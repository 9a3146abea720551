"""The unrolled `denoiser_lcm4` graph: weights stored once, equal to K single steps, ControlNet forms.

Tolerance: all graphs are fp32 and compared with fp32 computations on the same inputs; the only
differences are onnxruntime's kernel/summation order, measured at ~2e-7 relative L2. We hold
relative L2 <= 1e-4 (verify.TOLERANCES' fp32 row, reason stated there).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from pixart_export.export.exporter import model_dims
from pixart_export.graphs import denoiser_spec, fixed_inputs
from pixart_export.manifest import Precision, to_json
from pixart_export.metrics import rel_l2
from pixart_export.verify import TOLERANCES
from reference.controlnet import ControlledDiT
from reference.sampling import lcm_step
from reference.schedules import alphas_cumprod, lcm_timesteps
from tests._tiny_engine import engine, model, tiny_model  # noqa: F401 - fixtures

FP32 = TOLERANCES[(None, Precision.FP32)]


def _session(folder, manifest, graph):
    rec = next(r for r in manifest["graphs"] if r["graph"] == graph)
    return ort.InferenceSession(str(folder / rec["file"]), providers=["CPUExecutionProvider"]), rec


def _weight_bytes(path) -> int:
    m = onnx.load(str(path))
    consts = sum(
        numpy_helper.to_array(a.t).nbytes
        for n in m.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.type == onnx.AttributeProto.TENSOR
    )
    return sum(numpy_helper.to_array(i).nbytes for i in m.graph.initializer) + consts


def test_weights_stored_once(engine):  # noqa: F811
    folder, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    size = {r["graph"]: (folder / r["file"]).stat().st_size for r in manifest["graphs"]}
    print({k: f"{v / 2**20:.2f} MiB" for k, v in size.items()})
    # the file: within 10% of one transformer step (4 copies of the weights would be ~4x)
    assert size["denoiser_lcm4"] <= 1.10 * size["transformer"]
    assert size["denoiser_lcm4_controlnet"] <= 1.10 * (size["transformer"] + size["controlnet"])
    one = _weight_bytes(folder / next(r["file"] for r in manifest["graphs"] if r["graph"] == "transformer"))
    unrolled = _weight_bytes(folder / next(r["file"] for r in manifest["graphs"] if r["graph"] == "denoiser_lcm4"))
    assert one <= unrolled <= 1.05 * one
    # with the ControlNet: at most the DiT's weights plus the ControlNet's, each once. (Fewer is fine:
    # the exporter also merges initializers of equal value; the tiny ControlNet's copies were trained
    # from the teacher's blocks, so they share nothing with the student's.)
    tiny = tiny_model()
    params = sum(p.numel() * 4 for n, p in tiny.dit.named_parameters() if n != "null_caption") + sum(
        p.numel() * 4 for p in tiny.controlnet.parameters()
    )
    projections = sum(p.numel() * 4 for n, p in tiny.controlnet.named_parameters() if "_proj" in n)
    controlled = _weight_bytes(
        folder / next(r["file"] for r in manifest["graphs"] if r["graph"] == "denoiser_lcm4_controlnet")
    )
    assert one + projections <= controlled <= 1.05 * params


def test_lcm_constants_in_manifest(engine):  # noqa: F811
    _, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    assert manifest["lcm"]["timesteps"] == lcm_timesteps(4, "diffusers") == [999, 759, 499, 259]
    ac = alphas_cumprod()
    assert manifest["lcm"]["alphas_cumprod"] == [float(ac[t]) for t in [999, 759, 499, 259]]
    assert len(manifest["lcm"]["c_skip"]) == len(manifest["lcm"]["c_out"]) == 4


def test_unrolled_equals_single_step_graph_k_times(engine, model):  # noqa: F811
    """denoiser_lcm4(x_T, noise) == the transformer graph run 4 times with reference.sampling.lcm_step."""
    folder, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    den, _ = _session(folder, manifest, "denoiser_lcm4")
    one, _ = _session(folder, manifest, "transformer")
    dims = model_dims(model, 128, 128)
    feeds = fixed_inputs(denoiser_spec(4, False), dims, batch=2, seed=3)
    got = den.run(None, feeds)[0]
    zeros = np.zeros([dims.N, 2, dims.value("T"), dims.D], np.float32)
    ts, ac = manifest["lcm"]["timesteps"], alphas_cumprod()
    x = torch.from_numpy(feeds["latents"])
    for i, t in enumerate(ts):
        eps = one.run(
            None,
            {
                "latents": x.numpy(),
                "timestep": np.full(2, t, np.float32),
                "prompt_embeds": feeds["prompt_embeds"],
                "prompt_attention_mask": feeds["prompt_attention_mask"],
                "control_residuals": zeros,
            },
        )[0]
        last = i == len(ts) - 1
        x, denoised = lcm_step(
            torch.from_numpy(eps),
            x,
            t,
            None if last else ts[i + 1],
            ac,
            None if last else torch.from_numpy(feeds["step_noise"][i]),
        )
    err = rel_l2(got, denoised.numpy())
    print(f"unrolled vs 4 x single step: rel L2 {err:.2e}")
    assert err <= FP32.rel_l2


def test_zero_residuals_equal_text_to_image(engine, model):  # noqa: F811
    folder, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    one, _ = _session(folder, manifest, "transformer")
    dims = model_dims(model, 128, 128)
    from pixart_export.graphs import TRANSFORMER

    feeds = fixed_inputs(TRANSFORMER, dims, batch=2, seed=5)
    feeds["control_residuals"] = np.zeros_like(feeds["control_residuals"])
    got = one.run(None, feeds)[0]
    with torch.no_grad():
        plain = model.dit.predict_noise(*(torch.from_numpy(feeds[n]) for n in TRANSFORMER.input_names[:4])).numpy()
    assert rel_l2(got, plain) <= FP32.rel_l2
    # and the ControlNet denoiser with conditioning_scale 0 is the plain denoiser
    den, _ = _session(folder, manifest, "denoiser_lcm4")
    den_c, _ = _session(folder, manifest, "denoiser_lcm4_controlnet")
    feeds = fixed_inputs(denoiser_spec(4, True), dims, batch=2, seed=6)
    feeds["conditioning_scale"] = np.zeros(1, np.float32)
    plain = den.run(None, {k: v for k, v in feeds.items() if k not in ("control_latents", "conditioning_scale")})[0]
    assert rel_l2(den_c.run(None, feeds)[0], plain) <= FP32.rel_l2


def test_controlnet_then_transformer_equals_fused(engine, model):  # noqa: F811
    """controlnet graph -> control_residuals -> transformer graph == reference ControlledDiT."""
    folder, manifest = engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    net, _ = _session(folder, manifest, "controlnet")
    one, _ = _session(folder, manifest, "transformer")
    from pixart_export.graphs import CONTROLNET

    feeds = fixed_inputs(CONTROLNET, model_dims(model, 128, 128), batch=2, seed=8)
    residuals = net.run(None, feeds)[0]
    assert np.abs(residuals).max() > 0  # the tiny ControlNet is non-trivial
    got = one.run(
        None,
        {
            **{k: feeds[k] for k in ("latents", "timestep", "prompt_embeds", "prompt_attention_mask")},
            "control_residuals": residuals,
        },
    )[0]
    with torch.no_grad():
        fused = ControlledDiT(model.dit, model.controlnet)(
            *(torch.from_numpy(feeds[n]) for n in CONTROLNET.input_names[:5]), float(feeds["conditioning_scale"][0])
        )[:, :4].numpy()
    err = rel_l2(got, fused)
    print(f"split graphs vs fused ControlledDiT: rel L2 {err:.2e}")
    assert err <= FP32.rel_l2
