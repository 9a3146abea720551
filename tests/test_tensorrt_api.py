"""The TensorRT Python API this project calls exists in the real bindings of every supported version.

No GPU and no TensorRT libraries are needed: the `tensorrt-cu12-bindings` / `tensorrt-cu13-bindings`
wheels (about 1 MB each, the pybind11 module alone) are downloaded with pip into a private cache
(`$PIXART_EXPORT_CACHE/trt-api`, default ~/.cache/pixart-export/trt-api, outside the repository), and
the native libraries they link (`readelf -d`: libnvinfer, libnvonnxparser, libnvinfer_plugin) are
replaced by stubs built with the system C compiler that define the functions the module imports
(`readelf --dyn-syms`: createInferBuilder_INTERNAL and the like; nothing calls them at import). The
module then imports in a subprocess and every attribute is looked up.

What is looked up is gathered from pixart_export's source with `ast`, not listed by hand:
- every attribute chain on the module (`trt.BuilderFlag.TF32`, `trt.Logger.WARNING`, ...);
- every attribute used on a TensorRT object, its class followed from the calls that make it
  (`builder = trt.Builder(...)`, `config = builder.create_builder_config()`, `self.engine =
  runtime.deserialize_cuda_engine(...)`; `RETURNS` says which call returns which class, and is itself
  checked against the bindings).

This test needs the network (PyPI) on its first run; offline it skips with the reason, and a cached
version runs offline. About 25 s cold on 2 cores, a few seconds warm, so it is not marked slow and CI
runs it.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: {CUDA major: versions}: the oldest TensorRT 10 (trt-v100's lowest), 10.4 (its highest), a middle 10.x,
#: the last 10.x, the first 11 and the newest published when this was written; for CUDA 13 the first
#: tensorrt-cu13 (10.13), the last 10.x and the newest.
VERSIONS = {
    12: ("10.0.1", "10.4.0", "10.8.0.43", "10.16.1.11", "11.0.0.114", "11.4.0.106"),
    13: ("10.13.3.9", "10.16.1.11", "11.4.0.106"),
}
#: The TensorRT calls whose result the project uses, and the class of that result; checked below too.
RETURNS = {
    "Builder": "Builder",
    "Runtime": "Runtime",
    "OnnxParser": "OnnxParser",
    "Logger": "Logger",
    "create_network": "INetworkDefinition",
    "create_builder_config": "IBuilderConfig",
    "create_optimization_profile": "IOptimizationProfile",
    "create_timing_cache": "ITimingCache",
    "get_timing_cache": "ITimingCache",
    "build_serialized_network": "IHostMemory",
    "deserialize_cuda_engine": "ICudaEngine",
    "create_execution_context": "IExecutionContext",
}
#: Function parameters that carry a TensorRT object from another function (by name, in the TensorRT
#: backend's files only).
PARAMETERS = {"runtime": "Runtime"}
MODULE_NAMES = {"trt", "tensorrt"}
BACKEND = ROOT / "pixart_export" / "backends" / "tensorrt"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _chain(node, modules: set[str]) -> list[str] | None:
    """`trt.A.B` -> ["A", "B"] when `trt` is the module in this scope (`modules`), else None."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in modules and names:
        return names[::-1]
    return None


def _called(node) -> str | None:
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)


def _local_module_names(f, file_level: set[str]) -> tuple[set[str], set[str]]:
    """(names bound to the module in function `f` by an import or `= ...probe_tensorrt()...`, names it
    rebinds to something else, e.g. `trt = ctx.target.trt`, a registry row)."""
    bound, other = set(file_level), set()
    for node in ast.walk(f):
        if isinstance(node, ast.Import):
            bound |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in MODULE_NAMES:
                    probed = any(
                        isinstance(c, ast.Call) and _called(c) == "probe_tensorrt" for c in ast.walk(node.value)
                    )
                    (bound if probed else other).add(t.id)
    return bound, other - bound


