"""pixart_export.manifest: schema-2 dataclasses validated on read, one writer, atomic writes, file tables,
version comparison."""

from __future__ import annotations

import json

import pytest

from pixart_export import manifest as M
from tests._tiny_engine import copy_engine, engine  # noqa: F401 - fixtures


def test_write_json_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "manifest.json"
    M.write_json_atomic(path, {"a": 1})
    M.write_json_atomic(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp files left


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "manifest.json"
    M.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        M.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_file_table_skips_manifest_and_dotfiles(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"abc")
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / ".DS_Store").write_text("x")
    table = M.file_table(tmp_path)
    assert list(table) == ["sub/a.bin"]
    assert table["sub/a.bin"] == M.FileEntry("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 3)


def test_version_order():
    assert M.version_tuple("1.32.0") > M.version_tuple("1.9.1")
    assert M.version_tuple("1.20.0+cpu") == (1, 20, 0)


@pytest.mark.parametrize(
    "rel,ok",
    [
        ("a.onnx", True),
        ("tokenizer/x.json", True),
        ("../x", False),
        ("/etc/passwd", False),
        ("a/../../b", False),
        ("a\\b", False),
    ],
)
def test_safe_relative_paths(rel, ok):
    assert M.safe_rel(rel) is ok


def _manifest_json(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_round_trip_and_one_writer(engine, tmp_path):  # noqa: F811
    """What write_manifest writes, read_manifest reads back equal; JSON has no inf/NaN."""
    folder = copy_engine(tmp_path / "e")
    manifest = M.read_manifest(folder)
    assert M.manifest_from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    M.write_manifest(folder, manifest)
    assert M.read_manifest(folder) == manifest
    text = (folder / "manifest.json").read_text()
    assert "Infinity" not in text and "NaN" not in text


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["graphs"][0].update(precision="int9"), r"graphs\[0\]\.precision: 'int9' is not one of fp32"),
        (lambda m: m["graphs"][1].pop("inputs"), r"graphs\[1\]\.inputs: missing"),
        (lambda m: m.update(steps="4"), r"steps: expected int, got '4'"),
        (lambda m: m["tokenizer"].update(max_length=None), r"tokenizer\.max_length: expected int, got None"),
        (lambda m: m.update(surprise=1), r"unknown field\(s\) surprise"),
        (lambda m: m["graphs"][0].update(file="../outside/vae.onnx"), r"not a plain relative path inside the folder"),
        (lambda m: m["graphs"][0].update(files=["x.onnx"]), r"names 'x.onnx', which is not listed"),
        (lambda m: m["tokenizer"].update(dir="../tok"), r"tokenizer folder '../tok' is not inside the folder"),
        (lambda m: m.update(schema_version=1), r"schema version 1.*rebuild the engine with this version"),
    ],
)
def test_invalid_manifests_name_the_field(engine, tmp_path, edit, message):  # noqa: F811
    folder = copy_engine(tmp_path / "e")
    data = _manifest_json(folder)
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(M.EngineError, match=message):
        M.read_manifest(folder)


def test_record_selection_by_precision(engine):  # noqa: F811
    import dataclasses

    _, manifest = engine
    rec = manifest.graphs[1]
    int8 = dataclasses.replace(rec, file="x.int8.onnx", precision=M.Precision.INT8)
    both = dataclasses.replace(manifest, graphs=manifest.graphs + (int8,))
    assert both.choosable_precisions == (M.Precision.FP32, M.Precision.INT8)
    assert both.record(rec.graph, rec.height, rec.width, M.Precision.INT8) is int8
    assert both.record(rec.graph, rec.height, rec.width, M.Precision.FP32) is rec
    assert manifest.choosable_precisions == (M.Precision.FP32,)
    with pytest.raises(M.EngineError, match="no transformer graph for 64x64"):
        manifest.record("transformer", 64, 64)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.update(status="compiled"), r"status 'compiled' is not one of ready for ort-cpu"),
        (lambda m: m.update(target="tvm-cpu"), r"target 'tvm-cpu' is unknown"),
        (lambda m: m["backend"].update(name="openvino"), r"target ort-cpu runs on onnxruntime, but the manifest says"),
    ],
)
def test_registry_agreement(engine, tmp_path, edit, message):  # noqa: F811
    from pixart_export.targets import read_engine

    folder = copy_engine(tmp_path / "e")
    data = _manifest_json(folder)
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    M.read_manifest(folder)  # structurally fine
    with pytest.raises(M.EngineError, match=message):
        read_engine(folder)
