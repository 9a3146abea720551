"""`build --target ov-cpu-int8 --controlnet`: int8 ControlNet graphs behind the int8 gates and the control
gate (int8 vs fp32 control IoU over fixed control scenes), and that the control gate can fail."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests._openvino_engine import int8_controlnet_engine, tiny_controlnet_model


@pytest.fixture
def int8_cn():
    return int8_controlnet_engine()


def test_int8_controlnet_engine(int8_cn):
    from pixart_export.backends.openvino.decoder import PRECISION
    from pixart_export.manifest import Precision
    from pixart_export.verify import CONTROL_GATE_SEED, CONTROL_IOU_TOLERANCE

    folder, manifest = int8_cn
    assert manifest.model.controlnet and manifest.default_precision == Precision.INT8
    prec = {r.graph: r.precision for r in manifest.graphs}
    assert prec == {
        "text_encoder": Precision.INT8_WEIGHTS,
        "transformer": Precision.INT8,
        "controlnet": Precision.INT8,
        "denoiser_lcm4": Precision.INT8,
        "denoiser_lcm4_controlnet": Precision.INT8,
        # the decoder's precision is chosen by measurement (backends/openvino/decoder.py, test_openvino_decoder)
        "vae_decoder": PRECISION[manifest.quantisation["vae_decoder"]["chosen"]][0],
        "vae_encoder": Precision.FP32,
    }
    q = manifest.quantisation
    # the ControlNet graphs: the settings chosen for the plain graphs, calibrated on control scenes
    cal = q["calibration"]["controlnet"]
    assert cal["controlnet_samples"] == 16 * 4 and cal["denoiser_samples"] == 16 and cal["held_out_scenes"] == 2
    assert cal["scene_seed"] != CONTROL_GATE_SEED
    for name in ("controlnet_128x128.xml", "denoiser_lcm4_controlnet_128x128.xml"):
        entry = q["graphs"][name]
        # the plain graphs' settings, or those with the ControlNet kept float where the plain ones miss the
        # int8 gate on the parity's fixed inputs (quantize.CONTROLNET_FLOAT); both figures recorded
        fallback = entry["controlnet_fallback"]
        assert fallback["settings"] == q["chosen"] and entry["settings"] == fallback["used"]
        assert (fallback["fixed_inputs_rel_l2"] > 0.1) == (entry["settings"] == q["chosen"] + "+float-controlnet")
        assert entry["f32_rest"]["rel_l2_mean"] < 0.1, entry
        print(f"{name}: rel L2 vs fp32 on held-out scenes {entry['f32_rest']['rel_l2_mean']:.4f}; {fallback}")
    parity = manifest.parity
    assert parity.ok and all(r["ok"] for r in parity.graphs)
    rows = {r["graph"]: r for r in parity.graphs}
    assert rows["controlnet"]["precision"] == rows["denoiser_lcm4_controlnet"]["precision"] == "int8"
    for g in ("controlnet", "denoiser_lcm4_controlnet"):
        print(f"{g}: rel L2 vs the reference (fixed inputs) {rows[g]['rel_l2']:.4f} (tolerance 0.1)")
    # the plain quality gate, and the ControlNet's: the same thresholds over 16 control scenes + control IoU
    quality = parity.quality
    assert quality["ok"]
    control = quality["controlnet"]
    assert control["ok"] and control["quality_ok"] and control["pairs"] == 16 == len(control["images"])
    assert control["thresholds"] == quality["thresholds"] and control["conditioning_scale"] == 1.0
    assert control["scenes"]["seed"] == CONTROL_GATE_SEED
    iou = control["control_iou"]
    assert iou["applies"] and iou["tolerance"] == CONTROL_IOU_TOLERANCE == 0.05
    assert abs(iou["mean"] - iou["reference_mean"]) <= 0.05 and iou["ok"]
    assert all("control_iou" in r and "reference_control_iou" in r for r in control["images"])
    print(
        f"ControlNet: PSNR {control['mean_psnr_db']} dB (worst {control['min_psnr_db']}), SSIM "
        f"{control['mean_ssim']}; control IoU int8 {iou['mean']} vs fp32 {iou['reference_mean']}"
    )


def test_int8_controlnet_runs_through_runtime(int8_cn):
    from PIL import Image

    from pixart_export.metrics import psnr_uint8
    from pixart_export.runtime import load
    from reference.pipeline import ReferencePipeline
    from reference.train.control import control_set

    folder, _ = int8_cn
    controls, _, captions, _ = control_set(7, 1, "edge")
    control = Image.fromarray(controls[0])
    got = load(folder)(captions[0], seed=5, control_image=control, output="np")
    want = ReferencePipeline(tiny_controlnet_model())([captions[0]], seed=5, control_image=control, output="pt")
    assert np.isfinite(got).all() and psnr_uint8(got[0], want.numpy()[0]) > 25


class _ZeroedResiduals:
    """The engine's runner with the ControlNet denoiser's conditioning scale forced to 0: its residuals
    zeroed, as an int8 ControlNet whose after_proj quantised to zero would give."""

    def __init__(self, runner):
        self.runner = runner

    def run(self, record, feeds):
        if record.graph.endswith("_controlnet"):
            feeds = {**feeds, "conditioning_scale": np.zeros_like(feeds["conditioning_scale"])}
        return self.runner.run(record, feeds)


def test_control_gate_fails_on_a_broken_int8_controlnet(int8_cn):
    """The control gate on an engine whose ControlNet does nothing: the images follow the caption, not the
    control, and the control IoU moves by more than 0.05 (the fp32 reference over the gate's 16 scenes:
    0.89 with the trained tiny ControlNet, 0.17 with the random non-zero test one, 0.53 without control)."""
    from pixart_export.backends.openvino.runner import OvRunner
    from pixart_export.manifest import Parity
    from pixart_export.runtime.pipeline import Pipeline
    from pixart_export.verify import QualityGate, control_gate, failures, pipeline_images, reference_images

    folder, manifest = int8_cn
    broken = Pipeline(folder, manifest, _ZeroedResiduals(OvRunner(folder)))
    record = control_gate(
        reference_images(tiny_controlnet_model(), 4), pipeline_images(broken), QualityGate(), (128, 128), print
    )
    iou = record["control_iou"]
    assert not record["ok"] and not iou["ok"] and abs(iou["difference"]) > 0.05
    messages = failures(Parity(ok=False, graphs=(), end_to_end=(), quality={"ok": True, "controlnet": record}))
    assert any(m.startswith("int8 ControlNet control IoU") for m in messages), messages
    assert all("\n" not in m for m in messages)


def _scene_images(kind: str):
    """(want, got) drawing functions for `control_gate` without a model: `want` draws each control scene
    itself; `got` draws the same (kind "same") or a blank white image (kind "blank")."""
    from pixart_export.verify import CONTROL_GATE_SEED
    from reference.train.control import control_set

    _, scenes, captions, _ = control_set(CONTROL_GATE_SEED, 16, "edge")
    by_caption = {c: s for c, s in zip(captions, scenes)}

    def want(prompts, seed, resolution, control):
        return by_caption[prompts[0]].transpose(2, 0, 1)[None].astype(np.float32) / 255

    def got(prompts, seed, resolution, control):
        return want(prompts, seed, resolution, control) if kind == "same" else np.ones((1, 3, 128, 128), np.float32)

    return want, got


def test_control_gate_figures_without_a_model():
    """The gate's arithmetic: identical images pass with equal IoU; blank images fail both the quality
    thresholds and the control IoU; "not applicable" records the reason and gates quality only."""
    from pixart_export.verify import QualityGate, control_gate

    gate, log = QualityGate(), lambda m: None
    same = control_gate(*_scene_images("same"), gate, (128, 128), log)
    assert same["ok"] and same["control_iou"]["mean"] == same["control_iou"]["reference_mean"] == 1.0
    blank = control_gate(*_scene_images("blank"), gate, (128, 128), log)
    assert not blank["ok"] and not blank["quality_ok"] and blank["control_iou"]["difference"] == -1.0
    skipped = control_gate(*_scene_images("blank"), gate, (128, 128), log, not_applicable="another model")
    assert not skipped["ok"] and skipped["control_iou"] == {
        "applies": False,
        "ok": True,
        "why": "not applicable: another model",
    }
    assert control_gate(*_scene_images("same"), gate, (128, 128), log, not_applicable="x")["ok"]


def test_control_iou_applies_to_the_miniature_only():
    from pixart_export.verify import scenes_domain
    from reference.loading import TINY_DIR

    assert scenes_domain(SimpleNamespace(source=TINY_DIR)) is None
    why = scenes_domain(SimpleNamespace(source=Path("/models/PixArt-XL-2-512x512")))
    assert "miniature's domain" in why and "PixArt-XL-2-512x512" in why


def test_int8_controlnet_options_are_checked():
    from pixart_export.backends.openvino.options import check, int8_options
    from pixart_export.errors import UserError

    options = int8_options()
    assert options["control_scenes"] == 16 and options["control_held_out"] == 2
    with pytest.raises(UserError, match="ControlNet calibration and held-out scene counts must be at least 1"):
        check({**options, "control_held_out": 0})
