"""XL-size export (28 blocks, width 1152, 4096-wide captions, 64x64 latents): slow, opt-in (-m slow).

Runs `benchmarks/export_xl.py`: the transformer and the unrolled denoiser_lcm4 must export with
external data (fp32 XL is ~2.3 GiB, over protobuf's 2 GB), pass onnx.checker, keep the denoiser within
10% of the transformer's size (weights once) and match the reference at relative L2 <= 1e-4 (fp32).
Takes tens of minutes and ~10 GiB of memory on a 2-core machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_export_xl(tmp_path):
    spec = importlib.util.spec_from_file_location("export_xl", ROOT / "benchmarks" / "export_xl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = tmp_path / "export_xl.md"
    assert module.main(["--out", str(tmp_path / "xl"), "--results", str(report)]) == 0
    text = report.read_text()
    assert "`denoiser_lcm4`" in text and "external data" in text
