"""The C++ runtime's preview decoder: `pixart_run --decoder preview` gives Python's preview image (the shared
ov-cpu engine carries tiny's `vae_decoder_preview`), and a folder without one is refused with exit code 2
and what to do (pixart_run and the C API's `pixart_set_decoder`)."""

from __future__ import annotations

import subprocess

import numpy as np

from tests.test_cpp import PROMPT, build, engines, openvino_build  # noqa: F401 - fixtures


def test_pixart_run_decoder_preview_equals_python(openvino_build, engines, tmp_path):  # noqa: F811
    from PIL import Image

    from pixart_export import runtime

    folder = engines["ov-cpu"]
    run = [str(openvino_build / "pixart_run"), str(folder), "--prompt", PROMPT, "--seed", "5"]
    proc = subprocess.run(
        [*run, "--decoder", "preview", "--out", str(tmp_path / "p.png")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    cpp = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"), dtype=np.int16)
    python = np.asarray(runtime.load(folder, decoder="preview")(PROMPT, seed=5)[0], dtype=np.int16)
    full = np.asarray(runtime.load(folder)(PROMPT, seed=5)[0], dtype=np.int16)
    assert cpp.shape == python.shape and int(np.abs(cpp - python).max()) <= 1
    assert not np.array_equal(python, full)  # the preview graph ran, not the full decoder

    proc = subprocess.run(
        [*run, "--decoder", "fast", "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--decoder fast: choose full or preview" in proc.stderr


def test_folder_without_preview_is_refused(openvino_build, engines, tmp_path):  # noqa: F811
    folder = engines["ov-cpu-int8"]
    cmd = [str(openvino_build / "pixart_run"), str(folder), "--prompt", PROMPT, "--decoder", "preview"]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no preview decoder" in proc.stderr and "--preview-decoder DIR" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_c_api_set_decoder(openvino_build, engines):  # noqa: F811
    """`pixart_set_decoder`: accepted where the folder has a preview decoder, PIXART_ERROR_USER where not."""
    import ctypes

    lib = ctypes.CDLL(str(openvino_build / "libpixart_runtime.so"))
    lib.pixart_last_error.restype = ctypes.c_char_p
    for target, want in (("ov-cpu", 0), ("ov-cpu-int8", 2)):
        engine = ctypes.c_void_p()
        assert lib.pixart_open(str(engines[target]).encode(), ctypes.byref(engine)) == 0, lib.pixart_last_error()
        try:
            assert lib.pixart_set_decoder(engine, 1) == want
            if want:
                assert b"no preview decoder" in lib.pixart_last_error()
            assert lib.pixart_set_decoder(engine, 0) == 0  # the full decoder: always there
        finally:
            lib.pixart_close(engine)
