"""One tiny ort-cpu engine (with the tiny ControlNet) per test session, shared by the export, denoiser,
runtime, build and parity tests: building it (export + parity) is the expensive part, ~1 min."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

from tests._controlnet import controlnet_under_test
from tests._shared import once


@functools.lru_cache(maxsize=None)
def tiny_engine():
    """(folder, Manifest) of the shared engine (made once per session: `tests/_shared.py`)."""
    from pixart_export.build import build_target

    def build(out: Path):
        _, manifest, reused = build_target(
            "ort-cpu",
            "tiny",
            out=out,
            controlnet_spec=controlnet_under_test(),
            options={"optimise": False},
            log=lambda m: None,
        )
        assert not reused
        return manifest

    return once("ort-cpu-tiny-controlnet", build)


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
