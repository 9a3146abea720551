"""benchmarks/controlnet_tiny.py: the committed results re-render from their JSON (the markdown is a
function of the measured rows), and the curve reader and image grid work on the committed run records."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _module():
    spec = importlib.util.spec_from_file_location("controlnet_tiny", ROOT / "benchmarks" / "controlnet_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_renders_from_the_committed_json(tmp_path):
    bench = _module()
    shutil.copy(RESULTS / "controlnet_tiny.json", tmp_path / "controlnet_tiny.json")
    bench.main(["--runs", str(tmp_path), "--render-only", "--out", str(tmp_path)])
    text = (tmp_path / "controlnet_tiny.md").read_text()
    assert text == (RESULTS / "controlnet_tiny.md").read_text()
    assert "| student LCM + t3 at scale 1 | 1 |" in text and "Transformer N=3 - UNet (3 copies)" in text


def test_curves_and_grid_from_the_run_records():
    bench = _module()
    steps, iou = bench.read_curve(RESULTS / "controlnet_tiny_run", "t3")
    assert steps[0] == 0 and steps[-1] == 600 and len(steps) == len(iou)
    assert iou[-1] > iou[0] + 0.2  # the recorded curve rises
    images = np.full((2, 128, 128, 3), 255, dtype=np.uint8)
    grid = bench.grid([("a", images), ("b", images)], rows=2)
    assert grid.size == (256, 14 + 256)
    assert bench.condition_of("t3m") == "mask" and bench.condition_of("u3") == "edge"
