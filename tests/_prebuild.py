"""The background half of a test session, started by conftest.py: builds the session's slowest shared
artifacts (`tests/_shared.py`) while the tests that do not need them run in the test process, so that on two
cores the builds and those tests overlap.

    python -m tests._prebuild NAME...   (with $PIXART_TEST_SHARED set; names: `BUILDERS`)

Builds in the order given. A failure is printed and the next name goes on: the test that needs the artifact
finds no finished build, builds it in the test process and reports the failure itself.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback

#: name -> (module, function) of the cached helper that makes it
BUILDERS = {
    "tiny_engine": ("tests._tiny_engine", "tiny_engine"),
    "ov_engine": ("tests._openvino_engine", "ov_engine"),
    "int8_engine": ("tests._openvino_engine", "int8_engine"),
    "int8_controlnet_engine": ("tests._openvino_engine", "int8_controlnet_engine"),
    "controlnet_engine": ("tests._openvino_engine", "controlnet_engine"),
    "tiny_bundle": ("tests._exports", "tiny_bundle"),
}


def main(names: list[str]) -> int:
    # as conftest.py sets them for the test process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    failed = 0
    for name in names:
        module, function = BUILDERS[name]
        started = time.perf_counter()
        torch.manual_seed(0)
        try:
            getattr(importlib.import_module(module), function)()
        except BaseException:  # pytest.skip (a missing extra) included: the tests skip the same way
            failed += 1
            print(f"prebuild {name}: failed; the tests that need it build it themselves", flush=True)
            traceback.print_exc()
            continue
        print(f"prebuild {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
