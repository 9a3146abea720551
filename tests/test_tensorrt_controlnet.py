"""build --target trt-t4 --controlnet on CPU: the ControlNet graphs go through the precision gates of their
precision like the plain ones (fp16, and int8 weight-only Q/DQ where the plain graphs get it), measured
in onnxruntime against their fp32 graphs on held-out control scenes, with an int8 ControlNet end-to-end
row. One bundle (~1.5 min on 2 quiet cores, ~3.5 min shared): behind `slow` to keep the default suite under
10 minutes (`-m slow` runs it; the ov-cpu-int8 ControlNet gates stay in the default suite)."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import pytest

from pixart_export.manifest import Manifest, Precision
from tests._exports import controlnet_export

pytestmark = pytest.mark.slow

CONTROL_GRAPHS = ("controlnet", "denoiser_lcm4_controlnet")


@functools.lru_cache(maxsize=None)
def controlnet_bundle() -> tuple[Path, Manifest]:
    import atexit

    from pixart_export.build import build_target
    from tests._controlnet import controlnet_under_test

    root = Path(tempfile.mkdtemp(prefix="pixart-export-trt-cn-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out, manifest, reused = build_target(
        "trt-t4",
        "tiny",
        controlnet_spec=controlnet_under_test(),
        out=root / "trt-t4-tiny-cn",
        onnx_from=controlnet_export(),
        log=lambda m: None,
    )
    assert not reused
    return out, manifest


def test_controlnet_graphs_pass_their_precision_gates():
    from pixart_export.calibration import CONTROL_CALIBRATION_SEED
    from pixart_export.verify import gated_rows, tolerance

    folder, manifest = controlnet_bundle()
    got = {(r.graph, str(r.precision)) for r in manifest.graphs}
    for graph in CONTROL_GRAPHS:
        assert {(graph, "fp16"), (graph, "int8")} <= got
    cal = manifest.build["calibration"]["controlnet"]
    assert cal["scene_seed"] == CONTROL_CALIBRATION_SEED and cal["scenes"] == 16 and cal["held_out_scenes"] == 4
    parity = manifest.parity
    assert parity.ok and all(r["ok"] for r in gated_rows(parity.graphs))
    for graph in CONTROL_GRAPHS:
        rows = {r["precision"]: r for r in parity.graphs if r["graph"] == graph}
        assert set(rows) == {"fp32", "fp16", "int8"}
        assert rows["fp32"]["against"] == "PyTorch reference"
        for precision in ("fp16", "int8"):
            row = rows[precision]
            # measured against the fp32 graph on held-out control scenes (controlled trajectories), not on
            # the fixed random inputs, within the tolerance of the precision
            assert row["against"] == "fp32 graph" and row["inputs"] == "held-out prompts" and row["samples"] > 0
            assert row["tol_rel_l2"] == tolerance(graph, Precision(precision)).rel_l2
            assert row["ok"] and row["rel_l2"] <= row["tol_rel_l2"]
            print(f"{row['file']:44} {precision:5} rel L2 {row['rel_l2']:.2e} (tolerance {row['tol_rel_l2']:.0e})")
    int8 = manifest.record("denoiser_lcm4_controlnet", 128, 128, Precision.INT8)
    assert int8.precision == Precision.INT8 and int8.details["int8"]["int8_layers"] > 0
    assert manifest.record("controlnet", 128, 128, Precision.INT8).details["int8"]["int8_layers"] > 0
    assert manifest.build["check"]["ok"]


def test_controlnet_end_to_end_rows_for_fp16_and_int8():
    _, manifest = controlnet_bundle()
    rows = {(r["case"], r["precision"]): r for r in manifest.parity.end_to_end}
    assert set(rows) == {("text2image", "fp16"), ("controlnet", "fp16"), ("text2image", "int8"), ("controlnet", "int8")}
    assert all(r["ok"] for r in rows.values())
    # the int8 ControlNet row runs the int8 ControlNet denoiser (what `run --precision int8` picks)
    assert "denoiser_lcm4_controlnet_128x128.int8.onnx" in rows[("controlnet", "int8")]["graphs"]
    for (case, precision), r in sorted(rows.items()):
        print(f"end to end {case} {precision}: PSNR {r['psnr_db']} dB (min {r['min_psnr_db']})")
