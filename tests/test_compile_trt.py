"""pixart_export.compile_trt without TensorRT: version/arch matching, profiles, cache keys, and the
whole compile flow against a fake `tensorrt` module (records what the real API would be asked)."""
from __future__ import annotations

import json
import types

import onnx
import pytest

from pixart_export import compile_trt as C
from pixart_export.build_trt import profiles_for
from pixart_export.errors import UserError
from pixart_export.manifest import SCHEMA_VERSION, file_table, read_manifest, write_json_atomic
from pixart_export.targets import TARGETS
from _onnx_graphs import linear_residual

T4_GPU = {"name": "Tesla T4", "sm": 75, "driver": "12.4"}


@pytest.mark.parametrize("version,allowed,ok", [
    ("10.4.0.26", ("10.0", "10.4"), True), ("10.5.0", ("10.0", "10.4"), False), ("9.3.0", ("10.0", None), False),
    ("11.0.1", ("10.0", None), True), ("10.0.1.6", ("10.0", "10.4"), True)])
def test_version_allowed(version, allowed, ok):
    assert C.version_allowed(version, allowed) is ok


def test_refusals_say_what_to_do():
    with pytest.raises(UserError, match="Volta"):
        C.check_tensorrt_version(TARGETS["trt-v100"], "10.7.0")
    with pytest.raises(UserError, match=r"sm_80.*trt-t4 \(sm_75\)"):
        C.check_device(TARGETS["trt-t4"], {"name": "A100", "sm": 80})
    C.check_device(TARGETS["trt-t4"], T4_GPU)


def test_cache_key_is_content_hash():
    a = C.timing_cache_key("aa", "10.4.0", T4_GPU)
    assert a == C.timing_cache_key("aa", "10.4.0", dict(T4_GPU))
    assert len({a, C.timing_cache_key("ab", "10.4.0", T4_GPU), C.timing_cache_key("aa", "10.5.0", T4_GPU),
                C.timing_cache_key("aa", "10.4.0", {**T4_GPU, "sm": 80})}) == 4


def test_host_can_compile_without_tensorrt():
    ok, why = C.host_can_compile(TARGETS["trt-t4"], trt=None, device=None) if C.probe_tensorrt() is None \
        else (False, "TensorRT is not installed")
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
            cfg = types.SimpleNamespace(profiles=[])
            cfg.add_optimization_profile = cfg.profiles.append
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


def _bundle(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    onnx.save(linear_residual(), str(folder / "g.fp16.onnx"))
    rec = {"graph": "transformer", "file": "g.fp16.onnx", "files": ["g.fp16.onnx"], "precision": "fp16",
           "height": 128, "width": 128, "inputs": [{"name": "x", "dtype": "float32", "shape": ["B", 8, 16]},
                                                   {"name": "t", "dtype": "float32", "shape": ["B", 1, 1]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": ["B", 8, 16]}]}
    manifest = {"schema_version": SCHEMA_VERSION, "target": "trt-t4", "status": "bundle",
                "backend": {"name": "tensorrt", "version": None}, "device": {"arch": "sm_75", "sm": 75},
                "graphs": [rec], "profiles": profiles_for(TARGETS["trt-t4"], [rec]), "engines": [],
                "files": file_table(folder)}
    write_json_atomic(folder / "manifest.json", manifest)
    return folder


def test_compile_with_fake_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXART_EXPORT_CACHE", str(tmp_path / "cache"))
    folder = _bundle(tmp_path)
    FakeTrt.calls = []
    manifest = C.compile_bundle(folder, log=lambda m: None, trt=FakeTrt, device=T4_GPU)
    assert ("network", 1 << 4) in FakeTrt.calls  # strongly typed
    profile = next(c[1] for c in FakeTrt.calls if c[0] == "profile")
    assert profile["x"] == ([1, 8, 16], [1, 8, 16], [2, 8, 16])  # T4: batch 1/1/2, rest static
    assert manifest["status"] == "compiled" and manifest["backend"]["version"] == "10.3.0"
    assert manifest["device"]["name"] == "Tesla T4" and manifest["device"]["driver"] == "12.4"
    engine = manifest["engines"][0]
    assert (folder / engine["file"]).read_bytes() == b"PLAN" and "sm75" in engine["file"]
    assert (tmp_path / "cache" / "trt-timing" / f"{engine['timing_cache']}.cache").read_bytes() == b"timing"
    assert read_manifest(folder)["status"] == "compiled"
    C.check_bundle_for_compile(folder)  # files table includes the engine


def test_compile_refuses_wrong_gpu_and_tampered_bundle(tmp_path):
    folder = _bundle(tmp_path)
    with pytest.raises(UserError, match="sm_90"):
        C.compile_bundle(folder, log=lambda m: None, trt=FakeTrt, device={"name": "H100", "sm": 90})
    old = type("Old", (FakeTrt,), {"__version__": "9.2.0"})
    with pytest.raises(UserError, match=">= 10.0"):
        C.compile_bundle(folder, log=lambda m: None, trt=old, device=T4_GPU)
    (folder / "g.fp16.onnx").write_bytes(b"changed")
    with pytest.raises(UserError, match="size|sha256"):
        C.compile_bundle(folder, log=lambda m: None, trt=FakeTrt, device=T4_GPU)
    data = json.loads((folder / "manifest.json").read_text())
    assert data["status"] == "bundle"


def test_runtime_refuses_a_manifest_without_a_gpu_device(tmp_path):
    """A folder that claims TensorRT but whose manifest has no GPU description is refused in one line,
    not with an AttributeError (seen when an ort-cpu manifest was relabelled)."""
    from pixart_export.manifest import EngineError
    from pixart_export.runtime.trt import load_tensorrt

    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema_version": SCHEMA_VERSION, "target": "trt-t4", "backend": {"name": "tensorrt", "version": "10.4"},
        "device": "any CPU", "status": "compiled", "engines": {"x": "y"}, "files": {}, "graphs": []}))
    with pytest.raises(EngineError, match="does not describe a GPU"):
        load_tensorrt(tmp_path)
