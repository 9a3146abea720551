"""Tiny OpenVINO engines shared by the openvino tests: one fp32 (`ov-cpu`, with tiny's preview decoder), one
int8 (`ov-cpu-int8`, with a reduced calibration and a single quantisation candidate so it builds in about a
minute; the quality gate keeps its 16 prompt/seed pairs; no preview decoder). Both convert the fp32 graphs
of one ort-cpu export (`onnx_from`).
And one int8 engine with a ControlNet (`int8_controlnet_engine`), from the shared ort-cpu engine's export.
Each engine is made once per session across processes (`tests/_shared.py`): conftest.py builds them in the
background while the tests that do not need them run."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tests._shared import once

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def quiet(message: str) -> None:
    pass


def onnx_folder() -> Path:
    """One export for both engines (`_exports.fp32_export`, shared with the TensorRT tests)."""
    from tests._exports import fp32_export

    return fp32_export()


def build_from_onnx(target: str, out: Path, **kwargs):
    from pixart_export.build import build_target

    return build_target(target, "tiny", out=out, onnx_from=onnx_folder(), log=quiet, **kwargs)


@functools.lru_cache(maxsize=None)
def ov_engine():
    """Made once per session (`tests/_shared.py`; conftest.py starts it in the background)."""

    def build(out: Path):
        _, manifest, reused = build_from_onnx("ov-cpu", out, preview_decoder="tiny")
        assert not reused
        return manifest

    return once("ov-cpu-tiny", build)


def small_int8_options(**gate) -> dict:
    """Test-size int8 options: the first candidate only (the one the full build chooses for tiny), 2
    prompts for the one-step graph (8 steps), the full build's 16 for the unrolled denoiser (its images
    meet the 30 dB gate: 30.8 dB on the trained tiny, 8 prompts 30.1, `benchmarks/int8_quality.py`), 1
    held out; bf16 all or nothing (the per-group choice adds minutes to the build:
    `tests/test_openvino_precision.py` covers it)."""
    from pixart_export.backends.openvino.decoder import decoder_options
    from pixart_export.backends.openvino.options import int8_options
    from pixart_export.backends.openvino.quantize import CANDIDATES
    from pixart_export.verify import QualityGate

    options = int8_options(
        candidates=CANDIDATES[:1],
        transformer_prompts=2,
        denoiser_prompts=16,
        held_out_prompts=1,
        gate=QualityGate(**gate),
        bf16_groups=False,
    )
    # the VAE decoder's precision chosen on fewer held-out latents (the build's default: 16 calibration, 16 held
    # out); its int8 candidate calibrated as the build calibrates it: on 2 latents the int8 images measured
    # 29.45 dB end to end against the fp32 reference, below the 30 dB quality gate (16: 30.41, the build)
    options["decoder"] = decoder_options(calibration_images=16, held_out_images=4, repeats=3)
    return options


@functools.lru_cache(maxsize=None)
def int8_engine():
    """Made once per session (`tests/_shared.py`; conftest.py starts it in the background)."""

    def build(out: Path):
        _, manifest, reused = build_from_onnx("ov-cpu-int8", out, options=small_int8_options())
        assert not reused
        return manifest

    return once("ov-cpu-int8-tiny", build)


@functools.lru_cache(maxsize=None)
def int8_controlnet_engine():
    """ov-cpu-int8 with `controlnet_under_test()`, converted from the session's one ControlNet export (the
    shared ort-cpu engine of `_tiny_engine`: fp32 graphs, not optimised), the test-size options (the
    ControlNet graphs keep their default 16 calibration scenes), every gate as built."""
    from pixart_export.build import build_target
    from tests._controlnet import controlnet_under_test
    from tests._exports import controlnet_export

    def build(out: Path):
        _, manifest, reused = build_target(
            "ov-cpu-int8",
            "tiny",
            out=out,
            controlnet_spec=controlnet_under_test(),
            onnx_from=controlnet_export(),
            options=small_int8_options(),
            log=quiet,
        )
        assert not reused
        return manifest

    return once("ov-cpu-int8-tiny-controlnet", build)


@functools.lru_cache(maxsize=None)
def controlnet_engine() -> Path:
    """ov-cpu with `controlnet_under_test()` for the C++ tests, converted from the session's one ControlNet
    export (the shared ort-cpu engine: fp32 graphs, not optimised), unverified (the C++ tests hold it to
    the Python runtime); made once per session (`tests/_shared.py`)."""
    from pixart_export.build import build_target
    from tests._controlnet import controlnet_under_test
    from tests._exports import controlnet_export

    def build(out: Path) -> None:
        common = {"controlnet_spec": controlnet_under_test(), "verify": False, "log": quiet}
        build_target("ov-cpu", "tiny", out=out, onnx_from=controlnet_export(), **common)

    return once("ov-cpu-tiny-controlnet", build)[0]


@functools.lru_cache(maxsize=None)
def tiny_controlnet_model():
    from reference.loading import load_model
    from tests._controlnet import controlnet_under_test

    return load_model("tiny", controlnet=controlnet_under_test())


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
