"""Run an engine folder on an edge host: numpy, the folder's backend, PIL and a tokenizer; no torch, no
diffusers, no `reference`, nothing from the export, quantise or compile stages (a test imports this
package in a process where importing torch raises).

    from pixart_export import runtime
    pipe = runtime.load("engines/ort-cpu-tiny")
    pipe("a red circle above a blue square", seed=0)[0].save("x.png")

`load` reads and validates the manifest (schema 2, target/backend agreement, every path inside the
folder), lets the folder's backend check this host (its version, the device), checks every file
against its sha256, and returns `Pipeline(folder, manifest, runner)` with the backend's runner.
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import EngineError, Precision, check_files
from .pipeline import Pipeline

__all__ = ["load", "Pipeline", "EngineError", "Precision"]


def load(
    engine_dir: str | Path,
    precision: str | Precision | None = None,
    verify_hashes: bool = True,
    memory_budget: int | None = None,
    low_memory: bool = False,
    decoder: str = "full",
    **runner_options,
) -> Pipeline:
    """Validate `engine_dir` and return its pipeline: `pipe(prompt, seed=0, num_images=1, control_image=None)`.

    `precision`: one of the folder's `choosable_precisions` (default: the one it was built to run in).
    `runner_options` go to the backend's runner (e.g. `threads=2`; onnxruntime `providers=[...]`;
    tensorrt `cuda_graph=True`). `memory_budget`: bytes of activations one call of the graphs may use;
    larger batches run in chunks (default `budget.DEFAULT_BUDGET_GIB`). `low_memory`: hold one graph at a
    time (each is released before the next loads; the same images, loaded again on every call).
    `decoder`: "full" (default) or "preview" (the folder's `vae_decoder_preview`, where it was built with one).
    """
    from ..targets import read_engine

    folder = Path(engine_dir)
    manifest, target = read_engine(folder)
    backend = target.backend
    backend.check_host(folder, manifest)
    # the checked files stay open; the runner loads them through these handles (what runs is what was hashed)
    held = check_files(folder, manifest, hashes=verify_hashes)
    runner = backend.runner(folder, manifest, files=held, **runner_options)
    return Pipeline(
        folder, manifest, runner, precision, memory_budget=memory_budget, low_memory=low_memory, decoder=decoder
    )
