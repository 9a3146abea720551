"""benchmarks/controlnet_tiny.py: the committed results re-render from their JSON (the markdown is a
function of the measured rows), and the curve reader and image grid work on the committed run records."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

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


def _layout_module():
    spec = importlib.util.spec_from_file_location("controlnet_layout", ROOT / "benchmarks" / "controlnet_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_sets_draw_the_condition_asked_for():
    """`--condition mask` gives a silhouette ControlNet filled silhouettes, not the outlines an edge one reads."""
    from reference.loading import load_model

    bench = _layout_module()
    model = load_model("tiny")
    edges, masks = bench.probe_set(model, "edge"), bench.probe_set(model, "mask")
    dark = lambda controls: float((controls.min(axis=-1) < 128).mean())  # noqa: E731
    assert dark(masks.controls) > 1.5 * dark(edges.controls)  # a filled disc covers more than its ring
    assert bench.heldout_set(model, 2, "mask").controls.shape == bench.heldout_set(model, 2).controls.shape


@pytest.mark.slow  # samples 8 rows of images on the student: minutes on 2 shared cores
def test_layout_benchmark_measures_the_shipped_controlnet_end_to_end(tmp_path):
    """benchmarks/controlnet_layout.py on a few scenes: every metric in its table, contradiction controls
    drawn the other way up from their captions, the renderer's own scenes at the metric's ceiling."""
    import json

    bench = _layout_module()
    labels = np.asarray([[1, 0, 0, 1, 2]])
    assert bench.flipped(labels).tolist() == [[1, 1, 2, 0, 0]]
    argv = ["--scenes", "2", "--seeds", "1", "--scales", "0,1", "--bootstrap", "20", "--classifier-steps", "2"]
    bench.main([*argv, "--classifier-images", "32", "--out", str(tmp_path), "--name", "t"])
    result = json.loads((tmp_path / "t.json").read_text())
    assert [r["key"] for r in result["rows"]] == ["none", "shipped@1"]
    assert result["meta"]["ceiling"]["mean"] == 1.0
    for row in result["rows"]:
        for metric in bench.METRICS:
            assert 0.0 <= row[metric]["lo"] <= row[metric]["mean"] <= row[metric]["hi"] <= 1.0
    assert result["rows"][0]["probe"]["mean"] == 0.0  # no control: nothing drawn off-centre
    text = (tmp_path / "t.md").read_text()
    assert "| shipped | 1 |" in text and (tmp_path / "t_grid.png").exists()


def test_the_shipped_card_is_written_from_the_committed_records():
    """MODEL_CARD.md of the shipped ControlNet is package_controlnet.card() of the committed JSONs: its
    placement, contradiction and gate lines are the measured ones, and a regenerated card is identical."""
    import json

    from reference.loading import TINY_DIR
    from reference.train import package_controlnet as package

    summary = json.loads((RESULTS / "controlnet_tiny_run" / "t3" / "summary.json").read_text())
    layout = json.loads((RESULTS / "controlnet_layout_shipped.json").read_text())
    text = package.card("t3", summary, json.loads((RESULTS / "controlnet_tiny.json").read_text()), layout, "shipped")
    assert text == (TINY_DIR / "controlnet" / "MODEL_CARD.md").read_text()
    at1 = next(r for r in layout["rows"] if r["key"] == "shipped@1")
    assert f"placement {at1['held-out']['mean']:.3f}" in text and "gate" in text
    assert "## Control convention" in text and "--invert-control" in text
