"""The C++ TensorRT backend (cpp/src/tensorrt_backend.cpp) without a GPU or TensorRT: compiled here
against the small fake of the TensorRT and CUDA calls it makes (cpp/tests/fake_tensorrt/: device memory
that aborts on any access to freed memory, CUDA graphs that replay with their capture's addresses,
engines that compute known functions), driven by cpp/tests/trt_fake_run.cpp over a compiled manifest
written by the one Python writer and read by the C++ loader.

Issue #23: buffers once for the profile's maximum batch (1 -> 2 -> 1, 2 -> 1 -> 2, chunked 2, 1, 2, 1
with CUDA graphs), the folder's K-step plan run as Python runs it (`runtime.k_step_loop`; the LCM
coefficients computed in C++ equal loop.py's), `--steps 1`, no per-call control_residuals upload
(bytes counted), `release` destroying an engine and its context before the next is deserialized, and an
enqueue that fails inside a capture falling back to eager runs."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pixart_export import manifest as M
from pixart_export.backends.tensorrt import loop

ROOT = Path(__file__).resolve().parent.parent
CPP = ROOT / "cpp"
SOURCES = [
    "tests/trt_fake_run.cpp",
    "src/tensorrt_backend.cpp",
    "src/manifest.cpp",
    "src/mapped.cpp",  # HeldFiles::map
    "src/json.cpp",
    "src/sha256.cpp",
]
MAX_BATCH = 2
LATENT = (4, 4, 4)


@functools.lru_cache(maxsize=None)
def _binary(out_dir: str) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (apt-get install g++)")
    exe = Path(out_dir) / "trt_fake_run"
    cmd = [cxx, "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", "-DPIXART_WITH_TENSORRT"]
    cmd += ["-I" + str(CPP / d) for d in ("tests/fake_tensorrt", "src", "include")]
    cmd += [str(CPP / s) for s in SOURCES] + ["-pthread", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return _binary(str(tmp_path_factory.mktemp("trt-fake")))


def _t(name, *shape):
    return M.TensorRecord(name, "float32", shape)


PLANS = {  # the fake's plan text (NvInfer.h beside it): the profile's maximum shapes
    "text": "kind text\ninput input_ids 2 3\noutput prompt_embeds -1 3 8\n",
    "transformer": "kind transformer\ninput latents 2 4 4 4\ninput timestep 2\ninput prompt_embeds 2 3 8\n"
    "input control_residuals 1 2 4 8\noutput noise_pred -1 4 4 4\n",
    "lcm_update": "kind lcm_update\ninput latents 2 4 4 4\ninput noise_pred 2 4 4 4\ninput step_noise 2 4 4 4\n"
    "input coef 3\noutput latents_next -1 4 4 4\n",
    "denoiser": "kind denoiser\ninput latents 2 4 4 4\ninput step_noise {k1} 2 4 4 4\ninput prompt_embeds 2 3 8\n"
    "output denoised -1 4 4 4\n",
    "vae": "kind denoiser\ninput latents 2 4 4 4\noutput image -1 4 4 4\n",
}


def _folder(tmp_path: Path, plan: str, steps: int = 4) -> Path:
    """A compiled trt-t4 folder of fake plans whose manifest says `plan` as `compile` writes it."""
    from reference.schedules import alphas_cumprod, lcm_timesteps

    folder = tmp_path / f"{plan}-{steps}"
    (folder / "engines").mkdir(parents=True)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    files = {"text": "text.plan", "transformer": "transformer.plan", "lcm_update": "lcm_update.plan"}
    files |= {"denoiser": "denoiser.plan", "vae": "vae.plan"}
    for kind, name in files.items():
        (folder / "engines" / name).write_text(PLANS[kind].format(k1=max(steps - 1, 1)))

    def rec(graph, kind, inputs, outputs, precision="fp16", **runtime):
        file = f"engines/{files[kind]}"
        return M.GraphRecord(graph, file, (file,), M.Precision(precision), 32, 32, inputs, outputs, 1, runtime)

    step = rec(
        "transformer",
        "transformer",
        (_t("latents", "B", *LATENT), _t("timestep", "B"), _t("prompt_embeds", "B", 3, 8)),
        (_t("noise_pred", "B", *LATENT),),
    )
    step = dataclasses.replace(step, inputs=(*step.inputs, _t("control_residuals", 1, "B", 4, 8)))
    update = rec(
        "lcm_update",
        "lcm_update",
        (_t("latents", "B", *LATENT), _t("noise_pred", "B", *LATENT), _t("step_noise", "B", *LATENT), _t("coef", 3)),
        (_t("latents_next", "B", *LATENT),),
        precision="fp32",
    )
    den_io = (
        (_t("latents", "B", *LATENT), _t("step_noise", steps - 1, "B", *LATENT), _t("prompt_embeds", "B", 3, 8)),
        (_t("denoised", "B", *LATENT),),
    )
    unrolled = rec(f"denoiser_lcm{steps}", "denoiser", *den_io)
    looped = dataclasses.replace(
        unrolled,
        file=step.file,
        files=(step.file, update.file),
        runtime={"k_step_loop": {"transformer": step.file, "lcm_update": update.file}},
    )
    text = rec("text_encoder", "text", (_t("input_ids", "B", 3),), (_t("prompt_embeds", "B", 3, 8),))
    vae = rec("vae_decoder", "vae", (_t("latents", "B", *LATENT),), (_t("image", "B", *LATENT),))
    engines = {"loop": (text, looped, step, update, vae), "unrolled": (text, unrolled, vae)}[plan]
    ts = tuple(int(t) for t in lcm_timesteps(steps))
    manifest = M.Manifest(
        schema_version=M.SCHEMA_VERSION,
        toolchain={},
        target="trt-t4",
        backend=M.BackendInfo("tensorrt", "10.8.0.43", ("10.0", None)),
        device=M.Device(kind="gpu", arch="sm_75", sm=75),
        model=M.ModelRecord("tiny", None, "tiny", False, "c", "w", "i"),
        build_key="k",
        status="compiled",
        steps=steps,
        lcm=M.LcmRecord(
            "diffusers", 1000, ts, (0.0,) * steps, (1.0,) * steps, tuple(float(alphas_cumprod()[t]) for t in ts)
        ),
        resolutions=((32, 32),),
        latent_channels=4,
        vae_scale_factor=8,
        tokenizer=M.TokenizerRecord("tokenizers", "tokenizer", 3, 0, "T5"),
        graphs=(),
        engines=engines,
        default_precision=M.Precision.FP16,
        parity=None,
        files=M.file_table(folder),
        build={"k_step_plan": loop.plan_record(steps, plan)},
    )
    M.write_manifest(folder, manifest)
    return folder


def _reference(x, noise, manifest_folder) -> np.ndarray:
    """The K-step loop in float32 numpy, as the fake engines compute it, with loop.py's coefficients: so
    the C++ coefficients and loop wiring must match Python's to float32 rounding."""
    m = M.read_manifest(manifest_folder)
    coef = loop.record_coefficients(m.lcm)
    x = x.astype(np.float32)
    for k, t in enumerate(m.lcm.timesteps):
        eps = np.float32(0.3) * x + np.float32(1e-3) * np.float32(t)
        n = noise[k] if k + 1 < len(m.lcm.timesteps) else np.zeros_like(x)
        x = coef[k, 0] * x + coef[k, 1] * eps + coef[k, 2] * n
    return x


