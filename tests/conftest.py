"""Shared fixtures: small configs and seeded inputs. Tests never touch the network, except
test_tensorrt_api.py: it downloads TensorRT binding wheels from PyPI once into a cache, and skips offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from reference.config import DiTConfig  # noqa: E402

#: 512-style (single aspect): sample_size 64 would be 512 px; a smaller grid keeps it fast.
SMALL_512 = DiTConfig(
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=3,
    cross_attention_dim=32,
    caption_channels=24,
    sample_size=8,
    patch_size=2,
    interpolation_scale=1,
    use_additional_conditions=False,
)
#: 1024 multi-aspect style: sample_size 128 turns on the resolution/aspect-ratio conditions as in
#: PixArt-XL-2-1024-MS; the width must divide by 3 for those embedders.
SMALL_1024_MS = DiTConfig(
    num_attention_heads=2,
    attention_head_dim=24,
    num_layers=3,
    cross_attention_dim=48,
    caption_channels=24,
    sample_size=128,
    patch_size=2,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_inputs(
    config: DiTConfig, batch: int = 2, hw: tuple[int, int] = (8, 8), text_len: int = 12, padded: bool = True
):
    """Latents, timesteps, caption embeddings and a mask (row i keeps the first text_len - 3 i tokens)."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, config.in_channels, *hw, generator=g)
    timestep = torch.tensor([999.0, 259.0, 10.0, 500.0][:batch])
    embeds = torch.randn(batch, text_len, config.caption_channels, generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    if padded:
        for i in range(batch):
            mask[i, text_len - 3 * (i + 1) :] = 0
    return latents, timestep, embeds, mask


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# -- the background build (tests/_prebuild.py, tests/_shared.py) -----------------------------------------------
#: what a second process builds while the tests that do not need it run, and the test modules that use it. A
#: session that selects one of those modules starts that process at collection and runs those modules last
#: (in their order), so the builds overlap the other tests on a two-core machine instead of blocking in their
#: first user. The test process waits for a build under way, or makes one that failed itself.
PREBUILD = {  # in the order they are built
    "tiny_engine": {
        *("test_bad_inputs", "test_build", "test_control_check", "test_denoiser", "test_export_onnx"),
        *("test_low_memory", "test_manifest", "test_resources", "test_runtime", "test_serve", "test_verify"),
    },
    "ov_engine": {
        "test_bad_inputs",
        "test_cpp",
        "test_cpp_preview",
        "test_openvino_build",
        "test_openvino_decoder",
        "test_preview",
    },
    "int8_engine": {
        "test_cpp",
        "test_cpp_preview",
        "test_low_memory",
        "test_openvino_decoder",
        "test_openvino_quantize",
        "test_preview",
    },
    "int8_controlnet_engine": {"test_cpp", "test_cpp_preview", "test_openvino_controlnet"},
    "controlnet_engine": {"test_cpp", "test_cpp_preview"},
    "tiny_bundle": {"test_tensorrt_bundle"},
}
_prebuild: dict = {}


def _module(item) -> str:
    return item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")


def pytest_configure(config):
    from tests._shared import ENV

    if not os.environ.get(ENV):  # one folder per session, for this process, the background build and children
        os.environ[ENV] = _prebuild["own_root"] = tempfile.mkdtemp(prefix="pixart-export-shared-")


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config, items):
    modules = {_module(item) for item in items}
    names = [name for name, users in PREBUILD.items() if users & modules]
    if not names or config.option.collectonly or os.environ.get("PIXART_TEST_PREBUILD", "1") == "0":
        return
    users = set().union(*(PREBUILD[name] for name in names))
    items.sort(key=lambda item: _module(item) in users)  # stable: the others first, each in its order
    _prebuild["names"] = names


def pytest_collection_finish(session):
    from tests._shared import ENV

    if "names" not in _prebuild:
        return
    log = Path(os.environ[ENV]) / "prebuild.log"
    with log.open("w") as out:
        _prebuild["process"] = subprocess.Popen(
            [sys.executable, "-m", "tests._prebuild", *_prebuild["names"]],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _prebuild["log"] = log


def pytest_terminal_summary(terminalreporter):
    log = _prebuild.get("log")
    if log is not None and log.exists():
        lines = [line for line in log.read_text().splitlines() if line.startswith("prebuild ")]
        terminalreporter.write_line("background build: " + ("; ".join(lines) if lines else "nothing finished"))


def pytest_unconfigure(config):
    process = _prebuild.pop("process", None)
    if process is not None and process.poll() is None:  # the session ended first (interrupted, or -x)
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if "own_root" in _prebuild:
        shutil.rmtree(_prebuild.pop("own_root"), ignore_errors=True)
