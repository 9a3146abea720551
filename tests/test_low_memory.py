"""Low-memory mode (`run --low-memory`, `runtime.load(low_memory=True)`, the C++ LoadOptions::low_memory,
`pixart_set_low_memory`, `pixart_run --low-memory`): one graph held at a time, the same images.

Reuses the session's tiny engines (`tests._openvino_engine`, `tests._tiny_engine`) and the C++ build of
`tests/test_cpp.py`; nothing here builds an engine of its own."""

from __future__ import annotations

import gc
import subprocess
import weakref

import numpy as np
import pytest
from PIL import Image

from pixart_export import runtime

PROMPT = "a red circle above a blue square"


def _folder(kind: str):
    if kind == "ort-cpu-controlnet":
        from tests._tiny_engine import tiny_engine

        return tiny_engine()[0]
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from tests._openvino_engine import int8_engine

    return int8_engine()[0]


def _control_image():
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8))


def _watch(pipe) -> list[tuple[str, set[str]]]:
    """Record, for each graph the runner runs, the graphs it held just before."""
    runner, events = pipe.runner, []
    run = runner.run

    def watched(record, feeds):
        events.append((record.graph, set(runner.loaded)))
        return run(record, feeds)

    runner.run = watched
    return events


@pytest.mark.parametrize("kind", ["ov-cpu-int8", "ort-cpu-controlnet"])
def test_one_graph_at_a_time_and_the_same_images(kind):
    folder = _folder(kind)
    kwargs = {"control_image": _control_image(), "conditioning_scale": 0.8} if kind.endswith("controlnet") else {}
    normal, low = runtime.load(folder), runtime.load(folder, low_memory=True)
    events = _watch(low)
    for seed in (5, 6):  # the second call loads every graph again
        a = np.stack([np.asarray(im) for im in normal(PROMPT, seed=seed, num_images=2, **kwargs)])
        b = np.stack([np.asarray(im) for im in low(PROMPT, seed=seed, num_images=2, **kwargs)])
        assert a.shape == b.shape and a.std() > 1
        assert np.array_equal(a, b), f"{kind}: low-memory images differ by {np.abs(a.astype(int) - b).max()} levels"
    order = [g for g, _ in events]
    denoiser = "denoiser_lcm4_controlnet" if kwargs else "denoiser_lcm4"
    assert order[: len(order) // 2] == ([*(["vae_encoder"] if kwargs else []), "text_encoder", denoiser, "vae_decoder"])
    for graph, held in events:
        assert held <= {graph}, f"{graph} ran while {held - {graph}} was still loaded"
    assert low.runner.loaded == set()
    assert normal.runner.loaded == {g for g, _ in events}  # the default keeps every graph it ran


@pytest.mark.parametrize("kind", ["ov-cpu-int8", "ort-cpu-controlnet"])
def test_release_drops_the_loaded_object(kind):
    pipe = runtime.load(_folder(kind))
    pipe(PROMPT, seed=0)
    runner = pipe.runner
    held = dict(getattr(runner, "_compiled", None) or runner._sessions)  # OpenVINO's or onnxruntime's
    refs = {key: weakref.ref(obj) for key, obj in held.items()}
    text_keys = [k for k in held if "text_encoder" in str(k)]
    assert text_keys and runner.loaded == {"text_encoder", "denoiser_lcm4", "vae_decoder"}
    del held
    runner.release(["text_encoder"])
    gc.collect()
    assert runner.loaded == {"denoiser_lcm4", "vae_decoder"}
    assert all(refs[k]() is None for k in text_keys), "the released compiled model / session is still alive"
    assert all(r() is not None for k, r in refs.items() if k not in text_keys)
    runner.release(["denoiser_lcm4", "vae_decoder", "no_such_graph"])
    assert runner.loaded == set()


def test_run_command_low_memory(tmp_path, capsys, monkeypatch):
    """`pixart-export run --low-memory` reaches the pipeline (its images: the test above)."""
    from pixart_export.cli import main

    pipes = []
    load = runtime.load
    monkeypatch.setattr(runtime, "load", lambda *a, **k: pipes.append(load(*a, **k)) or pipes[-1])
    out = tmp_path / "a.png"
    assert main(["run", str(_folder("ov-cpu-int8")), "--prompt", PROMPT, "--low-memory", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.exists()
    assert pipes[0].low_memory is True and pipes[0].runner.loaded == set()


# -- C++ -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpp():
    from tests.test_cpp import _build, tool

    folder, why = _build()
    if folder is None:
        pytest.skip(why)
    if "openvino" not in tool(folder, "backends").stdout.split():
        pytest.skip("C++ OpenVINO backend not built: pip install 'pixart-export[openvino]' into .venv; rebuild cpp/")
    return folder


def _fnv1a64(data: bytes) -> str:
    h = 14695981039346656037
    for byte in data:
        h = ((h ^ byte) * 1099511628211) % 2**64
    return f"{h:016x}"


def test_cpp_low_memory_same_image_and_nothing_held(cpp, tmp_path):
    """The C++ engine in low-memory mode draws the same images as without (0 levels: equal hashes of the
    RGB bytes, two calls each) and holds no compiled model between calls (`pixart_tool loaded`:
    Engine::loaded_graphs); `pixart_run --low-memory` gives the same image. C++ == Python is
    test_cpp.test_image_equals_python's; the C API's `pixart_set_low_memory` is checked by
    cpp/tests/c_api_test.c (test_cpp.test_c_api_from_c)."""
    from tests.test_cpp import tool

    folder = _folder("ov-cpu-int8")
    normal = tool(cpp, "loaded", folder, PROMPT).stdout.splitlines()
    low = tool(cpp, "loaded", folder, PROMPT, "--low-memory").stdout.splitlines()
    hashes = [line.split()[1].rstrip(":") for line in normal[1:3]]
    held = "denoiser_lcm4,text_encoder,vae_decoder"
    assert normal == ["open: ", f"run {hashes[0]}: {held}", f"run {hashes[1]}: {held}", "set_low_memory: "]
    assert low == ["open: ", f"run {hashes[0]}: ", f"run {hashes[1]}: "]
    assert hashes[0] != hashes[1]  # seeds 0 and 1

    out = tmp_path / "low.png"
    cmd = [str(cpp / "pixart_run"), str(folder), "--prompt", PROMPT, "--seed", "0", "--low-memory", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _fnv1a64(np.asarray(Image.open(out).convert("RGB")).tobytes()) == hashes[0]
