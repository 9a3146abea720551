"""`backends/openvino/decoder.py`: the ov-cpu-int8 VAE decoder's precision chosen by measurement on tiny.

The shared int8 engine's manifest carries every candidate's figures and the choice; the gate and the
choice on given figures; a direct run of the chooser on a CPU without bf16 (forced off through the
options' CPU record) skips that candidate, saying why."""

from __future__ import annotations

import shutil

from tests._openvino_engine import model, ov_cpu, ov_int8  # noqa: F401 - fixtures


def test_bf16_only_where_the_cpu_has_it():
    from pixart_export.backends.openvino.decoder import bf16_skip_reason

    assert bf16_skip_reason({"cpu": ["Zen 4", ["avx2", "avx512f", "avx512_bf16"]]}) is None
    assert bf16_skip_reason({"cpu": ["Sapphire Rapids", ["avx2", "amx_bf16"]]}) is None
    reason = bf16_skip_reason({"cpu": ["Skylake", ["avx2", "avx512f", "avx512_vnni"]]})
    assert reason and "Skylake" in reason and "bf16" in reason


def test_int8_engine_records_the_choice(ov_int8):  # noqa: F811
    from pixart_export.backends.openvino.decoder import PRECISION

    _, manifest = ov_int8
    section = manifest.quantisation["vae_decoder"]
    rows = {r["name"]: r for r in section["candidates"]}
    assert {"fp32", "int8"} <= set(rows) and set(rows) <= {"fp32", "bf16", "int8"}
    assert rows["fp32"]["passes"] and rows["fp32"]["mean_psnr_db"] == 100.0  # itself: identical images
    measured = [r for r in rows.values() if "skipped" not in r]
    for r in measured:
        assert r["passes"] == (
            r["mean_psnr_db"] >= 35.0
            and r["min_psnr_db"] >= 30.0
            and r.get("fixed_inputs_rel_l2", 0.0) <= r.get("tolerance_rel_l2", 0.0)
        )
        assert 0 < r["mean_ssim"] <= 1 and r["seconds_median"] > 0
    passing = [r for r in measured if r["passes"]]
    assert section["chosen"] == min(passing, key=lambda r: r["seconds_median"])["name"]
    # the decoder record runs as chosen
    [rec] = [r for r in manifest.graphs if r.graph == "vae_decoder"]
    precision, hint = PRECISION[section["chosen"]]
    assert rec.precision == precision and rec.runtime["config"]["INFERENCE_PRECISION_HINT"] == hint


def test_gate_and_choice():
    """A candidate passes on both image figures and the fixed-input tolerance; the fastest that passes ships."""
    from pixart_export.backends.openvino.decoder import DecoderGate, _row, fastest_passing

    gate = DecoderGate()

    def row(name, psnrs, seconds, fixed=0.01):
        measured = {"images": [(p, 0.99) for p in psnrs], "seconds": [seconds, seconds * 2, seconds]}
        return _row(name, measured, gate, fixed, 0.1)

    assert row("a", [40.0, 31.0], 1.0)["passes"]
    assert not row("b", [40.0, 29.9], 1.0)["passes"]  # one image below 30 dB
    assert not row("c", [34.0, 35.9], 1.0)["passes"]  # mean below 35 dB
    assert not row("d", [60.0, 60.0], 1.0, fixed=0.2)["passes"]  # beyond its precision's graph tolerance
    assert row("e", [float("inf")] * 2, 1.0)["mean_psnr_db"] == 100.0  # identical images count as 100 dB
    rows = [row("fp32", [float("inf")], 3.0), row("int8", [40.0, 29.0], 1.0), row("bf16", [50.0], 2.0)]
    assert fastest_passing(rows + [{"name": "x", "skipped": "why"}]) == "bf16"  # int8 is faster but fails


def test_bf16_forced_off_is_skipped_with_the_reason(ov_cpu, model, tmp_path):  # noqa: F811
    """The options' CPU without bf16 (this machine has it): the bf16 candidate is skipped, saying why; fp32
    ships, its files untouched and its record f32."""
    from pixart_export.backends.openvino.decoder import choose_decoder, decoder_options

    folder, manifest = ov_cpu
    [dec] = [r for r in manifest.graphs if r.graph == "vae_decoder"]
    for name in dec.files:
        shutil.copy(folder / name, tmp_path / name)
    before = (tmp_path / dec.files[1]).read_bytes()
    rec = {
        "graph": "vae_decoder",
        "file": dec.file,
        "files": list(dec.files),
        "height": dec.height,
        "width": dec.width,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in dec.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in dec.outputs],
    }
    records = [{"graph": "denoiser_lcm4", "lcm": {"timesteps": list(manifest.lcm.timesteps)}}, rec]
    options = {
        "cpu": ["a CPU without bf16", ["avx2", "avx512f", "avx512_vnni"]],
        "calibration_prompts": ["a red circle"],
        "decoder": decoder_options(1, 2, 1, ("bf16",)),
    }
    section = choose_decoder(tmp_path, tmp_path / "scratch", records, model, options, log=lambda m: None)
    rows = {r["name"]: r for r in section["candidates"]}
    assert set(rows) == {"fp32", "bf16"}
    assert "no native bf16 on a CPU without bf16" in rows["bf16"]["skipped"] and "passes" not in rows["bf16"]
    assert section["chosen"] == "fp32" and rec["precision"] == "fp32"
    assert rec["runtime"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert (tmp_path / dec.files[1]).read_bytes() == before
