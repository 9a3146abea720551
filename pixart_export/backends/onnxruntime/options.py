"""`build` options of the ONNX Runtime targets."""

from __future__ import annotations


def add_options(parser) -> None:
    g = parser.add_argument_group("onnxruntime (ort-cpu, ort-cuda)")
    g.add_argument(
        "--no-optimise",
        action="store_true",
        help="ort-cpu: skip onnxruntime's offline optimisation (kept only where measured faster)",
    )


def options_from_args(backend, target, args) -> dict:
    """JSON-able build options (they enter the build key)."""
    if backend.device_kind == "cuda":
        return {"fp16": True}
    return {"optimise": not bool(getattr(args, "no_optimise", False))}
