"""backends/tensorrt/compile.py without TensorRT: version/arch matching, profiles, cache keys, and the
whole compile flow against a fake `tensorrt` module (records what the real API would be asked); the
host checks of a compiled folder (`TensorRT.check_host`)."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import onnx
import pytest
from _onnx_graphs import linear_residual

from pixart_export import manifest as M
from pixart_export.backends.tensorrt import compile as C
from pixart_export.backends.tensorrt import runner
from pixart_export.errors import UserError
from pixart_export.manifest import BackendInfo, Device, EngineError, Precision, read_manifest, write_manifest
from pixart_export.targets import TARGETS

T4_GPU = {"name": "Tesla T4", "sm": 75, "driver": "12.4"}

T4 = TARGETS["trt-t4"]


@pytest.mark.parametrize(
    "version,allowed,ok",
    [
        ("10.4.0.26", ("10.0", "10.4"), True),
        ("10.5.0", ("10.0", "10.4"), False),
        ("9.3.0", ("10.0", None), False),
        ("11.0.1", ("10.0", None), True),
        ("10.0.1.6", ("10.0", "10.4"), True),
    ],
)
def test_version_allowed(version, allowed, ok):
    assert C.version_allowed(version, allowed) is ok


def test_refusals_say_what_to_do():
    with pytest.raises(UserError, match="Volta"):
        C.check_tensorrt_version(TARGETS["trt-v100"], "10.7.0")
    with pytest.raises(UserError, match=r"sm_80.*trt-t4 \(sm_75\)"):
        C.check_device(TARGETS["trt-t4"], {"name": "A100", "sm": 80})
    C.check_device(TARGETS["trt-t4"], T4_GPU)


def test_cache_key_is_content_hash():
    a = C.timing_cache_key("bundle", "fp16", "10.4.0", T4_GPU)
    assert a == C.timing_cache_key("bundle", "fp16", "10.4.0", dict(T4_GPU))
    others = {
        C.timing_cache_key("other", "fp16", "10.4.0", T4_GPU),
        C.timing_cache_key("bundle", "int8", "10.4.0", T4_GPU),
        C.timing_cache_key("bundle", "fp16", "10.5.0", T4_GPU),
        C.timing_cache_key("bundle", "fp16", "10.4.0", {**T4_GPU, "sm": 80}),
    }
    assert len(others | {a}) == 5


def test_host_can_compile_without_tensorrt():
    ok, why = (
        C.host_can_compile(TARGETS["trt-t4"], trt=None, device=None)
        if C.probe_tensorrt() is None
        else (False, "TensorRT is not installed")
    )
    assert not ok and "not installed" in why
    fake = types.SimpleNamespace(__version__="10.3.0")
    assert C.host_can_compile(TARGETS["trt-t4"], fake, {"name": "H100", "sm": 90})[0] is False
    assert C.host_can_compile(TARGETS["trt-t4"], fake, T4_GPU)[0] is True


class FakeTrt:
    """The calls of the TensorRT Python API that compile_trt makes, recorded."""

    __version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 4

    class BuilderFlag:
        TF32 = 6

    calls: list = []

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            FakeTrt.calls.append(("parse", path))
            onnx.load(path)  # it must be a real graph
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            FakeTrt.calls.append(("network", flags))
            return object()

        def create_builder_config(self):
            cfg = types.SimpleNamespace(profiles=[], flags={FakeTrt.BuilderFlag.TF32})  # TF32 is on by default
            cfg.clear_flag = cfg.flags.discard
            cfg.get_flag = lambda flag: flag in cfg.flags
            cfg.add_optimization_profile = lambda p: (
                cfg.profiles.append(p),
                FakeTrt.calls.append(("flags", cfg.flags)),
            )
            cfg.create_timing_cache = lambda data: ("cache", data)
            cfg.set_timing_cache = lambda cache, ignore: FakeTrt.calls.append(("cache", cache))
            cfg.get_timing_cache = lambda: types.SimpleNamespace(serialize=lambda: b"timing")
            return cfg

        def create_optimization_profile(self):
            shapes = {}
            prof = types.SimpleNamespace(shapes=shapes)
            prof.set_shape = lambda name, lo, opt, hi: shapes.__setitem__(name, (lo, opt, hi))
            FakeTrt.calls.append(("profile", shapes))
            return prof

        def build_serialized_network(self, network, config):
            return b"PLAN"


def _bundle(tmp_path, complete: bool = False) -> Path:
    """A minimal trt-t4 bundle: one fp16 graph (a small real ONNX graph), a tokenizer file, a manifest
    written by the one writer. `complete`: also the text_encoder, denoiser_lcm4 and vae_decoder graphs a
    folder must list for its bucket to load (the same small graph in files of their own)."""
    folder = tmp_path / "bundle"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    onnx.save(linear_residual(), str(folder / "g.fp16.onnx"))
    rec = {
        "file": "g.fp16.onnx",
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": ["B", 8, 16]},
            {"name": "t", "dtype": "float32", "shape": ["B", 1, 1]},
        ],
    }
    profile = C.profiles_for(TARGETS["trt-t4"], [rec])["g.fp16.onnx"]
    graph = M.GraphRecord(
        graph="transformer",
        file="g.fp16.onnx",
        files=("g.fp16.onnx",),
        precision=Precision.FP16,
        height=128,
        width=128,
        inputs=tuple(M.TensorRecord(t["name"], t["dtype"], tuple(t["shape"])) for t in rec["inputs"]),
        outputs=(M.TensorRecord("y", "float32", ("B", 8, 16)),),
        runtime={"profile": profile},
    )
    graphs = [graph]
    if complete:
        for name in ("text_encoder", "denoiser_lcm4", "vae_decoder"):
            file = f"{name}.fp16.onnx"
            onnx.save(linear_residual(), str(folder / file))
            graphs.append(dataclasses.replace(graph, graph=name, file=file, files=(file,)))
    manifest = M.Manifest(
        schema_version=M.SCHEMA_VERSION,
        toolchain={},
        target="trt-t4",
        backend=BackendInfo("tensorrt", None, ("10.0", None)),
        device=Device(kind="gpu", arch="sm_75", sm=75),
        model=M.ModelRecord("tiny", None, "tiny", False, "c", "w", "i"),
        build_key="k",
        status="bundle",
        steps=4,
        lcm=M.LcmRecord("diffusers", 1000, (999,), (0.0,), (1.0,), (0.5,)),
        resolutions=((128, 128),),
        latent_channels=4,
        vae_scale_factor=8,
        tokenizer=M.TokenizerRecord("tokenizers", "tokenizer", 120, 0, "T5"),
        graphs=tuple(graphs),
        default_precision=Precision.FP16,
        parity=None,
        files=M.file_table(folder),
        build={"compile_command": f"pixart-export compile {folder}"},
    )
    write_manifest(folder, manifest)
    return folder


def test_profiles():
    rec = {"file": "a.onnx", "inputs": [{"name": "x", "shape": ["B", 4, 16, 16]}, {"name": "s", "shape": [1]}]}
    assert C.profiles_for(TARGETS["trt-a100"], [rec]) == {
        "a.onnx": {
            "x": {"min": [1, 4, 16, 16], "opt": [1, 4, 16, 16], "max": [8, 4, 16, 16]},
            "s": {"min": [1], "opt": [1], "max": [1]},
        }
    }


def test_compile_with_fake_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    FakeTrt.calls = []
    manifest = C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU)
    assert ("network", 1 << 4) in FakeTrt.calls  # strongly typed
    assert ("flags", set()) in FakeTrt.calls  # TF32 cleared before the build
    profile = next(c[1] for c in FakeTrt.calls if c[0] == "profile")
    assert profile["x"] == ([1, 8, 16], [1, 8, 16], [2, 8, 16])  # T4: batch 1/1/2, rest static
    assert manifest.status == "compiled" and manifest.backend.version == "10.3.0"
    assert manifest.backend.requires == ("10.0", None)
    assert manifest.device == Device(kind="gpu", arch="sm_75", sm=75, name="Tesla T4", driver="12.4")
    engine = manifest.engines[0]
    assert (folder / engine.file).read_bytes() == b"PLAN" and "sm75" in engine.file
    assert engine.runtime["source"] == "g.fp16.onnx" and engine.precision == Precision.FP16
    assert engine.inputs == manifest.graphs[0].inputs and engine.bytes == 4
    assert engine.details["tf32"] is False and engine.details["strongly_typed"] is True
    assert manifest.build["compiled_with"]["builder"] == {"strongly_typed": True, "tf32": False}
    assert (tmp_path / "cache" / "trt-timing" / f"{engine.runtime['timing_cache']}.cache").read_bytes() == b"timing"
    assert read_manifest(folder) == manifest  # written by the one writer, read back identical
    assert manifest.runnable == manifest.engines and manifest.record("transformer", 128, 128) == engine
    assert "compiled_at" in manifest.build and manifest.build["compile_command"].endswith(str(folder))
    C.check_bundle_for_compile(folder, T4)  # files table includes the engine


def test_compile_only_some_precisions(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    assert C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU, only={"int8"}).engines == ()
    assert len(C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU, only={"fp16"}).engines) == 1


def test_compile_refuses_wrong_gpu_and_tampered_bundle(tmp_path):
    folder = _bundle(tmp_path)
    with pytest.raises(UserError, match="sm_90"):
        C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device={"name": "H100", "sm": 90})
    old = type("Old", (FakeTrt,), {"__version__": "9.2.0"})
    with pytest.raises(UserError, match=">= 10.0"):
        C.compile_bundle(folder, T4, log=lambda m: None, trt=old, device=T4_GPU)
    (folder / "g.fp16.onnx").write_bytes(b"changed")
    with pytest.raises(UserError, match="size|sha256"):
        C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU)
    data = json.loads((folder / "manifest.json").read_text())
    assert data["status"] == "bundle"


def test_compile_refuses_other_folders(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        C.compile_bundle(tmp_path / "nope", T4, trt=FakeTrt, device=T4_GPU)
    folder = _bundle(tmp_path)
    bundle = read_manifest(folder)
    write_manifest(  # another kind of folder written afresh (not a relabelled bundle: its seal goes too)
        folder,
        dataclasses.replace(
            bundle,
            target="ort-cpu",
            status="ready",
            backend=BackendInfo("onnxruntime", "1.18.0"),
            device=Device(kind="cpu", arch="any"),
            build={k: v for k, v in bundle.build.items() if k != "sealed_for"},
        ),
    )
    with pytest.raises(UserError, match="onnxruntime engine folder, not a TensorRT bundle"):
        C.compile_bundle(folder, T4, trt=FakeTrt, device=T4_GPU)


def _host(monkeypatch, version="10.3.0", device=T4_GPU):
    for module in (C, runner):
        monkeypatch.setattr(
            module, "probe_tensorrt", lambda: None if version is None else types.SimpleNamespace(__version__=version)
        )
        monkeypatch.setattr(module, "probe_device", lambda: device)


def test_check_host(tmp_path, monkeypatch):
    """What `runtime.load` asks of a TensorRT folder, with the host faked: compiled, same TensorRT
    version, same GPU architecture, and a GPU device record at all."""
    from pixart_export.targets import TENSORRT

    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    bundle = read_manifest(folder)
    _host(monkeypatch)
    with pytest.raises(EngineError, match="without engines; run `pixart-export compile"):
        TENSORRT.check_host(folder, bundle)
    compiled = C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU)
    TENSORRT.check_host(folder, compiled)
    _host(monkeypatch, version="10.4.0")
    with pytest.raises(EngineError, match="built with TensorRT 10.3.0, this host has 10.4.0"):
        TENSORRT.check_host(folder, compiled)
    _host(monkeypatch, version=None)
    with pytest.raises(EngineError, match=r"tensorrt is not installed: pip install 'pixart-export\[tensorrt-cu12\]'"):
        TENSORRT.check_host(folder, compiled)
    _host(monkeypatch, device={"name": "A100", "sm": 80, "driver": "12.4"})
    with pytest.raises(EngineError, match="engines are for sm_75 .Tesla T4.; this host has A100"):
        TENSORRT.check_host(folder, compiled)
    _host(monkeypatch, device=None)
    with pytest.raises(EngineError, match="engines are for sm_75"):
        TENSORRT.check_host(folder, compiled)
    # a folder that claims TensorRT but whose manifest has no GPU description: refused in one line, not
    # an AttributeError (seen when an ort-cpu manifest was relabelled)
    relabelled = dataclasses.replace(compiled, device=Device(kind="cpu", arch="any"))
    with pytest.raises(EngineError, match="does not describe a GPU"):
        TENSORRT.check_host(folder, relabelled)


def test_runtime_load_checks_the_host(tmp_path, monkeypatch):
    from pixart_export import runtime

    folder = _bundle(tmp_path, complete=True)
    _host(monkeypatch)
    with pytest.raises(EngineError, match="without engines"):
        runtime.load(folder)


def test_tensorrt_and_cuda_python_of_one_cuda_major():
    """trt-v100: TensorRT <= 10.4 exists for CUDA 12 only; every target: TensorRT and cuda-python of one
    major; the refusals name what to install."""
    v100 = TARGETS["trt-v100"]
    assert v100.trt.cuda == (12,) and T4.trt.cuda == (12, 13)
    for t in TARGETS.values():
        if t.trt is not None:  # the registry's CUDA majors follow from its TensorRT range
            assert t.trt.cuda == runner.cuda_majors(t.trt.tensorrt), t.name
    C.check_tensorrt_version(v100, "10.4.0.26", {"tensorrt_cuda": 12, "cuda_python": "12.9.0"})
    with pytest.raises(UserError, match=r"pip install 'tensorrt-cu12>=10.0,<10.5' 'cuda-python>=12,<13'"):
        C.check_tensorrt_version(v100, "10.13.3.9", {"tensorrt_cuda": 13, "cuda_python": "13.0.0"})
    with pytest.raises(
        UserError, match=r"CUDA 13 is installed; this needs CUDA 12: pip install 'tensorrt-cu12>=10.0,<10.5'"
    ):
        C.check_tensorrt_version(v100, "10.4.0", {"tensorrt_cuda": 13, "cuda_python": "13.0.0"})
    with pytest.raises(UserError, match=r"CUDA 12 with cuda-python 13.0.1 .*pixart-export\[tensorrt-cu12\]"):
        C.check_tensorrt_version(T4, "10.8.0", {"tensorrt_cuda": 12, "cuda_python": "13.0.1"})
    C.check_tensorrt_version(T4, "10.13.3.9", {"tensorrt_cuda": 13, "cuda_python": "13.0.1"})
    C.check_tensorrt_version(T4, "10.8.0", {})  # nothing known about the wheels: the version decides
    assert C.install_hint(T4) == (
        "pip install 'pixart-export[tensorrt-cu12]' (R525+ driver) or 'pixart-export[tensorrt-cu13]' (R580+ driver)"
    )


def test_compile_refuses_mixed_cuda_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    mixed = {"tensorrt_cuda": 12, "cuda_python": "13.0.0"}
    with pytest.raises(UserError, match="one CUDA major"):
        C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU, stack=mixed)
    stack = {"tensorrt_cuda": 12, "cuda_python": "12.9.0"}
    manifest = C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU, stack=stack)
    assert manifest.build["compiled_with"]["tensorrt_cuda"] == 12
    assert manifest.build["compiled_with"]["cuda_python"] == "12.9.0"


def test_check_host_refuses_tensorrt_outside_the_range(tmp_path, monkeypatch):
    """A trt-v100 folder on a host whose TensorRT is 10.5+: the range and what to install, before the
    exact-version rule."""
    folder = _bundle(tmp_path)
    manifest = dataclasses.replace(
        read_manifest(folder),
        target="trt-v100",
        status="compiled",
        backend=BackendInfo("tensorrt", "10.4.0", ("10.0", "10.4")),
        engines=read_manifest(folder).graphs,
    )
    _host(monkeypatch, version="10.7.0")
    from pixart_export.targets import TENSORRT

    with pytest.raises(EngineError, match=r"TensorRT 10.7.0 cannot run trt-v100 .*<= 10.4; pip install 'tensorrt-cu12"):
        TENSORRT.check_host(folder, manifest)


def test_extras_pin_one_cuda_major():
    """pyproject's `tensorrt-cu<N>` extras: TensorRT of that CUDA major from its first release, with the
    cuda-python of the same major (cuda-python 13 on an older driver fails every call with error 35)."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for major, extra in runner.EXTRAS.items():
        pins = {p.split(">")[0].split("=")[0].split("<")[0]: p for p in extras[extra]}
        assert set(pins) == {f"tensorrt-cu{major}", "cuda-python"}, pins
        assert pins["cuda-python"] == f"cuda-python>={major}.0,<{major + 1}", pins
        assert pins[f"tensorrt-cu{major}"].startswith(f"tensorrt-cu{major}>={runner.FIRST_TENSORRT[major]}"), pins


