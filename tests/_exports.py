"""The session's fp32 ONNX exports of `tiny`, made once and given as `onnx_from` to every test build that
converts or prepares them (OpenVINO, the TensorRT bundles, ort-cuda, the C++ tests' engines): the export
is the same work for each of them, and repeating it was much of those tests' time.

- `fp32_export()`: tiny without a ControlNet, with tiny's preview decoder (a build that does not ask for
  it leaves that graph out);
- `controlnet_export()`: tiny with `controlnet_under_test()`: the shared ort-cpu engine of `_tiny_engine`
  (its graphs are fp32 and not optimised; it is built, with its parity, for the tests that run it);
- `tiny_bundle()`: the trt-t4 bundle of tiny, built from `fp32_export()` (tests/test_tensorrt_bundle.py).

Each is made once per session across the test process and the background build (`tests/_shared.py`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from tests._shared import once


def _quiet(message: str) -> None:
    pass


@functools.lru_cache(maxsize=None)
def fp32_export() -> Path:
    from pixart_export.build import build_target

    def build(out: Path) -> None:
        options = {"optimise": False}
        build_target("ort-cpu", "tiny", out=out, options=options, verify=False, preview_decoder="tiny", log=_quiet)

    return once("onnx-tiny", build)[0]


def controlnet_export() -> Path:
    from tests._tiny_engine import tiny_engine

    return tiny_engine()[0]


@functools.lru_cache(maxsize=None)
def tiny_bundle():
    """(folder, Manifest) of tiny's trt-t4 bundle (~1 min on 2 cores: fp16, int8 Q/DQ, verify, check)."""
    from pixart_export.build import build_target

    def build(out: Path):
        _, manifest, reused = build_target("trt-t4", "tiny", out=out, onnx_from=fp32_export(), log=_quiet)
        assert not reused
        return manifest

    return once("trt-t4-tiny", build)
