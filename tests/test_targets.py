"""pixart_export.targets: the registry, its backend objects, and the README's targets table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pixart_export.errors import UserError
from pixart_export.targets import TARGETS, backends, get_target

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("__init__.py", "prepare.py", "runner.py", "options.py")
PROTOCOL = (
    "name",
    "extra",
    "statuses",
    "code",
    "installed_version",
    "versions",
    "backend_info",
    "device",
    "check_request",
    "add_options",
    "options",
    "stages",
    "verify",
    "remeasure",
    "runner",
    "check_host",
    "finish",
)


def test_every_backend_folder_has_the_same_parts():
    root = ROOT / "pixart_export" / "backends"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert [p.name for p in folders] == ["onnxruntime", "openvino", "tensorrt"]
    for folder in folders:
        missing = [part for part in PARTS if not (folder / part).is_file()]
        assert not missing, f"{folder.name} lacks {missing}"


@pytest.mark.parametrize("backend", backends(), ids=repr)
def test_backend_objects_implement_the_protocol(backend):
    missing = [name for name in PROTOCOL if not hasattr(backend, name)]
    assert not missing, missing
    assert backend.code and all((ROOT / c).exists() for c in backend.code)


def test_targets_hold_backend_objects():
    assert get_target("ort-cpu").backend.name == "onnxruntime"
    assert get_target("ov-cpu-int8").backend.name == "openvino"
    assert all(t.backend.name == "tensorrt" for n, t in TARGETS.items() if n.startswith("trt-"))
    with pytest.raises(UserError, match="unknown target 'gpu'"):
        get_target("gpu")


def test_readme_targets_table_matches_the_registry():
    """The README's table (what users read) lists every target with its backend and where it is verified."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\w+) \| ([^|]+) \| ([^|]+) \|", text, re.M)
    assert [r[0] for r in rows] == list(TARGETS)
    for name, backend, extra, verified in rows:
        target = TARGETS[name]
        assert backend == target.backend.name, name
        assert extra.strip() == f"`{target.backend.extra}`", name
        assert verified.strip() == target.verified, name


def test_targets_command(capsys):
    from pixart_export.cli import main

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "ort-cpu" in out and "trt-h100" in out and "fp8 needs sm >= 8.9" in out and "GPU only" in out