def _with_lcm_update(folder: Path) -> None:
    """Add the K-step loop's `lcm_update` graph (fp32, as a trt-* build writes it) to a `_bundle`."""
    from pixart_export.backends.tensorrt.loop import lcm_update_model, plan_record
    from pixart_export.graphs import LCM_UPDATE

    onnx.save(lcm_update_model(4, 16, 16), str(folder / "lcm_update_128x128.onnx"))
    shape = ("B", 4, 16, 16)
    inputs = tuple(M.TensorRecord(t.name, "float32", shape if len(t.dims) > 1 else (3,)) for t in LCM_UPDATE.inputs)
    rec = {"file": "lcm_update_128x128.onnx", "inputs": [{"name": t.name, "shape": list(t.shape)} for t in inputs]}
    update = M.GraphRecord(
        graph="lcm_update",
        file="lcm_update_128x128.onnx",
        files=("lcm_update_128x128.onnx",),
        precision=Precision.FP32,
        height=128,
        width=128,
        inputs=inputs,
        outputs=(M.TensorRecord("latents_next", "float32", shape),),
        runtime={"profile": C.profiles_for(T4, [rec])["lcm_update_128x128.onnx"]},
    )
    m = read_manifest(folder)
    build = {**m.build, "k_step_plan": plan_record(4)}
    write_manifest(folder, dataclasses.replace(m, graphs=(*m.graphs, update), build=build, files=M.file_table(folder)))


