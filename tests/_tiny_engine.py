"""One tiny ort-cpu engine (with the tiny ControlNet) per test session, shared by the export, denoiser,
runtime, build and parity tests: building it (export + parity) is the expensive part, ~1 min."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import pytest

from tests._controlnet import controlnet_under_test


@functools.lru_cache(maxsize=None)
def tiny_engine():
    """(folder, Manifest) of the shared engine."""
    from pixart_export.build import build_target

    root = Path(tempfile.mkdtemp(prefix="pixart-export-tests-"))
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out, manifest, reused = build_target(
        "ort-cpu",
        "tiny",
        out=root / "ort-cpu-tiny",
        controlnet_spec=controlnet_under_test(),
        options={"optimise": False},
        log=lambda m: None,
    )
    assert not reused
    return out, manifest


@functools.lru_cache(maxsize=None)
def tiny_model():
    from reference.loading import load_model

    return load_model("tiny", controlnet=controlnet_under_test())


@pytest.fixture
def engine():
    return tiny_engine()


@pytest.fixture
def model():
    return tiny_model()


def copy_engine(dst: Path) -> Path:
    """A private copy to tamper with."""
    src, _ = tiny_engine()
    shutil.copytree(src, dst)
    return dst
