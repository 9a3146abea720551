"""Run an engine folder on an edge host: numpy, onnxruntime, PIL and a tokenizer; no torch, no diffusers,
no `reference` (a test imports this package in a process where importing torch raises).

    from pixart_export import runtime
    pipe = runtime.load("engines/ort-cpu-tiny")
    pipe("a red circle above a blue square", seed=0)[0].save("x.png")

`load` checks the folder against its manifest first (schema, backend and version, sha256 of every
file) and refuses with a message naming the mismatch and what to do.
"""
from __future__ import annotations

from pathlib import Path

from ..manifest import EngineError, verify_engine

BACKEND = "onnxruntime"

__all__ = ["load", "EngineError"]


def load(engine_dir: str | Path, providers: list[str] | None = None, threads: int | None = None,
         verify_hashes: bool = True):
    """Validate `engine_dir` and return a pipeline: `pipe(prompt, seed=0, num_images=1, control_image=None)`."""
    # -- hook (issue #7): OpenVINO engine folders go to their own loader --------------------------
    from ..manifest import read_manifest

    if (read_manifest(Path(engine_dir)).get("backend") or {}).get("name") == "tensorrt":  # hook (issue #6)
        from .trt import load_tensorrt

        return load_tensorrt(engine_dir, verify_hashes=verify_hashes)

    if (read_manifest(Path(engine_dir)).get("backend") or {}).get("name") == "openvino":
        from .ov_pipeline import load_openvino

        return load_openvino(engine_dir, threads=threads, verify_hashes=verify_hashes)
    # ---------------------------------------------------------------------------------------------
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError("onnxruntime is not installed: pip install onnxruntime") from exc
    manifest = verify_engine(Path(engine_dir), BACKEND, onnxruntime.__version__, hashes=verify_hashes)
    from .pipeline import OrtPipeline

    return OrtPipeline(Path(engine_dir), manifest, providers=providers, threads=threads)