def test_compile_builds_the_lcm_update_engine_with_any_precision(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    _with_lcm_update(folder)
    FakeTrt.calls = []
    manifest = C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU, only={"fp16"})
    assert [(e.graph, e.precision) for e in manifest.engines] == [
        ("transformer", Precision.FP16),
        ("lcm_update", Precision.FP32),
    ]  # the bundle has no denoiser_lcm4 graph, so no loop record
    parsed = [Path(c[1]).name for c in FakeTrt.calls if c[0] == "parse"]
    assert parsed == ["g.fp16.onnx", "lcm_update_128x128.onnx"]
    profiles = [c[1] for c in FakeTrt.calls if c[0] == "profile"]
    assert profiles[1]["coef"] == ([3], [3], [3]) and profiles[1]["latents"][2] == [2, 4, 16, 16]
    update = manifest.record("lcm_update", 128, 128)
    assert update.runtime["source"] == "lcm_update_128x128.onnx" and manifest.build["k_step_plan"]["plan"] == "loop"


# -- issue #23: only the plan's engines, one timing cache per bundle and precision -----------------------
def _with_denoiser_and_second_fp16(folder: Path, plan: str) -> None:
    """A `_bundle` with lcm_update, an unrolled `denoiser_lcm4` and a second fp16 graph (`vae_decoder`), and
    `plan` in `build.k_step_plan`."""
    from pixart_export.backends.tensorrt.loop import plan_record

    _with_lcm_update(folder)
    m = read_manifest(folder)
    step = m.graphs[0]
    for name in ("denoiser_lcm4.fp16.onnx", "vae_decoder.fp16.onnx"):
        onnx.save(linear_residual(), str(folder / name))
    den = dataclasses.replace(
        step, graph="denoiser_lcm4", file="denoiser_lcm4.fp16.onnx", files=("denoiser_lcm4.fp16.onnx",)
    )
    vae = dataclasses.replace(step, graph="vae_decoder", file="vae_decoder.fp16.onnx", files=("vae_decoder.fp16.onnx",))
    build = {**m.build, "k_step_plan": plan_record(4, plan)}
    write_manifest(
        folder, dataclasses.replace(m, graphs=(*m.graphs, den, vae), build=build, files=M.file_table(folder))
    )


