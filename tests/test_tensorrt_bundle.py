"""build --target trt-* on CPU: the bundle path end to end on `tiny` (export, fp16, int8 Q/DQ, verify,
check, bundle), the CLI around it, the gate; and ort-cuda, which ships the same fp16 preparation.
One bundle per session (~1 min on 2 cores; `tests/_exports.tiny_bundle`, built in the background while
the tests that do not need it run: conftest.py)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from pixart_export.cli import main
from pixart_export.errors import GateFailed, UserError
from pixart_export.manifest import BackendInfo, Device, Parity, Precision, check_files, read_manifest
from tests._exports import fp32_export, tiny_bundle


def test_bundle_contents_and_figures():
    from pixart_export.verify import gated_rows

    folder, manifest = tiny_bundle()
    assert manifest.status == "bundle" and manifest.target == "trt-t4"
    assert manifest.backend == BackendInfo("tensorrt", None, ("10.0", None))
    assert manifest.device == Device(kind="gpu", arch="sm_75", sm=75)
    assert manifest.default_precision == Precision.FP16
    assert manifest.choosable_precisions == (Precision.FP16, Precision.INT8)
    assert manifest.build["compile_command"] == f"pixart-export compile {folder}"
    assert manifest.build["calibration"]["seed"] == 0 and len(manifest.build["calibration"]["prompts"]) == 16
    assert len(manifest.build["calibration"]["held_out"]) == 4
    assert not set(manifest.build["calibration"]["prompts"]) & set(manifest.build["calibration"]["held_out"])
    assert manifest.build["check"]["ok"] and set(manifest.build["check"]["files"]) == {r.file for r in manifest.graphs}
    check_files(folder, read_manifest(folder))
    got = {(r.graph, str(r.precision)) for r in manifest.graphs}
    # The trained tiny T5 fails fp16 (weights rounded to fp16 move its large attention logits), so it
    # ships fp32 with the measured reason; every DiT/VAE graph is fp16 (and int8 where the target has it).
    assert got == {
        ("text_encoder", "fp32"),
        ("transformer", "fp16"),
        ("denoiser_lcm4", "fp16"),
        ("vae_decoder", "fp16"),
        ("vae_encoder", "fp16"),
        ("transformer", "int8"),
        ("denoiser_lcm4", "int8"),
        ("lcm_update", "fp32"),  # the K-step loop's update (backends/tensorrt/loop.py)
    }
    assert not list(folder.glob("*_128x128.onnx")) and not (folder / "text_encoder.onnx").exists()  # no baseline
    parity = manifest.parity
    against = [r.get("against") for r in parity.graphs]
    n = against.count("PyTorch reference")  # fp32 rows first, one per exported graph, then prepared vs fp32
    assert n == 5 and set(against[n:-1]) == {"fp32 graph"}
    lcm_row = parity.graphs[-1]  # the lcm_update graph vs the reference LCM step, every step of the schedule
    assert lcm_row["against"] == "reference.sampling.lcm_step" and lcm_row["file"] == "lcm_update_128x128.fp32.onnx"
    assert lcm_row["ok"] and lcm_row["rel_l2"] <= lcm_row["tol_rel_l2"] == 1e-5
    plan = manifest.build["k_step_plan"]
    assert plan["plan"] == "loop" and plan["graphs"] == ["transformer", "lcm_update"] and plan["steps"] == 4
    assert plan["why"].startswith("loop: weights once by construction")
    assert all(r["precision"] == "fp32" and r["ok"] for r in parity.graphs[:n])
    te_row = next(r for r in parity.graphs if r["graph"] == "text_encoder" and r["precision"] == "fp16")
    assert te_row["replaced_by_fp32"] and te_row["rel_l2"] > te_row["tol_rel_l2"] and not te_row["ok"]
    assert te_row not in gated_rows(parity.graphs)
    te = manifest.record("text_encoder", None, None)
    assert te.file == "text_encoder.fp32.onnx" and "fp16 measured rel L2" in te.details["fp32_fallback"]
    assert not (folder / "text_encoder.fp16.onnx").exists()
    for r in manifest.graphs:  # every graph carries its TensorRT profile: batch 1/1/2 on a T4
        assert set(r.runtime["profile"]) == {t.name for t in r.inputs}
        assert r.runtime["profile"][r.inputs[0].name]["max"][0] == 2
    assert parity.ok and all(r["ok"] for r in gated_rows(parity.graphs))
    assert {(r["precision"], r["ok"]) for r in parity.end_to_end} == {("fp16", True), ("int8", True)}
    for r in parity.graphs:
        print(f"{r['file']:32} {r['precision']:5} rel L2 {r['rel_l2']:.2e} max abs {r['max_abs']:.2e}")
    for r in parity.end_to_end:
        print(f"end to end {r['precision']}: PSNR {r['psnr_db']} dB")
    assert all(r.details["fp16_matmul_share"] > 0.5 for r in manifest.graphs if r.precision == Precision.FP16)
    assert manifest.record("transformer", 128, 128, Precision.INT8).details["int8"]["int8_layers"] > 0
    # int8: MinMax and SmoothQuant 0.8 both measured on the unrolled denoiser, the choice recorded and applied
    choice = manifest.build["int8_choice"]
    assert [c["settings"]["name"] for c in choice["candidates"]] == ["MinMax", "SmoothQuant 0.8"]
    assert choice["candidates"][1]["smoothquant"]["smoothed_layers"] > 0
    for r in manifest.graphs:
        if r.precision == Precision.INT8:
            assert r.details["int8"]["settings"]["name"] == choice["chosen"]
    print(f"int8 choice: {choice}")


def test_check_cli(capsys):
    folder, _ = tiny_bundle()
    assert main(["check", "--target", "trt-t4", str(folder)]) == 0
    assert "check: PASS" in capsys.readouterr().out
    assert main(["check", "--target", "trt-v100", str(folder)]) == 1  # built for T4, and V100 has no int8
    assert "built for 'trt-t4'" in capsys.readouterr().out


def test_compile_needs_tensorrt(capsys):
    from pixart_export.backends.tensorrt.compile import probe_tensorrt

    if probe_tensorrt() is not None:
        pytest.skip("TensorRT is installed here: compile would run")
    folder, _ = tiny_bundle()
    assert main(["compile", str(folder)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pixart-export")]
    assert len(err) == 1 and "TensorRT is not installed" in err[0]


def test_rebuild_is_reused():
    from pixart_export.build import build_target

    folder, manifest = tiny_bundle()
    out, again, reused = build_target("trt-t4", "tiny", out=folder, onnx_from=fp32_export(), log=lambda m: None)
    assert reused and again.build_key == manifest.build_key


def test_gate_names_the_failing_figure():
    """The precision gate stops the build with GateFailed (exit 1) naming the figure; a row whose
    graph shipped fp32 instead is reported but not gated."""
    from pixart_export.backends.tensorrt.prepare import _gate_now

    ctx = argparse.Namespace(target=argparse.Namespace(name="trt-t4"), out=Path("x"), log=lambda m: None)
    row = {
        "file": "transformer_128x128.int8.onnx",
        "graph": "transformer",
        "output": "noise_pred",
        "precision": "int8",
        "rel_l2": 0.4,
        "max_abs": 1.0,
        "tol_rel_l2": 0.1,
        "ok": False,
    }
    with pytest.raises(GateFailed, match=r"transformer_128x128.int8.onnx noise_pred \(int8\) rel L2 4.00e-01 > 1e-01"):
        _gate_now(ctx, Parity(ok=False, graphs=(row,), end_to_end=()), "precision check failed")
    _gate_now(ctx, Parity(ok=True, graphs=({**row, "replaced_by_fp32": True},), end_to_end=()), "unused")


@pytest.mark.gpu
def test_compile_and_run_on_gpu(tmp_path):
    """On a T4 host with TensorRT: compile the bundle and compare the engine images with the CPU ones."""
    import dataclasses

    import numpy as np

    from pixart_export import runtime
    from pixart_export.backends.onnxruntime.runner import OrtRunner
    from pixart_export.backends.tensorrt.compile import compile_bundle, host_can_compile
    from pixart_export.metrics import psnr_uint8
    from pixart_export.runtime.pipeline import Pipeline
    from pixart_export.targets import TARGETS
    from pixart_export.verify import tolerance

    ok, why = host_can_compile(TARGETS["trt-t4"])
    if not ok:
        pytest.skip(why)
    src, _ = tiny_bundle()
    folder = shutil.copytree(src, tmp_path / "b")
    compile_bundle(folder, TARGETS["trt-t4"], log=print)
    pipe = runtime.load(folder)
    img = pipe("a small red circle above a blue square", seed=0, output="np")
    manifest = read_manifest(folder)
    bundle = dataclasses.replace(manifest, status="bundle", engines=())  # the graphs, in onnxruntime on the CPU
    cpu = Pipeline(folder, bundle, OrtRunner(folder), Precision.FP16)
    want = cpu("a small red circle above a blue square", seed=0, output="np")
    assert np.all(np.isfinite(img)) and psnr_uint8(img, want) >= tolerance("end_to_end", Precision.FP16).min_psnr_db


@pytest.mark.parametrize("name", ["trt-t4", "trt-v100", "trt-a100", "trt-h100"])
def test_prepared_graphs_check_for_every_target(name):
    """The same graphs, checked per target: fp16 (and an fp32 fallback) everywhere, int8 Q/DQ wherever
    the target has int8."""
    from pixart_export.backends.tensorrt import check
    from pixart_export.targets import TARGETS

    folder, manifest = tiny_bundle()
    target = TARGETS[name]
    for rec in manifest.graphs:
        report = check.check_file(folder / rec.file, target, rec)
        runs_here = rec.precision in target.trt.prepared or rec.precision == Precision.FP32  # fp32: every GPU
        assert report.ok == runs_here, (rec.file, report.problems)


def test_runtime_refuses_an_uncompiled_bundle():
    from pixart_export import runtime
    from pixart_export.manifest import EngineError

    folder, _ = tiny_bundle()
    with pytest.raises(EngineError, match="without engines; run `pixart-export compile"):
        runtime.load(folder)


def test_options_and_refusals(tmp_path):
    """--trt-fp16-only turns int8 off; a target without int8 refuses it; TensorRT bundles are always
    verified; resolutions must lie in the target's profile. All refused before any export."""
    from pixart_export.build import build_target
    from pixart_export.targets import TARGETS, TENSORRT

    parser = argparse.ArgumentParser()
    TENSORRT.add_options(parser)
    assert TENSORRT.options(TARGETS["trt-t4"], parser.parse_args([]))["int8"] is True
    assert TENSORRT.options(TARGETS["trt-t4"], parser.parse_args(["--trt-fp16-only"]))["int8"] is False
    assert TENSORRT.options(TARGETS["trt-v100"], None)["int8"] is False
    assert TENSORRT.options(TARGETS["trt-t4"], None) != TENSORRT.options(TARGETS["trt-a100"], None)  # profile differs
    options = {**TENSORRT.options(TARGETS["trt-v100"], None), "int8": True}
    with pytest.raises(UserError, match=r"trt-v100 \(sm_70\) has no int8"):
        build_target("trt-v100", "tiny", out=tmp_path / "b", options=options, log=lambda m: None)
    with pytest.raises(UserError, match="always verified"):
        build_target("trt-t4", "tiny", out=tmp_path / "b", verify=False, log=lambda m: None)
    # 64 px: a size tiny draws (its limits are 16..256 px), below trt-t4's profile
    with pytest.raises(UserError, match=r"resolution 64x64 is outside trt-t4's profile \(128-1024 px\)"):
        build_target("trt-t4", "tiny", out=tmp_path / "b", resolutions=[(64, 64)], log=lambda m: None)
    assert not (tmp_path / "b").exists()


