"""pixart_export.targets: every row of ARCHITECTURE.md's table, clear refusal for unbuilt ones."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pixart_export.errors import UserError
from pixart_export.targets import TARGETS, buildable_target, get_target

ARCH = Path("/work/shared/ARCHITECTURE.md")


def test_registry_holds_every_architecture_row():
    expected = ["ort-cpu", "ov-cpu", "ov-cpu-int8", "trt-t4", "trt-v100", "trt-a100", "trt-h100"]
    assert list(TARGETS) == expected
    if ARCH.exists():  # the binding table, when the shared doc is present
        rows = re.findall(r"^\| `([a-z0-9-]+)` \| (ONNX Runtime|OpenVINO|TensorRT) \|", ARCH.read_text(), re.M)
        assert [r[0] for r in rows] == expected


def test_unbuilt_target_is_refused(monkeypatch):
    import dataclasses

    from pixart_export import targets

    assert buildable_target("ort-cpu").backend == "onnxruntime"
    monkeypatch.setitem(targets.TARGETS, "ov-cpu", dataclasses.replace(TARGETS["ov-cpu"], implemented=False))
    with pytest.raises(UserError, match="not implemented yet in this build"):
        buildable_target("ov-cpu")
    with pytest.raises(UserError, match="unknown target 'gpu'"):
        get_target("gpu")


def test_targets_command(capsys):
    from pixart_export.cli import main

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "ort-cpu" in out and "trt-h100" in out and "fp8 needs sm >= 8.9" in out
