"""Tiny OpenVINO engines shared by the ov-cpu tests: one fp32 (`ov-cpu`), one int8 (`ov-cpu-int8`,
with a reduced calibration and a single quantisation candidate so it builds in about a minute; the
quality gate keeps its 16 prompt/seed pairs)."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@functools.lru_cache(maxsize=None)
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="pixart-export-ov-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.lru_cache(maxsize=None)
def onnx_folder() -> Path:
    """One export for both engines: an ort-cpu folder (no optimisation, no parity) they convert."""
    from pixart_export.build import build

    out, _, _ = build("ort-cpu", "tiny", _root() / "ort-cpu-tiny", optimise=False, verify=False, log=lambda m: None)
    return out


def build_from_onnx(target: str, out: Path, **kwargs):
    from pixart_export.build_ov import build_ov
    from pixart_export.targets import get_target

    return build_ov(get_target(target), "tiny", out, None, None, 4, None, True, False, lambda m: None,
                    onnx_from=onnx_folder(), **kwargs)


@functools.lru_cache(maxsize=None)
def ov_engine() -> tuple[Path, dict]:
    out, manifest, reused = build_from_onnx("ov-cpu", _root() / "ov-cpu-tiny")
    assert not reused
    return out, manifest


#: Test-size int8 options: the first (default-best) candidate only, 2 prompts each.
def small_int8_options(**gate):
    from pixart_export.quantize_ov import CANDIDATES, Int8Options, QualityGate

    return Int8Options(candidates=CANDIDATES[:1], transformer_prompts=2, denoiser_prompts=2, held_out_prompts=1,
                       gate=QualityGate(**gate))


@functools.lru_cache(maxsize=None)
def int8_engine() -> tuple[Path, dict]:
    out, manifest, reused = build_from_onnx("ov-cpu-int8", _root() / "ov-cpu-int8-tiny", int8=small_int8_options())
    assert not reused
    return out, manifest


@functools.lru_cache(maxsize=None)
def tiny_model():
    from reference.loading import load_model

    return load_model("tiny")


@pytest.fixture
def ov_cpu():
    return ov_engine()


@pytest.fixture
def ov_int8():
    return int8_engine()


@pytest.fixture
def model():
    return tiny_model()