class Driver:
    def __init__(self, binary: Path, folder: Path, work: Path, mode: str = "graph", env=None):
        self.binary, self.folder, self.work, self.mode, self.env = binary, folder, work, mode, env
        self.lines: list[str] = []
        self.calls: list[tuple[str, dict]] = []

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> str:
        i = len(self.calls)
        d = self.work / f"in{i}"
        d.mkdir(parents=True)
        for name, arr in feeds.items():
            np.ascontiguousarray(arr, np.float32).tofile(d / f"{name}.f32")
            (d / f"{name}.shape").write_text(" ".join(map(str, arr.shape)))
        self.lines.append(f"run {graph} 32 32 {d} {self.work / f'out{i}'}")
        self.calls.append((graph, feeds))
        return str(self.work / f"out{i}")

    def op(self, line: str) -> None:
        self.lines.append(line)

    def go(self) -> tuple[list[np.ndarray], list[str]]:
        env = {**os.environ, **(self.env or {})}
        res = subprocess.run(
            [str(self.binary), str(self.folder), self.mode],
            input="\n".join(self.lines) + "\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert res.returncode == 0 and "error" not in res.stdout.split("\n")[-2:][0], res.stdout + res.stderr
        outs = []
        for i in range(len(self.calls)):
            shape = tuple(int(v) for v in (self.work / f"out{i}.shape").read_text().split())
            outs.append(np.fromfile(self.work / f"out{i}.f32", np.float32).reshape(shape))
        return outs, res.stdout.splitlines()


def _request(batch: int, seed: int, steps: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "latents": rng.standard_normal((batch, *LATENT)).astype(np.float32),
        "step_noise": rng.standard_normal((steps - 1, batch, *LATENT)).astype(np.float32),
        "prompt_embeds": np.zeros((batch, 3, 8), np.float32),
    }


@pytest.mark.parametrize("batches", [(1, 2, 1), (2, 1, 2), (2, 1, 2, 1)])  # the last: 3 images in chunks, twice
def test_loop_plan_runs_in_cpp_as_in_python_whatever_the_batch_order(binary, tmp_path, batches):
    folder = _folder(tmp_path, "loop")
    held = {"FAKE_TRT_HELD": "1"} if len(batches) == 4 else None  # plans read through the held files too
    drv = Driver(binary, folder, tmp_path / "w", env=held)
    feeds = [_request(b, 10 + i) for i, b in enumerate(batches)]
    for f in feeds:
        drv.run("denoiser_lcm4", f)
    drv.op("stats")
    outs, lines = drv.go()
    for f, got in zip(feeds, outs):
        np.testing.assert_allclose(got, _reference(f["latents"], f["step_noise"], folder), rtol=1e-6, atol=1e-6)
    stats = next(line for line in lines if line.startswith("stats"))
    assert "frees=0" in stats and f"launches={len(batches)}" in stats  # one graph per call, nothing freed
    assert "final deserialize denoiser" not in lines  # the unrolled engine is never loaded
    assert lines[-1] == "blocks_left 0"  # everything freed when the runner goes


@pytest.mark.parametrize("batches", [(1, 2, 1), (2, 1, 2)])
def test_unrolled_plan_graphs_stay_valid_when_the_batch_changes(binary, tmp_path, batches):
    """Finding 2: `bind` freed and reallocated every buffer when the batch changed while the CUDA graphs of
    the earlier batch kept its addresses; the fake aborts on that replay."""
    folder = _folder(tmp_path, "unrolled")
    drv = Driver(binary, folder, tmp_path / "w")
    feeds = [_request(b, 20 + i) for i, b in enumerate(batches)]
    for f in feeds:
        drv.run("denoiser_lcm4", f)
    outs, lines = drv.go()
    for f, got in zip(feeds, outs):
        np.testing.assert_array_equal(got, 2 * f["latents"])
    assert "final deserialize denoiser" in lines and "final deserialize transformer" not in lines


def test_one_step_loop_reads_no_uninitialised_noise_in_cpp(binary, tmp_path):
    """Finding 4: with `--steps 1` no step noise is copied; fresh fake device memory is NaN."""
    folder = _folder(tmp_path, "loop", steps=1)
    drv = Driver(binary, folder, tmp_path / "w")
    feeds = [_request(b, 30 + b, steps=1) for b in (1, 2)]
    for f in feeds:
        drv.run("denoiser_lcm1", f)
    outs, _ = drv.go()
    for f, got in zip(feeds, outs):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, _reference(f["latents"], f["step_noise"], folder), rtol=1e-6, atol=1e-6)


