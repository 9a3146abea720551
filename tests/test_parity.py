"""pixart_export.parity: the suite passes on tiny, fails on a wrong model, and the CLI records it."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import torch

from pixart_export import parity
from pixart_export.graphs import FP32_REL_L2, MIN_PSNR_DB
from pixart_export.manifest import check_files
from tests._tiny_engine import copy_engine, engine, model  # noqa: F401 - fixtures


def test_metrics():
    a = np.ones((2, 3), np.float32)
    assert parity.rel_l2(a, a) == 0.0
    assert math.isclose(parity.rel_l2(2 * a, a), 1.0)
    img = np.linspace(0, 1, 300, dtype=np.float32).reshape(1, 3, 10, 10)
    assert parity.psnr_uint8(img, img) == (None, 0.0)
    psnr, mse = parity.psnr_uint8(np.clip(img + 1 / 255, 0, 1), img)
    assert 45 < psnr < 50 and mse > 0


def test_build_recorded_passing_parity(engine):  # noqa: F811
    _, manifest = engine
    p = manifest["parity"]
    assert p["ok"]
    assert {r["graph"] for r in p["graphs"]} == {g["graph"] for g in manifest["graphs"]}
    for r in p["graphs"]:
        assert r["rel_l2"] <= FP32_REL_L2 and r["batch"] == 3, r
    assert [r["case"] for r in p["end_to_end"]] == ["text2image", "controlnet"]
    assert all(r["psnr_db"] is None or r["psnr_db"] >= MIN_PSNR_DB for r in p["end_to_end"])
    print(parity.format_table(p))


def test_wrong_weights_fail(engine, model):  # noqa: F811
    """The suite is not a rubber stamp: a 1% change of one transformer weight breaks the graph rows."""
    folder, manifest = engine
    other = copy.deepcopy(model)
    with torch.no_grad():
        w = other.dit.transformer_blocks[2].ff.net[2].weight
        w.mul_(1.01)
    rows = parity.graph_parity(other, folder, {**manifest, "graphs": [g for g in manifest["graphs"]
                                                                    if g["graph"] in ("transformer", "vae_decoder")]})
    by_graph = {r["graph"]: r for r in rows}
    assert not by_graph["transformer"]["ok"] and by_graph["transformer"]["rel_l2"] > FP32_REL_L2
    assert by_graph["vae_decoder"]["ok"]


def test_parity_cli_rewrites_manifest(tmp_path, capsys):
    from pixart_export.cli import main

    folder = copy_engine(tmp_path / "e")
    before = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**before, "parity": None}))
    assert main(["parity", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "parity: PASS" in out and "denoiser_lcm4_controlnet_128x128.onnx" in out
    after = json.loads((folder / "manifest.json").read_text())
    assert after["parity"]["ok"] and after["files"] == before["files"]
    check_files(folder, after)  # the manifest rewrite left every listed file valid
    assert main(["parity", str(folder), "--model", "tiny", "--controlnet", "none-such"]) == 2


def test_parity_cli_exit_code_on_failure(tmp_path, monkeypatch, capsys):
    """Exit status 1 (not 2: the input was fine, the engine is not) when a figure is out of tolerance."""
    from pixart_export.cli import main

    folder = copy_engine(tmp_path / "e")

    def failing(*args, **kwargs):  # the figures themselves are tested in test_wrong_weights_fail
        return {"ok": False, "graphs": [], "end_to_end": []}

    monkeypatch.setattr(parity, "measure", failing)
    assert main(["parity", str(folder), "--no-write"]) == 1
    assert "parity: FAIL" in capsys.readouterr().out
