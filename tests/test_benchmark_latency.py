"""The arithmetic behind issue 22's published figures: the speed-up keys of `benchmarks/latency.py` and the
roofline rows and bound of `benchmarks/roofline.py` (pure functions on a latency run's JSON; the timing
itself is the benchmarks' job, never a unit test's)."""

from __future__ import annotations

import pytest

from benchmarks.latency import speedups
from benchmarks.roofline import bound, roofline


def _stage(seconds: float) -> dict:
    return {"median_s": seconds, "min_s": seconds, "max_s": seconds}


BACKENDS = {
    "diffusers": {"stages": {"transformer_step": _stage(8.0), "end_to_end": _stage(48.0)}},
    "ov-cpu-int8": {
        "stages": {
            "text_encoder": _stage(0.5),
            "transformer_step": _stage(2.0),
            "denoiser_lcm4": _stage(8.0),
            "vae_decoder": _stage(6.0),
            "end_to_end": _stage(16.0),
        }
    },
    "ov-cpu-int8+preview": {"stages": {"vae_decoder": _stage(0.5), "end_to_end": _stage(12.0)}},
    "diffusers+tiny-vae": {"stages": {"vae_decoder": _stage(1.0), "end_to_end": _stage(32.0)}},
}


def test_speedups_are_diffusers_over_ours_per_stage():
    got = speedups(BACKENDS)
    assert got == {
        "e2e_speedup_full": 3.0,
        "e2e_speedup_preview": 4.0,
        "step_speedup": 4.0,
        "diffusers_tiny_vae_e2e_speedup": 1.5,
    }


def test_speedups_are_none_where_a_row_did_not_run():
    partial = {k: v for k, v in BACKENDS.items() if k != "ov-cpu-int8+preview"}
    got = speedups(partial)
    assert got["e2e_speedup_preview"] is None and got["e2e_speedup_full"] == 3.0


PEAKS = {"peaks_gflops": {"f32": 100.0, "int8": 400.0, "bf16": 200.0}}
WORK = {
    "transformer_step": {"linear": 800.0, "attention": 100.0},
    "vae_decoder": {"conv": 1200.0},
    "vae_decoder_preview": {"conv": 50.0},
    "text_encoder": {"linear": 40.0},
}


def test_roofline_puts_each_stage_at_the_peak_of_its_precision():
    latency = {"backends": BACKENDS, "vae_decoder_choice": {"chosen": "bf16"}}
    rows = {(r["stage"], r["backend"]): r for r in roofline(latency, PEAKS, WORK)}
    # diffusers: the whole step at the fp32 peak
    assert rows[("transformer step", "diffusers")]["roofline_s"] == pytest.approx(9.0)
    assert rows[("transformer step", "diffusers")]["of_peak"] == pytest.approx(9.0 / 8.0, abs=1e-3)
    # int8: linear layers at the int8 peak, attention's products at fp32
    assert rows[("transformer step", "ov-cpu-int8")]["roofline_s"] == pytest.approx(800 / 400 + 100 / 100)
    assert rows[("denoiser_lcm4", "ov-cpu-int8")]["roofline_s"] == pytest.approx(4 * 3.0)
    # the decoder at the peak of the precision the gate chose
    assert rows[("VAE decoder", "ov-cpu-int8")]["roofline_s"] == pytest.approx(1200 / 200)
    assert rows[("VAE decoder", "ov-cpu-int8")]["of_peak"] == pytest.approx(1.0)
    # a stage the run did not measure has no fraction
    assert rows[("VAE decoder", "diffusers")]["measured_s"] is None
    assert rows[("VAE decoder", "diffusers")]["of_peak"] is None


def test_bound_adds_the_stages_a_user_waits_for():
    latency = {"backends": BACKENDS, "vae_decoder_choice": {"chosen": "int8"}}
    got = bound(roofline(latency, PEAKS, WORK), latency)
    text, denoiser = 40 / 400, 4 * 3.0
    assert got["e2e_roofline_s_full"] == pytest.approx(text + denoiser + 1200 / 400, abs=1e-3)
    assert got["e2e_roofline_s_preview"] == pytest.approx(text + denoiser + 50 / 100, abs=1e-3)
    assert got["e2e_speedup_at_roofline_full"] == pytest.approx(48.0 / (text + denoiser + 3.0), abs=0.01)
