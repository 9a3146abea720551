"""Packaging: the base install is the runtime; `pip install pixart-export[ort]` needs no torch.

Proved offline from the installed distributions' metadata (Requires-Dist, markers evaluated for the
extras asked for), walking every requirement transitively: what pip would resolve for `.[ort]`
(or the base) contains neither torch nor diffusers, transformers, accelerate or onnx. The other half,
that an engine folder runs where torch cannot be imported, is tests/test_runtime.py's."""

from __future__ import annotations

import importlib.metadata as md
import re

import pytest

HEAVY = {"torch", "diffusers", "transformers", "accelerate", "onnx", "nncf"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str, extras: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    from packaging.requirements import Requirement

    out = []
    for line in md.requires(dist) or []:
        req = Requirement(line)
        envs = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            out.append((_norm(req.name), tuple(sorted(req.extras))))
    return out


def closure(dist: str, extras: tuple[str, ...]) -> set[str]:
    seen: set[str] = set()
    todo = [(_norm(dist), extras)]
    while todo:
        name, ex = todo.pop()
        for req, req_extras in _requirements(name, ex):
            key = f"{req}[{','.join(req_extras)}]"
            if key in seen:
                continue
            seen.add(key)
            try:
                md.distribution(req)
            except md.PackageNotFoundError:
                continue  # not installed here (another platform's wheel): nothing to walk further
            todo.append((req, req_extras))
    return {k.split("[")[0] for k in seen}


@pytest.mark.parametrize("extras", [(), ("ort",)])
def test_runtime_install_needs_no_torch(extras):
    names = closure("pixart-export", extras)
    assert {"numpy", "pillow", "tokenizers"} <= names
    if extras:
        assert "onnxruntime" in names
    assert not names & HEAVY, sorted(names & HEAVY)


def test_export_extra_brings_the_exporter():
    names = closure("pixart-export", ("export",))
    assert {"torch", "diffusers", "transformers", "onnx", "onnxruntime"} <= names


def test_every_backend_has_its_extra():
    from pixart_export.targets import backends

    declared = set(md.metadata("pixart-export").get_all("Provides-Extra") or [])
    for backend in backends():
        assert backend.extra in declared, backend
    assert {"tensorrt-cu12", "tensorrt-cu13", "ort-gpu", "dev", "train"} <= declared