@pytest.mark.parametrize(
    ("plan", "both", "built"),
    [
        ("loop", False, ["g.fp16.onnx", "lcm_update_128x128.onnx", "vae_decoder.fp16.onnx"]),
        ("unrolled", False, ["denoiser_lcm4.fp16.onnx", "vae_decoder.fp16.onnx"]),
        ("loop", True, ["g.fp16.onnx", "lcm_update_128x128.onnx", "denoiser_lcm4.fp16.onnx", "vae_decoder.fp16.onnx"]),
    ],
)
def test_compile_builds_only_the_engines_the_plan_runs(tmp_path, monkeypatch, plan, both, built):
    """Finding 3: the plan "loop" never runs the unrolled denoiser engine, so it is not built (K copies of
    the DiT per precision); its record points at the loop's two engines instead, and the runtime reads
    that. "unrolled" builds no loop engines. `--both-plans` builds both, the loop's record first."""
    from pixart_export.backends.tensorrt import loop

    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    _with_denoiser_and_second_fp16(folder, plan)
    FakeTrt.calls = []
    manifest = C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU, both_plans=both)
    assert [Path(c[1]).name for c in FakeTrt.calls if c[0] == "parse"] == built
    assert read_manifest(folder) == manifest
    den = manifest.record("denoiser_lcm4", 128, 128)
    assert loop.uses_loop(manifest, den) == (plan == "loop")
    if plan == "loop":
        step, update = loop.loop_engines(manifest, den)
        assert (step.graph, update.graph) == ("transformer", "lcm_update") and den.file == step.file
        assert den.inputs == manifest.graphs[0].inputs and den.runtime["source"] == "denoiser_lcm4.fp16.onnx"
    unrolled = [e for e in manifest.engines if e.graph == "denoiser_lcm4" and "k_step_loop" not in e.runtime]
    assert len(unrolled) == (1 if plan == "unrolled" or both else 0)
    for e in unrolled:
        assert not loop.uses_loop(manifest, e)
    info = manifest.build["k_step_plan"]
    assert info["compiled"] == (["loop", "unrolled"] if both else [plan])
    assert [s["graph"] for s in info["skipped"]] == (
        [] if both else (["denoiser_lcm4"] if plan == "loop" else ["transformer", "lcm_update"])
    )