def test_cpp_loop_uploads_no_control_residual_zeros(binary, tmp_path):
    """Finding 5: a replayed call moves x_T, the captions and the step noise host -> device, nothing else."""
    folder = _folder(tmp_path, "loop")
    drv = Driver(binary, folder, tmp_path / "w")
    first, again = _request(2, 40), _request(2, 41)
    drv.run("denoiser_lcm4", first)
    drv.op("stats")
    drv.run("denoiser_lcm4", again)
    drv.op("stats")
    _, lines = drv.go()
    h2d = [int(line.split("h2d=")[1].split()[0]) for line in lines if line.startswith("stats")]
    assert h2d[1] - h2d[0] == sum(a.nbytes for a in again.values())


def test_release_destroys_before_the_next_engine_loads_in_cpp(binary, tmp_path):
    """Finding 6 (`--low-memory`): the text encoder's context and engine are destroyed before the loop's
    engines are deserialized; a released graph loads again on its next run."""
    folder = _folder(tmp_path, "loop")
    drv = Driver(binary, folder, tmp_path / "w")
    ids = np.arange(6, dtype=np.float32).reshape(2, 3)
    drv.run("text_encoder", {"input_ids": ids})
    drv.op("loaded")
    drv.op("release text_encoder")
    drv.op("loaded")
    drv.run("denoiser_lcm4", _request(2, 50))
    drv.op("loaded")
    drv.op("release denoiser_lcm4")
    drv.op("loaded")
    drv.op("events")
    outs, lines = drv.go()
    np.testing.assert_array_equal(outs[0], np.repeat(ids, 8).reshape(2, 3, 8))
    assert [line for line in lines if line.startswith("loaded")] == [
        "loaded text_encoder",
        "loaded",
        "loaded denoiser_lcm4 lcm_update transformer",
        "loaded",
    ]
    events = [line[len("event ") :] for line in lines if line.startswith("event ")]
    assert events[:5] == [
        "deserialize text",
        "destroy context text",
        "destroy engine text",
        "deserialize transformer",
        "deserialize lcm_update",
    ]
    kinds = ("transformer", "lcm_update")
    assert sorted(events[5:]) == sorted(f"destroy {what} {k}" for k in kinds for what in ("context", "engine"))


def test_an_enqueue_failing_inside_the_capture_falls_back_to_eager(binary, tmp_path):
    """An enqueue inside a capture is checked: the capture is ended and discarded, the calls run eagerly
    and give the same result (no half-captured graph is launched)."""
    for plan in ("loop", "unrolled"):
        folder = _folder(tmp_path, plan)
        drv = Driver(binary, folder, tmp_path / f"w-{plan}", env={"FAKE_TRT_FAIL_IN_CAPTURE": "1"})
        feeds = [_request(b, 60 + b) for b in (2, 1)]
        for f in feeds:
            drv.run("denoiser_lcm4", f)
        drv.op("stats")
        outs, lines = drv.go()
        for f, got in zip(feeds, outs):
            want = _reference(f["latents"], f["step_noise"], folder) if plan == "loop" else 2 * f["latents"]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert "launches=0" in next(line for line in lines if line.startswith("stats"))
