"""pixart_export.manifest: atomic writes, file tables, version comparison."""
from __future__ import annotations

import json

import pytest

from pixart_export import manifest as M


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
    assert table["sub/a.bin"] == {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                                  "bytes": 3}


def test_version_order():
    assert M._version_tuple("1.32.0") > M._version_tuple("1.9.1")
    assert M._version_tuple("1.20.0+cpu") == (1, 20, 0)
    M.check_backend({"backend": {"name": "onnxruntime", "version": "1.18.0"}, "target": "ort-cpu"},
                    "onnxruntime", "1.32.0")


@pytest.mark.parametrize("rel,ok", [("a.onnx", True), ("tokenizer/x.json", True), ("../x", False),
                                    ("/etc/passwd", False), ("a/../../b", False), ("a\\b", False)])
def test_safe_relative_paths(rel, ok):
    assert M._safe_rel(rel) is ok