def _module_scopes(trees: dict[Path, ast.Module]) -> dict[ast.AST, set[str]]:
    """{function: the names that are the `tensorrt` module in it}. A parameter named `trt` is the module
    only where a caller passes the module to it (followed through calls by function name)."""
    local, by_name = {}, {}
    for tree in trees.values():
        file_level = {
            a.asname or a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names if a.name == "tensorrt"
        }
        for f in (n for n in ast.walk(tree) if isinstance(n, FUNCTIONS)):
            local[f] = _local_module_names(f, file_level)
            by_name.setdefault(f.name, []).append(f)
    params: dict[ast.AST, set[str]] = {f: set() for f in local}

    def modules(f) -> set[str]:
        bound, other = local[f]
        return bound | (params[f] - other)

    for _ in range(3):  # callers of callers
        for g in local:
            here = modules(g)
            for call in (c for c in ast.walk(g) if isinstance(c, ast.Call)):
                for f in by_name.get(_called(call) or "", []):
                    names = [a.arg for a in f.args.args]
                    names = names[1:] if names[:1] == ["self"] else names
                    passed = list(zip(names, call.args)) + [(k.arg, k.value) for k in call.keywords]
                    params[f] |= {
                        p for p, v in passed if p in MODULE_NAMES and isinstance(v, ast.Name) and v.id in here
                    }
    return {f: modules(f) for f in local}


