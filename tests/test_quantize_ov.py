"""`build --target ov-cpu-int8` on tiny: NNCF int8, measured choices and the quality gate in the manifest."""
from __future__ import annotations

import pytest

from tests._ov_engine import int8_engine, model, ov_cpu, ov_int8  # noqa: F401 - fixtures


def test_prompt_files_shipped():
    from pixart_export.quantize_ov import CALIBRATION_PROMPTS, QUALITY_PROMPTS, read_prompts

    calib, quality = read_prompts(CALIBRATION_PROMPTS), read_prompts(QUALITY_PROMPTS)
    assert len(calib) >= 18 and len(quality) >= 16
    assert not set(calib) & set(quality)  # the gate is measured on held-out prompts


def test_calibration_follows_the_reference_sampler(model):  # noqa: F811
    from pixart_export.quantize_ov import collect_calibration

    steps, loops = collect_calibration(model, ["a cat", "a dog"], 128, 128, 4, [2, 1, 64, 128])
    assert len(steps) == 8 and len(loops) == 2
    assert steps[0]["latents"].shape == (1, 4, 16, 16) and loops[0]["step_noise"].shape == (3, 1, 4, 16, 16)
    assert [float(s["timestep"][0]) for s in steps[:4]] == [999.0, 759.0, 499.0, 259.0]
    assert (steps[0]["latents"] == loops[0]["latents"]).all()  # step 1 sees x_T


def test_int8_engine(ov_int8, ov_cpu):  # noqa: F811
    folder, manifest = ov_int8
    q = manifest["quantisation"]
    prec = {r["graph"]: r["precision"] for r in manifest["graphs"]}
    assert prec["transformer"].startswith("int8 (NNCF PTQ") and prec["denoiser_lcm4"].startswith("int8 (NNCF PTQ")
    assert prec["text_encoder"].startswith("int8 weights") and prec["vae_decoder"] == "fp32"
    for rec in manifest["graphs"]:
        assert rec["openvino"]["config"]["INFERENCE_PRECISION_HINT"] in ("f32", "bf16")
    # one candidate given: used as it is (no trial); the default options try and score several
    assert q["chosen"] == "fp32-outside-blocks" and q["candidates"] == []
    assert q["calibration"]["transformer_samples"] == 8 and q["calibration"]["held_out_samples"] == 4
    # per-graph errors recorded; the quality gate over >= 16 held-out prompt/seed pairs passed
    parity = manifest["parity"]
    assert parity["ok"] and all(r["rel_l2"] < 0.2 for r in parity["graphs"])
    quality = parity["quality"]
    assert quality["ok"] and quality["pairs"] >= 16 and len(quality["images"]) == quality["pairs"]
    assert quality["mean_psnr_db"] >= 25 and quality["mean_ssim"] >= 0.8
    # int8 weights: the transformer files are about 4x smaller; the unrolled graph stores them once
    # (weights are in the .bin; the unrolled .xml lists K times the nodes, so it is compared apart)
    def weights(folder, rec):
        return (folder / rec["files"][1]).stat().st_size

    fp32 = {r["graph"]: weights(ov_cpu[0], r) for r in ov_cpu[1]["graphs"]}
    int8 = {r["graph"]: weights(folder, r) for r in manifest["graphs"]}
    assert int8["transformer"] < 0.5 * fp32["transformer"]
    assert int8["denoiser_lcm4"] < 1.2 * int8["transformer"]


def test_quality_gate_fails_with_a_clear_message(ov_int8, model, tmp_path):  # noqa: F811
    from pixart_export.build_ov import gate_failure_message
    from pixart_export.runtime import load
    from tests._ov_engine import small_int8_options
    from pixart_export.quantize_ov import quality_gate

    folder, _ = ov_int8
    options = small_int8_options(min_mean_psnr_db=99.0)
    quality = quality_gate(model, load(folder), options, (128, 128), 4, log=lambda m: None)
    assert not quality["ok"] and quality["pairs"] == 16
    message = gate_failure_message(quality, tmp_path / "x")
    assert message.startswith("int8 quality gate failed: mean PSNR") and "(min 99.0)" in message
    assert "\n" not in message


def test_int8_runs_through_runtime(ov_int8, model):  # noqa: F811
    from pixart_export.quantize_ov import psnr_uint8
    from pixart_export.runtime import load
    from reference.pipeline import ReferencePipeline

    folder, _ = ov_int8
    got = load(folder)("a red apple on a blue plate", seed=5, output="np")
    want = ReferencePipeline(model)(["a red apple on a blue plate"], seed=5, output="pt").numpy()
    assert psnr_uint8(got[0], want[0]) > 25