def test_one_timing_cache_per_bundle_and_precision(tmp_path, monkeypatch):
    """Item 7: the fp16 graphs of a bundle share one timing cache (the second build reads what the first
    wrote), lcm_update (fp32) has its own, and a cache per graph is gone."""
    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    _with_denoiser_and_second_fp16(folder, "loop")
    FakeTrt.calls = []
    manifest = C.compile_bundle(folder, T4, log=lambda m: None, trt=FakeTrt, device=T4_GPU)
    built = [e for e in manifest.engines if "k_step_loop" not in e.runtime]
    keys = {e.file: e.runtime["timing_cache"] for e in built}
    fp16 = {keys[e.file] for e in built if e.precision == Precision.FP16}
    assert len(fp16) == 1 and len(set(keys.values())) == 2
    assert fp16 == {C.timing_cache_key(manifest.build_key, "fp16", "10.3.0", T4_GPU)}
    loaded = [c[1][1] for c in FakeTrt.calls if c[0] == "cache"]  # the bytes each build started from
    assert loaded == [b"", b"", b"timing"]  # transformer (fp16, new), lcm_update (fp32, new), vae (fp16, shared)
    assert sorted(p.name for p in (tmp_path / "cache" / "trt-timing").iterdir()) == sorted(
        f"{k}.cache" for k in set(keys.values())
    )