class _Types:
    """The TensorRT class of the names and `self.` attributes of one file, followed through assignments."""

    def __init__(self, tree, scopes: dict, backend: bool):
        self.backend, self.scopes = backend, scopes
        self.self_attrs: dict[str, str] = {}
        self.uses: set[tuple[str, str]] = set()
        funcs = [n for n in ast.walk(tree) if isinstance(n, FUNCTIONS)]
        for _ in range(2):  # self attributes assigned in one method and used in another
            for f in funcs:
                self._function(f, record=False)
        for f in funcs:
            self._function(f, record=True)

    def type_of(self, node, env, modules) -> str | None:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return self.self_attrs.get(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = _chain(node.func, modules)
            if chain and len(chain) == 1:
                return RETURNS.get(chain[0])  # trt.Builder(...)
            if self.type_of(node.func.value, env, modules) is not None:
                return RETURNS.get(node.func.attr)  # builder.create_network(...)
        return None

    def _function(self, f, record: bool) -> None:
        modules = self.scopes[f]
        env = {}
        if self.backend:
            env = {a.arg: PARAMETERS[a.arg] for a in f.args.args if a.arg in PARAMETERS}
        nodes = sorted(
            (n for n in ast.walk(f) if isinstance(n, (ast.Assign, ast.Attribute))),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for n in nodes:
            if isinstance(n, ast.Assign) and len(n.targets) == 1:
                kind, target = self.type_of(n.value, env, modules), n.targets[0]
                if kind and isinstance(target, ast.Name):
                    env[target.id] = kind
                elif kind and isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "self":
                    self.self_attrs[target.attr] = kind
            elif record and isinstance(n, ast.Attribute):
                kind = self.type_of(n.value, env, modules)
                if kind is not None:
                    self.uses.add((kind, n.attr))


def used_api() -> dict[str, list]:
    """{"chains": [["BuilderFlag", "TF32"], ...], "methods": [["IBuilderConfig", "clear_flag"], ...]}."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted((ROOT / "pixart_export").rglob("*.py"))}
    scopes = _module_scopes(trees)
    chains, methods = set(), set()
    for path, tree in trees.items():
        for f in (n for n in ast.walk(tree) if isinstance(n, FUNCTIONS)):
            chains |= {tuple(c) for n in ast.walk(f) if isinstance(n, ast.Attribute) and (c := _chain(n, scopes[f]))}
        methods |= _Types(tree, scopes, backend=BACKEND in path.parents).uses
    # keep only the longest chains (trt.Logger.WARNING covers trt.Logger)
    longest = {c for c in chains if not any(len(o) > len(c) and o[: len(c)] == c for o in chains)}
    return {"chains": sorted(list(c) for c in longest), "methods": sorted(list(m) for m in methods)}


def test_gathered_api_covers_what_the_code_calls():
    """A guard on the gatherer itself: the calls the compile and run paths cannot do without are found."""
    api = used_api()
    chains = {tuple(c) for c in api["chains"]}
    methods = {tuple(m) for m in api["methods"]}
    assert {
        ("BuilderFlag", "TF32"),
        ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
        ("Logger", "WARNING"),
    } <= chains
    assert {
        ("Builder", "create_network"),
        ("IBuilderConfig", "clear_flag"),
        ("IBuilderConfig", "add_optimization_profile"),
        ("IOptimizationProfile", "set_shape"),
        ("OnnxParser", "parse_from_file"),
        ("ITimingCache", "serialize"),
        ("Runtime", "deserialize_cuda_engine"),
        ("ICudaEngine", "get_tensor_profile_shape"),
        ("IExecutionContext", "set_input_shape"),
        ("IExecutionContext", "set_tensor_address"),
        ("IExecutionContext", "execute_async_v3"),
    } <= methods, sorted(methods)


def test_gatherer_follows_what_trt_is():
    """`trt` is the module where it is imported, probed, or passed the module; a registry row named `trt`
    (`ctx.target.trt`) and a parameter fed one are not."""
    code = """
def build(trt, path):
    return trt.BuilderFlag.TF32
def compile_it(trt=None):
    trt = trt if trt is not None else probe_tensorrt()
    build(trt, 1)
def plan(ctx, trt):
    return trt.memory_gib
def prepare(ctx):
    trt = ctx.target.trt
    plan(ctx, trt)
    return trt.text_encoder
def run():
    import tensorrt as trt
    return trt.Runtime(trt.Logger(trt.Logger.WARNING))
"""
    tree = ast.parse(code)
    scopes = _module_scopes({Path("x.py"): tree})
    got = {f.name: sorted(m) for f, m in scopes.items()}
    assert got == {"build": ["trt"], "compile_it": ["trt"], "plan": [], "prepare": [], "run": ["trt"]}


# -- the real bindings ---------------------------------------------------------------------------------
def _cache() -> Path:
    base = Path(os.environ.get("PIXART_EXPORT_CACHE", Path.home() / ".cache" / "pixart-export"))
    return base / "trt-api" / f"cp{sys.version_info.major}{sys.version_info.minor}"


OFFLINE = ("NewConnectionError", "Max retries", "Could not fetch URL", "Temporary failure in name resolution")
_offline: list[str] = []  # the first offline failure's reason: the other versions skip at once


def _download(dist: str, version: str, into: Path) -> Path:
    wheels = into / "wheels"
    found = sorted(wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    if _offline:
        pytest.skip(_offline[0])
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--timeout", "30"]
    proc = subprocess.run(
        cmd + ["--retries", "1", "-d", str(wheels), f"{dist}=={version}"], capture_output=True, text=True, timeout=300
    )
    found = sorted(wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    if proc.returncode or not found:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        last = said[-1] if said else f"pip exited {proc.returncode}"
        if any(s in proc.stderr for s in OFFLINE):
            _offline.append(f"PyPI is not reachable from here, so the TensorRT bindings cannot be checked: {last}")
            pytest.skip(_offline[0])
        raise AssertionError(f"pip download {dist}=={version} failed: {last}")
    return found[0]


def _stubbed(dist: str, version: str) -> Path:
    """The wheel unpacked, with stub libraries for what its module links; the folder for PYTHONPATH."""
    for tool in ("cc", "readelf"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (binutils and a C compiler build the stub libraries)")
    cache = _cache()
    folder = cache / f"{dist}-{version}"
    if (folder / ".ready").exists():
        return folder
    wheel = _download(dist, version, cache)
    shutil.rmtree(folder, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(folder)
    module = next(folder.glob("tensorrt*/tensorrt*.so"))
    needed = [
        line.split("[", 1)[1].rstrip("]")
        for line in subprocess.run(
            ["readelf", "-d", str(module)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if "(NEEDED)" in line and "libnv" in line
    ]
    symbols = set()
    for line in subprocess.run(
        ["readelf", "--dyn-syms", "-W", str(module)], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        cols = line.split()  # Num: Value Size Type Bind Vis Ndx Name
        if len(cols) >= 8 and cols[6] == "UND" and cols[4] == "GLOBAL" and cols[3] in ("FUNC", "OBJECT"):
            name = cols[7]
            if "@" not in name and not name.lstrip("_").startswith("Py"):
                symbols.add(name)
    assert needed and symbols, f"{module.name}: no TensorRT libraries or symbols found (needed {needed})"
    stubs = folder / "stubs"
    stubs.mkdir()
    source = stubs / "stub.c"
    source.write_text("".join(f"long {s}(void) {{ return 0; }}\n" for s in sorted(symbols)))
    for lib in needed:
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-o", str(stubs / lib), f"-Wl,-soname,{lib}", str(source)],
            check=True,
            capture_output=True,
        )
    (folder / ".ready").write_text(json.dumps({"needed": needed, "symbols": sorted(symbols)}))
    return folder


LOOKUP = """
import json, sys
import tensorrt_bindings as trt
api = json.loads(sys.argv[1])
missing = []
for chain in api["chains"]:
    obj = trt
    for i, name in enumerate(chain):
        if not hasattr(obj, name):
            missing.append("trt." + ".".join(chain[: i + 1]))
            break
        obj = getattr(obj, name)
for cls, attr in api["methods"] + [[c, ""] for c in api["classes"]]:
    if not hasattr(trt, cls):
        missing.append("trt." + cls)
    elif attr and not hasattr(getattr(trt, cls), attr):
        missing.append("trt." + cls + "." + attr)
print(json.dumps({"version": trt.__version__, "missing": sorted(set(missing))}))
"""


@pytest.mark.parametrize(
    "dist,version",
    [(f"tensorrt-cu{major}-bindings", v) for major, versions in VERSIONS.items() for v in versions],
)
def test_api_exists_in_real_bindings(dist, version):
    folder = _stubbed(dist, version)
    api = used_api()
    api["classes"] = sorted(set(RETURNS.values()))
    env = dict(os.environ, PYTHONPATH=str(folder), LD_LIBRARY_PATH=str(folder / "stubs"))
    proc = subprocess.run(
        [sys.executable, "-c", LOOKUP, json.dumps(api)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, f"{dist} {version} did not import over the stubs: {proc.stderr[-2000:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["version"].split(".")[:3] == version.split(".")[:3], got
    assert got["missing"] == [], f"TensorRT {version} ({dist}) lacks what pixart_export uses: {got['missing']}"


def test_lookup_reports_what_is_missing():
    """The lookup has teeth: an attribute that no TensorRT has is reported (on the first cached version)."""
    dist, version = "tensorrt-cu12-bindings", VERSIONS[12][0]
    folder = _stubbed(dist, version)
    api = {
        "chains": [["BuilderFlag", "TF32"], ["BuilderFlag", "NO_SUCH_FLAG"]],
        "methods": [["IExecutionContext", "no_such"]],
    }
    api["classes"] = ["NoSuchClass"]
    env = dict(os.environ, PYTHONPATH=str(folder), LD_LIBRARY_PATH=str(folder / "stubs"))
    proc = subprocess.run([sys.executable, "-c", LOOKUP, json.dumps(api)], capture_output=True, text=True, env=env)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["missing"] == [
        "trt.BuilderFlag.NO_SUCH_FLAG",
        "trt.IExecutionContext.no_such",
        "trt.NoSuchClass",
    ]
