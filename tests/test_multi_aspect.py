"""Multi-aspect (1024-MS style) models: the DiT graphs take `resolution` and `aspect_ratio` as inputs.

A small model with the resolution/aspect-ratio embedders (as PixArt-XL-2-1024-MS and PixArt-LCM-XL-2-
1024-MS have) is built from the tiny T5 and VAE, exported for a square and a non-square bucket, and
held to the fp32 tolerances of graphs.py (rel L2 <= 1e-4, image PSNR >= 40 dB; reasons there).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from pixart_export.manifest import to_json
from reference.config import DiTConfig
from reference.dit import PixArtDiT
from reference.loading import TINY_DIR, save_dit

MS_CONFIG = DiTConfig(
    num_attention_heads=4,
    attention_head_dim=24,
    num_layers=2,
    cross_attention_dim=96,
    caption_channels=64,
    sample_size=16,
    use_additional_conditions=True,
)


@pytest.fixture(scope="module")
def ms_engine(tmp_path_factory):
    from pixart_export.build import build_target

    root = tmp_path_factory.mktemp("ms")
    for part in ("text_encoder", "tokenizer", "vae", "scheduler"):
        shutil.copytree(TINY_DIR / part, root / "model" / part)
    torch.manual_seed(0)
    save_dit(PixArtDiT(MS_CONFIG), root / "model" / "transformer")
    out, manifest, _ = build_target(
        "ort-cpu",
        str(root / "model"),
        out=root / "engine",
        resolutions=[(128, 128), (64, 128)],
        options={"optimise": False},
        log=lambda m: None,
    )
    return out, manifest


def test_dit_graphs_take_size_conditions(ms_engine):
    _, manifest = ms_engine
    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    for rec in manifest["graphs"]:
        names = [t["name"] for t in rec["inputs"]]
        wants = rec["graph"] in ("transformer",) or rec["graph"].startswith("denoiser_lcm")
        assert ("resolution" in names and "aspect_ratio" in names) == wants, rec["graph"]


def test_parity_and_runtime(ms_engine):
    from pixart_export.runtime import load

    out, manifest = ms_engine

    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    assert manifest["parity"]["ok"], manifest["parity"]
    assert {tuple(r["resolution"]) for r in manifest["parity"]["end_to_end"]} == {(128, 128), (64, 128)}
    image = load(out)("a red circle", seed=1, resolution=(64, 128))[0]
    assert image.size == (128, 64)


def test_conditions_change_the_output(ms_engine):
    """Same latents, different declared resolution: the embedders really are wired to the inputs."""
    import numpy as np
    import onnxruntime as ort

    from pixart_export.export.exporter import model_dims
    from pixart_export.graphs import fixed_inputs, spec_for_record
    from reference.loading import load_model

    out, manifest = ms_engine

    manifest = to_json(manifest)  # the schema-2 manifest as JSON data
    rec = next(r for r in manifest["graphs"] if r["graph"] == "transformer" and r["height"] == 128)
    spec = spec_for_record(rec, 4, False)
    feeds = fixed_inputs(spec, model_dims(load_model(str(out.parent / "model")), 128, 128), batch=1)
    session = ort.InferenceSession(str(out / rec["file"]), providers=["CPUExecutionProvider"])
    a = session.run(None, feeds)[0]
    b = session.run(None, {**feeds, "resolution": np.array([[256.0, 512.0]], np.float32)})[0]
    assert np.abs(a - b).max() > 1e-4
