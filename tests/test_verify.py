"""pixart_export.verify and metrics: one parity check for any runner, one tolerance table, the
`parity` command."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pixart_export import metrics, verify
from pixart_export.backends.onnxruntime.runner import OrtRunner
from pixart_export.manifest import Parity, Precision, check_files, read_manifest
from tests._tiny_engine import copy_engine, engine, model  # noqa: F401 - fixtures

FP32 = verify.TOLERANCES[(None, Precision.FP32)]


def test_metrics():
    a = np.ones((2, 3), np.float32)
    assert metrics.rel_l2(a, a) == 0.0
    assert math.isclose(metrics.rel_l2(2 * a, a), 1.0)
    assert metrics.rel_l2(np.full((2, 3), np.nan, np.float32), a) == math.inf
    img = np.linspace(0, 1, 300, dtype=np.float32).reshape(1, 3, 10, 10)
    assert metrics.psnr_uint8(img, img) == math.inf  # identical uint8 images
    assert 45 < metrics.psnr_uint8(np.clip(img + 1 / 255, 0, 1), img) < 50
    assert metrics.ssim_uint8(img[0], img[0]) == pytest.approx(1.0)


def test_every_precision_has_a_stated_tolerance():
    for (graph, precision), tol in verify.TOLERANCES.items():
        assert tol.why and tol.rel_l2 > 0 and tol.min_psnr_db > 0, (graph, precision)
    assert verify.tolerance("transformer", Precision.INT8) is verify.TOLERANCES[(None, Precision.INT8)]
    assert verify.tolerance("text_encoder", Precision.INT8_WEIGHTS).rel_l2 == 5e-2
    # int8-weights is the text encoder's alone: any other graph in it has no stated tolerance
    with pytest.raises(Exception, match="no tolerance"):
        verify.tolerance("transformer", Precision.INT8_WEIGHTS)


def test_build_recorded_passing_parity(engine):  # noqa: F811
    _, manifest = engine
    p = manifest.parity
    assert p.ok
    assert {r["graph"] for r in p.graphs} == {g.graph for g in manifest.graphs}
    for r in p.graphs:
        assert r["rel_l2"] <= FP32.rel_l2 and r["batch"] == 3 and r["precision"] == "fp32", r
    assert [r["case"] for r in p.end_to_end] == ["text2image", "controlnet"]
    assert all(r["psnr_db"] is None or r["psnr_db"] >= FP32.min_psnr_db for r in p.end_to_end)
    print(verify.format_table(p))


def test_wrong_weights_fail(engine, model):  # noqa: F811
    """The check is not a rubber stamp: a 1% change of one transformer weight breaks the graph rows."""
    folder, manifest = engine
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.dit.transformer_blocks[2].ff.net[2].weight.mul_(1.01)
    some = dataclasses.replace(
        manifest, graphs=tuple(g for g in manifest.graphs if g.graph in ("transformer", "vae_decoder"))
    )
    rows = verify.graph_parity(other, OrtRunner(folder), some)
    by_graph = {r["graph"]: r for r in rows}
    assert not by_graph["transformer"]["ok"] and by_graph["transformer"]["rel_l2"] > FP32.rel_l2
    assert by_graph["vae_decoder"]["ok"]
    failed = Parity(ok=False, graphs=tuple(rows), end_to_end=())
    assert any("transformer" in f for f in verify.failures(failed))


def test_parity_cli_rewrites_manifest(tmp_path, capsys):
    from pixart_export.cli import main

    folder = copy_engine(tmp_path / "e")
    before = read_manifest(folder)
    data = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**data, "parity": None}))
    assert main(["parity", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "parity: PASS" in out and "denoiser_lcm4_controlnet_128x128.onnx" in out
    after = read_manifest(folder)
    assert after.parity.ok and after.files == before.files
    check_files(folder, after)  # the manifest rewrite left every listed file valid
    assert main(["parity", str(folder), "--model", "tiny", "--controlnet", "none-such"]) == 2


def test_parity_cli_exit_code_on_failure(tmp_path, monkeypatch, capsys):
    """Exit status 1 (not 2: the input was fine, the engine is not) when a figure is out of tolerance."""
    from pixart_export.backends.onnxruntime import prepare
    from pixart_export.cli import main

    folder = copy_engine(tmp_path / "e")

    def failing(*args, **kwargs):  # the figures themselves are tested in test_wrong_weights_fail
        return Parity(ok=False, graphs=(), end_to_end=())

    monkeypatch.setattr(prepare, "_measure", failing)
    assert main(["parity", str(folder), "--no-write", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
