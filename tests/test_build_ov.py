"""`build --target ov-cpu` on tiny: manifest, parity, runtime API, reuse and refusals, torch-free load."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests._ov_engine import model, ov_cpu  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent


def test_manifest_records_backend_and_explicit_precision(ov_cpu):  # noqa: F811
    folder, manifest = ov_cpu
    assert manifest["target"] == "ov-cpu" and manifest["backend"]["name"] == "openvino"
    assert manifest["device_info"]["isa"] is not None and manifest["device_info"]["model"]
    names = {r["graph"] for r in manifest["graphs"]}
    assert names == {"text_encoder", "transformer", "denoiser_lcm4", "vae_decoder", "vae_encoder"}
    for rec in manifest["graphs"]:
        assert rec["file"].endswith(".xml") and rec["files"] == [rec["file"], rec["file"][:-4] + ".bin"]
        assert rec["openvino"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert rec["precision"] == "fp32"
    assert set(manifest["files"]) >= {f for r in manifest["graphs"] for f in r["files"]}


def test_parity_within_fp32_tolerance(ov_cpu):  # noqa: F811
    """Same tolerances as ort-cpu (graphs.py: 1e-4 rel L2, PSNR >= 40 dB): with f32 set explicitly
    OpenVINO differs from PyTorch only in kernel choice and summation order (measured ~1e-6)."""
    _, manifest = ov_cpu
    parity = manifest["parity"]
    assert parity["ok"]
    for row in parity["graphs"]:
        assert row["rel_l2"] < 1e-5, row  # measured 1.6e-7 .. 1.4e-6
    assert all(r["psnr_db"] is None or r["psnr_db"] > 60 for r in parity["end_to_end"])


def test_runtime_load_matches_reference_without_torch(ov_cpu, model, tmp_path):  # noqa: F811
    folder, _ = ov_cpu
    script = textwrap.dedent(f"""
        import sys
        BLOCKED = ("torch", "diffusers", "reference", "transformers")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from pixart_export import runtime
        pipe = runtime.load({str(folder)!r}, threads=1)
        assert type(pipe).__name__ == "OvPipeline"
        np.save({str(tmp_path / "x.npy")!r}, pipe("a small red circle above a blue square", seed=3, output="np"))
        from pixart_export.cli import main
        assert main(["run", {str(folder)!r}, "--prompt", "a red circle", "--out", {str(tmp_path / "c.png")!r}]) == 0
        print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout and (tmp_path / "c.png").exists()
    from pixart_export.parity import psnr_uint8
    from reference.pipeline import ReferencePipeline

    want = ReferencePipeline(model)(["a small red circle above a blue square"], seed=3, output="pt").numpy()
    psnr, _ = psnr_uint8(np.load(tmp_path / "x.npy"), want)
    assert psnr is None or psnr > 60


def test_static_shape_compilation_matches_the_dynamic_model(ov_cpu):  # noqa: F811
    """The runtime compiles each graph for the call's shapes (one compiled model per batch size);
    the numbers are those of the dynamic-batch IR (same kernels' maths, f32)."""
    from pixart_export.runtime.ov_pipeline import load_openvino

    folder, _ = ov_cpu
    static, dynamic = load_openvino(folder, threads=1), load_openvino(folder, threads=1, static_shapes=False)
    rng = np.random.default_rng(0)
    for batch in (1, 2):
        feeds = {"denoised": rng.standard_normal((batch, 4, 16, 16), dtype=np.float32)}
        got, want = static.run("vae_decoder", feeds, 128, 128)[0], dynamic.run("vae_decoder", feeds, 128, 128)[0]
        assert got.shape == (batch, 3, 128, 128)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert len(static._sessions) == 2 and len(dynamic._sessions) == 1
    compiled = next(iter(static._sessions.values()))
    assert all(not i.get_partial_shape().is_dynamic for i in compiled.inputs)


def test_rebuild_is_reused(ov_cpu):  # noqa: F811
    from tests._ov_engine import build_from_onnx

    folder, manifest = ov_cpu
    out, again, reused = build_from_onnx("ov-cpu", folder)
    assert reused and again["build_key"] == manifest["build_key"]
    assert manifest["graphs"][0]["onnx_file"].endswith(".onnx")  # converted from the ort-cpu folder's graphs


def test_build_through_the_plain_entry_point(tmp_path, monkeypatch):
    """`build(target="ov-cpu")` dispatches to the OpenVINO builder (stopped after the first stage)."""
    from pixart_export import build_ov
    from pixart_export.build import build

    seen = {}

    def fake(target, *args, **kwargs):
        seen["target"] = target.name
        return tmp_path, {}, True

    monkeypatch.setattr(build_ov, "build_ov", fake)
    assert build("ov-cpu", "tiny", tmp_path / "x", log=lambda m: None)[2] is True
    assert seen["target"] == "ov-cpu"


def test_onnx_from_refuses_another_model(tmp_path):
    from pixart_export.errors import UserError
    from tests._ov_engine import build_from_onnx, onnx_folder

    from pixart_export.build_ov import _onnx_source

    with pytest.raises(UserError, match="steps 4 / resolutions"):
        from pixart_export import identity as ident
        from reference.loading import load_model

        identity = ident.model_identity(load_model("tiny"), None)
        _onnx_source(onnx_folder(), identity, [(256, 256)], 4)


def test_loader_refuses_tampered_or_foreign_folders(ov_cpu, tmp_path):  # noqa: F811
    from pixart_export import runtime
    from pixart_export.manifest import EngineError

    folder, _ = ov_cpu
    bad = shutil.copytree(folder, tmp_path / "bad")
    with open(bad / "transformer_128x128.bin", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(EngineError, match="sha256"):
        runtime.load(bad)
    newer = shutil.copytree(folder, tmp_path / "newer")
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["backend"]["version"] = "9999.0.0"
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="openvino 9999.0.0"):
        runtime.load(newer)


def test_cli_build_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "pixart_export.cli", "build", "--target", "ov-cpu-int8",
                           "--quality-pairs", "4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pixart-export: error: --quality-pairs 4: the int8 quality gate needs at least 16 pairs"]


def test_parity_command_on_openvino_folder(ov_cpu, tmp_path, capsys):  # noqa: F811
    from pixart_export.cli import main

    folder, _ = ov_cpu
    copy = shutil.copytree(folder, tmp_path / "engine")
    assert main(["parity", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "transformer_128x128.xml" in out and "parity: PASS" in out
    assert json.loads((copy / "manifest.json").read_text())["parity"]["ok"]
