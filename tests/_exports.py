"""The session's fp32 ONNX exports of `tiny`, made once and given as `onnx_from` to every test build that
converts or prepares them (OpenVINO, the TensorRT bundles, ort-cuda, the C++ tests' engines): the export
is the same work for each of them, and repeating it was much of those tests' time.

- `fp32_export()`: tiny without a ControlNet, with tiny's preview decoder (a build that does not ask for
  it leaves that graph out);
- `controlnet_export()`: tiny with `controlnet_under_test()`: the shared ort-cpu engine of `_tiny_engine`
  (its graphs are fp32 and not optimised; it is built, with its parity, for the tests that run it).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=None)
def fp32_export() -> Path:
    from pixart_export.build import build_target

    root = Path(tempfile.mkdtemp(prefix="pixart-export-onnx-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out, _, _ = build_target(
        "ort-cpu",
        "tiny",
        out=root / "ort-cpu-tiny",
        options={"optimise": False},
        verify=False,
        preview_decoder="tiny",
        log=lambda m: None,
    )
    return out


def controlnet_export() -> Path:
    from tests._tiny_engine import tiny_engine

    return tiny_engine()[0]
