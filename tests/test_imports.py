"""The shape of the code, checked: no import cycle in pixart_export, the layers of ARCHITECTURE.md
(reference stands alone; the runtime loads no export/quantise/compile/verify code, no torch, no
onnx), and no backend named in an `if` outside its own folder."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "pixart_export"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}


MODULES = {**_modules(PKG), **_modules(ROOT / "reference")}


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement names (relative imports resolved)."""
    out = []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in ("pixart_export", "reference")]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if node.level:
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] not in ("pixart_export", "reference"):
        return []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        edges = set()
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(m for m in _resolve(module, path, node) if m in MODULES and m != module)
        graph[module] = edges
    return graph


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in graph.get(m, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_no_import_cycle_in_pixart_export():
    """Every import counts, the lazy ones inside functions too (they run when the function does)."""
    graph = import_graph(top_level_only=False)
    cycles = []
    for module in graph:
        if module.startswith("pixart_export") and module in _closure(graph, module):
            cycles.append(module)
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_reference_imports_nothing_from_pixart_export():
    graph = import_graph(top_level_only=False)
    bad = {
        m: sorted(e for e in edges if e.startswith("pixart_export"))
        for m, edges in graph.items()
        if m.startswith("reference")
    }
    assert not any(bad.values()), bad


def test_runtime_layer():
    """What importing the runtime and a backend's runner loads: no stage code (lazy imports aside, which
    tests/test_runtime.py checks by running the runtime where torch is blocked)."""
    graph = import_graph(top_level_only=True)
    forbidden = (
        "pixart_export.export",
        "pixart_export.build",
        "pixart_export.calibration",
        "pixart_export.verify",
        "pixart_export.engine_folder",
        "reference",
    )
    starts = [m for m in graph if m.startswith("pixart_export.runtime") or m.endswith(".runner")]
    assert len(starts) >= 6
    for start in starts:
        loaded = _closure(graph, start) | {start}
        bad = sorted(
            m
            for m in loaded
            if m.startswith(forbidden)
            or (
                m.startswith("pixart_export.backends.")
                and m.rsplit(".", 1)[-1] not in ("runner", "base")
                and m.count(".") > 2
            )
        )
        assert not bad, f"{start} loads {bad}"


def _third_party_top_level(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_heavy_libraries_are_imported_lazily():
    """`pixart-export --help` and `targets` work on a host with no backend: no module imports torch,
    onnx, onnxruntime, openvino, nncf or tensorrt at import time except the stage modules that are
    themselves only imported lazily."""
    heavy = {"torch", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "diffusers", "transformers", "cuda"}
    graph = import_graph(top_level_only=True)
    eager = _closure(graph, "pixart_export.cli") | {"pixart_export.cli"}
    bad = {m: sorted(_third_party_top_level(MODULES[m]) & heavy) for m in eager}
    assert not any(bad.values()), {m: v for m, v in bad.items() if v}


BACKEND_NAMES = {"onnxruntime", "openvino", "tensorrt"}


def test_no_backend_named_in_an_if_outside_its_folder():
    offenders = []
    for module, path in MODULES.items():
        if not module.startswith("pixart_export") or module.startswith("pixart_export.backends."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.If, ast.IfExp, ast.While)):
                for sub in ast.walk(node.test):
                    if (
                        isinstance(sub, ast.Constant)
                        and isinstance(sub.value, str)
                        and (sub.value in BACKEND_NAMES or sub.value.startswith(("trt-", "ov-", "ort-")))
                    ):
                        offenders.append(f"{module}:{node.lineno} {sub.value!r}")
    assert not offenders, offenders
