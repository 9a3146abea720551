"""build --target trt-* on CPU: the bundle path end to end on `tiny` (export, fp16, int8 Q/DQ, verify,
check, bundle), the CLI around it, and the gate. One bundle per session (~2.5 min on 2 cores)."""
from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import pytest

from pixart_export import verify_precision as vp
from pixart_export.cli import main
from pixart_export.errors import UserError
from pixart_export.manifest import check_files, read_manifest


@functools.lru_cache(maxsize=None)
def tiny_bundle() -> tuple[Path, dict]:
    import atexit

    from pixart_export.build import build

    root = Path(tempfile.mkdtemp(prefix="pixart-export-trt-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out, manifest, reused = build("trt-t4", "tiny", root / "trt-t4-tiny", log=lambda m: None)
    assert not reused
    return out, manifest


def test_bundle_contents_and_figures():
    folder, manifest = tiny_bundle()
    assert manifest["status"] == "bundle" and manifest["target"] == "trt-t4"
    assert manifest["backend"] == {"name": "tensorrt", "version": None, "requires": {"min": "10.0", "max": None}}
    assert manifest["compile_command"] == f"pixart-export compile {folder}"
    check_files(folder, read_manifest(folder))
    got = {(r["graph"], r["precision"]) for r in manifest["graphs"]}
    # The trained tiny T5 fails fp16 (weights rounded to fp16 move its large attention logits), so it
    # ships fp32 with the measured reason; every DiT/VAE graph is fp16 (and int8 where the target has it).
    assert got == {("text_encoder", "fp32"), ("transformer", "fp16"), ("denoiser_lcm4", "fp16"),
                   ("vae_decoder", "fp16"), ("vae_encoder", "fp16"), ("transformer", "int8"),
                   ("denoiser_lcm4", "int8")}
    assert not list(folder.glob("*_128x128.onnx")) and not (folder / "text_encoder.onnx").exists()  # no baseline
    te_row = next(r for r in manifest["precision_report"]["graphs"] if r["graph"] == "text_encoder")
    assert te_row["replaced_by_fp32"] and te_row["rel_l2"] > te_row["tol_rel_l2"]
    te = next(r for r in manifest["graphs"] if r["graph"] == "text_encoder")
    assert te["file"] == "text_encoder.fp32.onnx" and "fp16 measured rel L2" in te["fp32_fallback"]
    assert not (folder / "text_encoder.fp16.onnx").exists()
    assert set(manifest["profiles"]) == {r["file"] for r in manifest["graphs"]}
    report = manifest["precision_report"]
    assert report["ok"] and all(r["rel_l2"] <= r["tol_rel_l2"] for r in report["graphs"] if not r.get("replaced_by_fp32"))
    assert {r["precision"] for r in report["end_to_end"]} == {"fp16", "int8"}
    for r in report["graphs"]:
        print(f"{r['graph']:16} {r['precision']:5} rel L2 {r['rel_l2']:.2e} max abs {r['max_abs']:.2e}")
    for r in report["end_to_end"]:
        print(f"end to end {r['precision']}: PSNR {r['psnr_db']} dB")
    assert all(r["fp16_matmul_share"] > 0.5 for r in manifest["graphs"] if r["precision"] == "fp16")


def test_check_cli(capsys):
    folder, _ = tiny_bundle()
    assert main(["check", "--target", "trt-t4", str(folder)]) == 0
    assert "check: PASS" in capsys.readouterr().out
    assert main(["check", "--target", "trt-v100", str(folder)]) == 1  # built for T4, and V100 has no int8
    assert "built for 'trt-t4'" in capsys.readouterr().out


def test_compile_needs_tensorrt(capsys):
    from pixart_export.compile_trt import probe_tensorrt

    if probe_tensorrt() is not None:
        pytest.skip("TensorRT is installed here: compile would run")
    folder, _ = tiny_bundle()
    assert main(["compile", str(folder)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pixart-export")]
    assert len(err) == 1 and "TensorRT is not installed" in err[0]


def test_rebuild_is_reused():
    from pixart_export.build import build

    folder, manifest = tiny_bundle()
    out, again, reused = build("trt-t4", "tiny", folder, log=lambda m: None)
    assert reused and again["build_key"] == manifest["build_key"]


def test_gate_names_the_failing_figure():
    report = {"graphs": [{"graph": "transformer", "precision": "int8", "rel_l2": 0.4, "tol_rel_l2": 0.1,
                          "ok": False}], "end_to_end": []}
    with pytest.raises(UserError, match=r"transformer int8 rel L2 4.00e-01 > 1e-01"):
        vp.gate(report)


@pytest.mark.gpu
def test_compile_and_run_on_gpu(tmp_path):
    """On a T4 host with TensorRT: compile the bundle and compare the engine images with the CPU ones."""
    from pixart_export.compile_trt import host_can_compile
    from pixart_export.targets import TARGETS

    ok, why = host_can_compile(TARGETS["trt-t4"])
    if not ok:
        pytest.skip(why)
    import numpy as np

    from pixart_export import runtime
    from pixart_export.compile_trt import compile_bundle
    from pixart_export.parity import psnr_uint8

    src, _ = tiny_bundle()
    folder = shutil.copytree(src, tmp_path / "b")
    compile_bundle(folder, log=print)
    pipe = runtime.load(folder)
    img = pipe("a small red circle above a blue square", seed=0, output="np")
    cpu = vp.pipeline_view(folder, read_manifest(folder), [r for r in read_manifest(folder)["graphs"]
                                                           if r["precision"] == "fp16"])
    want = cpu("a small red circle above a blue square", seed=0, output="np")
    psnr, _ = psnr_uint8(img, want)
    assert np.all(np.isfinite(img)) and (psnr is None or psnr >= vp.FP16_MIN_PSNR_DB)


@pytest.mark.parametrize("name", ["trt-t4", "trt-v100", "trt-a100", "trt-h100"])
def test_prepared_graphs_check_for_every_target(name):
    """The same graphs, checked per target: fp16 (and an fp32 fallback) everywhere, int8 Q/DQ wherever
    the target has int8."""
    from pixart_export import trt_check
    from pixart_export.targets import TARGETS

    folder, manifest = tiny_bundle()
    target = TARGETS[name]
    for rec in manifest["graphs"]:
        report = trt_check.check_file(folder / rec["file"], target, rec)
        runs_here = rec["precision"] in target.trt.prepared or rec["precision"] == "fp32"  # fp32: every GPU
        assert report.ok == runs_here, (rec["file"], report.problems)


def test_runtime_refuses_an_uncompiled_bundle():
    from pixart_export import runtime
    from pixart_export.manifest import EngineError

    folder, _ = tiny_bundle()
    with pytest.raises(EngineError, match="without engines; run `pixart-export compile"):
        runtime.load(folder)


def test_int8_refused_for_v100_and_fp16_only_flag(tmp_path):
    from pixart_export.build_trt import build_bundle
    from pixart_export.cli import build_parser
    from pixart_export.targets import TARGETS

    with pytest.raises(UserError, match="trt-v100 .sm_70. has no int8"):
        build_bundle(TARGETS["trt-v100"], "tiny", tmp_path / "b", int8=True, log=lambda m: None)
    args = build_parser().parse_args(["build", "--target", "trt-t4", "--trt-fp16-only"])
    assert args.trt_fp16_only
