"""pixart_export.build and engine_folder: one pipeline of stages, atomic install, reuse by build key,
replace only what we wrote, measured optimisation."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from pixart_export import engine_folder as F
from pixart_export.backends.onnxruntime import optimize
from pixart_export.build import build_target
from pixart_export.errors import UserError
from pixart_export.export import exporter
from pixart_export.manifest import Precision, read_manifest
from pixart_export.metrics import rel_l2
from pixart_export.targets import backends
from tests._controlnet import controlnet_under_test
from tests._tiny_engine import copy_engine, engine  # noqa: F401 - fixtures


def test_manifest_contents(engine):  # noqa: F811
    folder, manifest = engine
    assert read_manifest(folder) == manifest
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["schema_version"] == 2
    assert manifest.target == "ort-cpu" and manifest.backend.name == "onnxruntime"
    assert manifest.backend.version == ort.__version__
    assert {r.precision for r in manifest.graphs} == {Precision.FP32} and manifest.default_precision == Precision.FP32
    assert len(manifest.model.identity) == len(manifest.model.weights_hash) == 64
    assert manifest.resolutions == ((128, 128),)
    assert manifest.parity.ok is True
    assert "tokenizer/tokenizer_config.json" in manifest.files
    assert all(g.file in manifest.files for g in manifest.graphs)
    assert not list(folder.parent.glob(f".{folder.name}.*"))  # no temporary or old folders left


def test_identical_rebuild_is_reused(engine):  # noqa: F811
    folder, manifest = engine
    before = (folder / "manifest.json").stat().st_mtime_ns
    lines = []
    out, again, reused = build_target(
        "ort-cpu",
        "tiny",
        out=folder,
        controlnet_spec=controlnet_under_test(),
        options={"optimise": False},
        log=lines.append,
    )
    assert reused and again.build_key == manifest.build_key
    assert (folder / "manifest.json").stat().st_mtime_ns == before
    assert any("up to date" in line for line in lines)
    assert lines[0].startswith("[1/5] load model tiny")


def test_changed_file_is_not_reused(tmp_path):
    """Same key but a file no longer matching its sha256: not reusable (keyed by content, not existence)."""
    folder = copy_engine(tmp_path / "e")
    manifest = read_manifest(folder)
    assert F.reusable(folder, manifest.build_key, need_parity=True) is not None
    assert F.reusable(folder, "0" * 64, need_parity=True) is None
    (folder / "text_encoder.onnx").write_bytes(b"broken")
    assert F.reusable(folder, manifest.build_key, need_parity=True) is None


def test_build_key_tracks_inputs(engine):  # noqa: F811
    _, manifest = engine
    versions = manifest.toolchain
    base = {"target": "ort-cpu", "resolutions": [[128, 128]], "steps": 4}
    key = F.build_key(manifest.model.identity, base, versions, ())
    assert key == F.build_key(manifest.model.identity, dict(base), versions, ())
    assert key != F.build_key(manifest.model.identity, {**base, "steps": 2}, versions, ())
    assert key != F.build_key("x", base, versions, ())
    assert key != F.build_key(manifest.model.identity, base, {**versions, "onnxruntime": "0.0"}, ())


@pytest.mark.parametrize("backend", backends(), ids=repr)
def test_build_key_covers_every_file_of_the_backend(backend, tmp_path):
    """Editing any module of a backend (or of the shared export code) changes its build key; and every
    file of the backend's folder is covered (the stale-folder bug of issue 11)."""
    root = tmp_path / "repo"
    paths = F.COMMON_CODE + tuple(backend.code)
    files = F.code_files(paths)
    folder = f"pixart_export/backends/{type(backend).__module__.split('.')[2]}"
    on_disk = {
        p.relative_to(F.ROOT).as_posix() for p in (F.ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts
    }
    assert on_disk <= set(files), on_disk - set(files)
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(F.ROOT / rel, root / rel)
    key = F.code_hash(paths, root)
    for rel in files:
        original = (root / rel).read_bytes()
        (root / rel).write_bytes(original + b"\n# edited\n")
        assert F.code_hash(paths, root) != key, rel
        (root / rel).write_bytes(original)
    assert F.code_hash(paths, root) == key


def test_interrupted_build_leaves_old_engine(tmp_path, monkeypatch):
    """Ctrl-C in the middle of the export: the old engine stays as it was, no temporary folder remains."""
    folder = copy_engine(tmp_path / "e")
    before = sorted(p.name for p in folder.iterdir())

    def interrupted(model, out, *args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "half-written.onnx").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "export_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_target(
            "ort-cpu", "tiny", out=folder, controlnet_spec=controlnet_under_test(), force=True, log=lambda m: None
        )
    assert sorted(p.name for p in folder.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_leftovers_of_a_killed_build_are_removed(tmp_path):
    """Only folders whose name and owner marker prove a build of this `--out` made them, and whose process
    is gone; an unmarked folder of the same name shape is the user's (issue 26)."""
    out = tmp_path / "e"
    dead = tmp_path / ".e.building-999999999-abc"  # no such process
    dead.mkdir()
    (dead / F.OWNER).write_text(json.dumps({"pid": 999999999, "out": "e", "kind": "building"}))
    alive = tmp_path / f".e.building-{os.getpid()}-abc"  # a build still running (this process)
    alive.mkdir()
    (alive / F.OWNER).write_text(json.dumps({"pid": os.getpid(), "out": "e", "kind": "building"}))
    unmarked = tmp_path / ".e.building-999999998-abc"  # the same shape of name, no marker: not ours
    unmarked.mkdir()
    assert F.clean_leftovers(out) == [dead]
    assert alive.exists() and unmarked.exists() and not dead.exists()


def test_refuses_to_replace_what_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="did not write"):
        build_target("ort-cpu", "tiny", out=tmp_path / "mine", log=lambda m: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # a folder with someone's own manifest.json is not proof of an engine folder
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(UserError, match="did not write"):
        F.check_destination(tmp_path / "web")
    # an engine folder with a file added beside the listed ones
    folder = copy_engine(tmp_path / "e")
    (folder / "my-notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write"):
        F.check_destination(folder)
    (folder / "my-notes.txt").unlink()
    F.check_destination(folder)  # ours, as written: may be replaced


def test_optimisation_is_measured_and_exact(tmp_path, engine):  # noqa: F811
    folder, manifest = engine
    rec = next(r for r in manifest.graphs if r.graph == "text_encoder")
    shutil.copy(folder / rec.file, tmp_path / rec.file)
    before = ort.InferenceSession(str(folder / rec.file), providers=["CPUExecutionProvider"])
    as_dict = {
        "file": rec.file,
        "files": list(rec.files),
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in rec.inputs],
    }
    [decision] = optimize.optimise_graphs(tmp_path, [as_dict])
    assert decision["load_and_first_run_s"] > 0 and decision["optimised_load_and_first_run_s"] > 0
    assert decision["kept"] == (
        decision["optimised_load_and_first_run_s"] < (1 - optimize.MIN_GAIN) * decision["load_and_first_run_s"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [rec.file]  # candidate removed or moved in place
    after = ort.InferenceSession(str(tmp_path / rec.file), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": np.arange(240, dtype=np.int64).reshape(2, 120) % 250 + 3,
        "attention_mask": np.ones((2, 120), np.int64),
    }
    assert rel_l2(after.run(None, feeds)[0], before.run(None, feeds)[0]) <= 1e-6


def test_build_cli_reports_stages(engine, capsys):  # noqa: F811
    from pixart_export.cli import main

    folder, _ = engine
    code = main(
        [
            "build",
            "--target",
            "ort-cpu",
            "--model",
            "tiny",
            "--controlnet",
            controlnet_under_test(),
            "--no-optimise",
            "--out",
            str(folder),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["folder"] == str(folder) and json.loads(out)["reused"] is True
    assert "[1/5] load model tiny" in err and "up to date" in err
    with pytest.raises(SystemExit) as exc:
        main(["build", "--target", "ort-cpu", "--resolution", "12x", "--out", str(folder)])
    assert exc.value.code == 2
    assert "'12x': give PX or HEIGHTxWIDTH" in capsys.readouterr().err
