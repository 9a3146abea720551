"""`build` options of the ONNX Runtime targets."""

from __future__ import annotations

from ..base import flag


def add_options(parser) -> None:
    hint = "ort-cpu: skip onnxruntime's offline optimisation (kept only where measured faster)"
    flag(parser, "onnxruntime (ort-cpu, ort-cuda)", "--no-optimise", hint)


def options_from_args(backend, target, args) -> dict:
    """JSON-able build options (they enter the build key)."""
    if backend.device_kind == "cuda":
        return {"fp16": True}
    return {"optimise": not bool(getattr(args, "no_optimise", False))}
