"""pixart_export.build: one command, atomic install, reuse by build key, measured optimisation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from pixart_export import build as B
from pixart_export import export_onnx, identity, optimize_ort
from pixart_export.errors import UserError
from pixart_export.parity import rel_l2
from tests._tiny_engine import copy_engine, engine  # noqa: F401 - fixtures


def test_manifest_contents(engine):  # noqa: F811
    folder, manifest = engine
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    for key in ("schema_version", "toolchain", "target", "backend", "precision", "model", "files", "graphs", "lcm",
                "resolutions", "parity", "build_key", "tokenizer"):
        assert key in on_disk, key
    assert on_disk["target"] == "ort-cpu" and on_disk["backend"]["name"] == "onnxruntime"
    assert on_disk["backend"]["version"] == ort.__version__
    assert set(on_disk["precision"].values()) == {"fp32"}
    assert len(on_disk["model"]["identity"]) == len(on_disk["model"]["weights_hash"]) == 64
    assert on_disk["resolutions"] == [[128, 128]]
    assert on_disk["parity"]["ok"] is True
    assert {"tokenizer/tokenizer_config.json"} <= set(on_disk["files"])
    assert all(g["file"] in on_disk["files"] for g in on_disk["graphs"])
    assert not list(folder.parent.glob(f".{folder.name}.*"))  # no temporary or old folders left


def test_identical_rebuild_is_reused(engine):  # noqa: F811
    folder, manifest = engine
    before = (folder / "manifest.json").stat().st_mtime_ns
    lines = []
    out, again, reused = B.build("ort-cpu", "tiny", folder, controlnet_spec="tiny", optimise=False, log=lines.append)
    assert reused and again["build_key"] == manifest["build_key"]
    assert (folder / "manifest.json").stat().st_mtime_ns == before
    assert any("up to date" in line for line in lines)


def test_changed_file_is_not_reused(tmp_path, monkeypatch):
    """Same key but a file no longer matching its sha256: not reusable (keyed by content, not existence)."""
    folder = copy_engine(tmp_path / "e")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert B._reusable(folder, manifest["build_key"], verify=True) is not None
    assert B._reusable(folder, "0" * 64, verify=True) is None
    (folder / "text_encoder.onnx").write_bytes(b"broken")
    assert B._reusable(folder, manifest["build_key"], verify=True) is None


def test_build_key_tracks_inputs(engine):  # noqa: F811
    _, manifest = engine
    ident = {"identity": manifest["model"]["identity"]}
    versions = manifest["toolchain"]
    base = {"target": "ort-cpu", "resolutions": [[128, 128]], "steps": 4}
    key = identity.build_key(ident, base, versions)
    assert key == identity.build_key(ident, dict(base), versions)
    assert key != identity.build_key(ident, {**base, "steps": 2}, versions)
    assert key != identity.build_key({"identity": "x"}, base, versions)
    assert key != identity.build_key(ident, base, {**versions, "onnxruntime": "0.0"})


def test_interrupted_build_leaves_old_engine(tmp_path, monkeypatch):
    """Ctrl-C in the middle of the export: the old engine stays as it was, no temporary folder remains."""
    folder = copy_engine(tmp_path / "e")
    before = sorted(p.name for p in folder.iterdir())

    def interrupted(model, out, *args, **kwargs):
        (out / "half-written.onnx").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_onnx, "export_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        B.build("ort-cpu", "tiny", folder, controlnet_spec="tiny", force=True, log=lambda m: None)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_refuses_to_replace_a_non_engine_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an engine folder"):
        B.build("ort-cpu", "tiny", tmp_path / "mine", log=lambda m: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_optimisation_is_measured_and_exact(tmp_path, engine):  # noqa: F811
    folder, manifest = engine
    rec = json.loads(json.dumps(next(r for r in manifest["graphs"] if r["graph"] == "text_encoder")))
    shutil.copy(folder / rec["file"], tmp_path / rec["file"])
    before = ort.InferenceSession(str(folder / rec["file"]), providers=["CPUExecutionProvider"])
    [decision] = optimize_ort.optimise_graphs(tmp_path, [rec])
    assert decision["load_and_first_run_s"] > 0 and decision["optimised_load_and_first_run_s"] > 0
    assert decision["kept"] == (decision["optimised_load_and_first_run_s"]
                                < (1 - optimize_ort.MIN_GAIN) * decision["load_and_first_run_s"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [rec["file"]]  # candidate removed or moved in place
    after = ort.InferenceSession(str(tmp_path / rec["file"]), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.arange(240, dtype=np.int64).reshape(2, 120) % 250 + 3,
             "attention_mask": np.ones((2, 120), np.int64)}
    assert rel_l2(after.run(None, feeds)[0], before.run(None, feeds)[0]) <= 1e-6


def test_build_cli_reports_stages(engine, capsys):  # noqa: F811
    from pixart_export.cli import main

    folder, _ = engine
    code = main(["build", "--target", "ort-cpu", "--model", "tiny", "--controlnet", "tiny", "--no-optimise",
                 "--out", str(folder)])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip() == str(folder)
    assert "[1/6] load model tiny" in err and "up to date" in err
    assert main(["build", "--target", "ort-cpu", "--resolution", "12x", "--out", str(folder)]) == 2
    assert "--resolution '12x'" in capsys.readouterr().err
