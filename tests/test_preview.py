"""`preview.py` and the `vae_decoder_preview` graph: the build's check that a preview decoder reads this
VAE's latents (tiny's distilled one passes, a randomly initialised AutoencoderTiny is refused), the graph
in an engine folder (validated like every graph), and `run --decoder preview` / `runtime.load(decoder=...)`.
The engines are the shared OpenVINO ones (`tests/_openvino_engine.py`: ov-cpu carries tiny's preview
decoder, ov-cpu-int8 does not)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests._openvino_engine import model, ov_cpu, ov_int8  # noqa: F401 - fixtures

PROMPT = "a red circle above a blue square"


def test_resolve_refuses_what_is_not_an_autoencoder_tiny(tmp_path):
    from pixart_export import preview
    from pixart_export.errors import UserError
    from reference.loading import TINY_DIR

    assert preview.resolve("tiny") == TINY_DIR / "vae_preview"
    with pytest.raises(UserError, match="no config.json"):
        preview.resolve(tmp_path)
    with pytest.raises(UserError, match="describes a AutoencoderKL, not a diffusers AutoencoderTiny"):
        preview.resolve(TINY_DIR / "vae")


def test_check_passes_the_distilled_decoder_and_refuses_a_random_one(model):  # noqa: F811
    """The threshold (`MIN_PSNR_DB`) separates a decoder trained for these latents from one that is not."""
    import torch

    from pixart_export import preview
    from pixart_export.calibration import CALIBRATION_PROMPTS, read_prompts
    from pixart_export.errors import UserError
    from reference.train.preview_decoder import make_student

    prompts = read_prompts(CALIBRATION_PROMPTS)[:2]  # the build's check takes CHECK_PROMPTS; 2 keep this fast
    shipped = preview.load(preview.resolve("tiny"))
    figures = preview.check(model, shipped, (128, 128), 4, prompts)
    assert figures["images"] == 2 and figures["mean_psnr_db"] >= preview.MIN_PSNR_DB
    torch.manual_seed(0)
    with pytest.raises(UserError, match=r"mean PSNR [0-9.]+ dB < 20 dB") as info:
        preview.check(model, make_student().eval(), (128, 128), 4, prompts)
    assert "not trained for this VAE's latent space" in str(info.value)


def test_preview_graph_runs_and_is_validated(ov_cpu, ov_int8, tmp_path):  # noqa: F811
    from pixart_export import runtime
    from pixart_export.errors import UserError
    from pixart_export.manifest import EngineError
    from pixart_export.metrics import psnr_uint8

    folder, manifest = ov_cpu
    [rec] = [r for r in manifest.graphs if r.graph == "vae_decoder_preview"]
    assert all(name in manifest.files for name in rec.files)  # hashed like every graph
    assert manifest.build["preview_decoder"]["check"]["mean_psnr_db"] >= 20
    assert any(r["graph"] == "vae_decoder_preview" and r["ok"] for r in manifest.parity.graphs)
    full = runtime.load(folder)(PROMPT, seed=3, output="np")
    fast = runtime.load(folder, decoder="preview")(PROMPT, seed=3, output="np")
    assert fast.shape == full.shape and not np.array_equal(fast, full)
    assert psnr_uint8(fast[0], full[0]) >= 20
    # a folder without one says how to get one
    with pytest.raises(UserError, match="no preview decoder.*--preview-decoder"):
        runtime.load(ov_int8[0], decoder="preview")
    # the preview graph's weights tampered with: refused at load, as any graph's
    copy = tmp_path / "engine"
    shutil.copytree(folder, copy)
    weights = copy / rec.files[1]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=rec.files[1]):
        runtime.load(copy, decoder="preview")


def test_run_decoder_preview_cli(ov_cpu, tmp_path, capsys):  # noqa: F811
    from PIL import Image

    from pixart_export import runtime
    from pixart_export.cli import main

    folder, _ = ov_cpu
    out = tmp_path / "preview.png"
    assert main(["run", str(folder), "--prompt", PROMPT, "--seed", "3", "--decoder", "preview", "--out", str(out)]) == 0
    want = runtime.load(folder, decoder="preview")(PROMPT, seed=3)[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert any(g["graph"] == "vae_decoder_preview" for g in manifest["graphs"])


def test_generate_decoder_preview(model, tmp_path):  # noqa: F811
    """`generate --decoder preview`: the reference pipeline's latents through tiny's preview decoder."""
    import torch
    from PIL import Image

    from pixart_export import preview
    from pixart_export.cli import main
    from reference import vae as vae_io
    from reference.pipeline import ReferencePipeline, to_pil

    out = tmp_path / "g.png"
    assert main(["generate", "--prompt", PROMPT, "--seed", "2", "--decoder", "preview", "--out", str(out)]) == 0
    with torch.no_grad():
        latents = ReferencePipeline(model)(PROMPT, seed=2, output="latent")
        want = to_pil(vae_io.decode(preview.load(preview.resolve("tiny")), latents))[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want))