def test_ort_cuda_ships_the_fp16_preparation(tmp_path):
    """ort-cuda: the fp16 graphs of the TensorRT preparation (no int8, no TensorRT check), verified in
    onnxruntime on the CPU as the bundle's fp16 graphs are. Calibrated on 2 prompts (one batch) to keep
    it short; the full preparation is the bundle's, tested above."""
    from pixart_export.build import build_target

    out, manifest, _ = build_target(
        "ort-cuda",
        "tiny",
        out=tmp_path / "ort-cuda",
        onnx_from=fp32_export(),
        log=lambda m: None,
        options={"fp16": True, "calib_prompts": 2},
    )
    assert manifest.status == "ready" and manifest.default_precision == Precision.FP16
    assert manifest.backend.name == "onnxruntime" and manifest.device.kind == "gpu"
    assert {(r.graph, str(r.precision)) for r in manifest.graphs} == {
        ("text_encoder", "fp32"),
        ("transformer", "fp16"),
        ("denoiser_lcm4", "fp16"),
        ("vae_decoder", "fp16"),
        ("vae_encoder", "fp16"),
    }  # T5 falls back to fp32 as in the bundle
    assert len(manifest.build["calibration"]["prompts"]) == 2
    assert "check" not in manifest.build and "compile_command" not in manifest.build
    assert all("profile" not in r.runtime for r in manifest.graphs)
    parity = manifest.parity
    assert parity.ok and [(r["precision"], r["case"]) for r in parity.end_to_end] == [("fp16", "text2image")]
    assert parity.end_to_end[0]["psnr_db"] > 40  # measured 54 dB: fp16 rounding only
    assert [r["precision"] for r in parity.graphs] == ["fp32"] * 5 + ["fp16"] * 5
    assert all(
        r["against"] == "fp32 graph"
        and r["inputs"] == ("fixed inputs" if r["graph"] == "vae_encoder" else "held-out prompts")
        for r in parity.graphs[5:]
    )
    check_files(out, read_manifest(out))
