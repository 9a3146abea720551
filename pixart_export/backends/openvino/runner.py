"""Runs the IR files of an OpenVINO engine folder (targets `ov-cpu`, `ov-cpu-int8`) on the CPU.

Each graph is compiled with the properties the build recorded for it (`GraphRecord.runtime["config"]`:
the inference precision, always explicit), plus the thread count asked for here. Precision at run
time is not in the IR but in this configuration: OpenVINO's CPU plugin runs in bf16 by itself on
CPUs with AVX-512 BF16 or AMX (`INFERENCE_PRECISION_HINT` defaults to bf16 there), which measured 10x
the error of PyTorch's bf16 autocast on PixArt; so the build chooses, records, and this applies.

The IR keeps the batch axis dynamic (one file serves every batch), but each graph is compiled for
the concrete input shapes of the call (`Model.reshape`, then compile; one compiled model per
(file, shapes), kept), so the CPU plugin can pick its kernels and memory plan for those shapes (on
tiny it fuses the elementwise chains it leaves unfused in the dynamic model). Measured on the XL
int8 step (512 px, 2-core AVX-512 VNNI CPU, idle): 2.19 s static vs 2.25 s dynamic; the VAE decoder
the same (12.4 s). A small gain, kept. `static_shapes=False` compiles the dynamic model once instead.

Weights are read from the engine folder's held files mapped, not copied (`HeldFiles.map`): the CPU
plugin copies every weight it compiles, and from a buffer the full-size T5's int8 weights were held twice
(8.8 GiB); from the mapping, whose pages are handed back while the compile copies them, once (4.55 GiB;
`pixart_export/mapped.py`). The file is checked unchanged since its hash after each compile and before
each run.

`release(graph_names)` drops every compiled model of those graphs (`--low-memory`: the pipeline releases
the text encoder before the denoiser compiles, and the denoiser before the decoder); a graph released
is compiled again on its next run.

Torch-free, and nothing from the build (prepare, quantise, export): the runtime imports this.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import numpy as np

from ...manifest import GraphRecord, unloadable

#: CPU ISA flags that decide int8/bf16 speed, as /proc/cpuinfo spells them.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
#: What `platform.machine()` says on the hosts OpenVINO's x86 CPU plugin serves.
X86 = ("x86_64", "amd64", "i686", "x86")


def cpu_info() -> dict:
    """CPU model, logical cores and the ISA extensions that matter here (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
    }


def is_x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in X86


def has_bf16(info: dict | None = None) -> bool:
    isa = (info or cpu_info())["isa"]
    return "avx512_bf16" in isa or "amx_bf16" in isa


def compile_config(precision: str = "f32", threads: int | None = None) -> dict:
    """The CPU plugin properties a graph is compiled with. `precision`: "f32" | "bf16"."""
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def runnable_precision(precision: str, info: dict | None = None) -> str:
    """bf16 only where the CPU has native bf16; elsewhere OpenVINO would emulate it slowly, so f32."""
    return precision if precision != "bf16" or has_bf16(info) else "f32"


def compile_graph(source, config: dict, core=None):
    """`ov.CompiledModel` on the CPU with `config`, from an IR (or ONNX) path or an `ov.Model`."""
    import openvino as ov

    core = core or ov.Core()
    return core.compile_model(source if isinstance(source, ov.Model) else str(source), "CPU", config)


def run_compiled(compiled, feeds: dict) -> list[np.ndarray]:
    """Outputs of a compiled model as numpy arrays, in the model's output order."""
    request = compiled.create_infer_request()
    request.infer(feeds)
    return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]


class OvRunner:
    """One compiled OpenVINO model per (graph file, input shapes), compiled on first use.

    `threads`: INFERENCE_NUM_THREADS (default: OpenVINO's choice). `inference_precision`: "f32" |
    "bf16" overrides the recorded inference precision of every graph, for measurements (the default
    runs the engine as built; bf16 falls back to f32 on CPUs without native bf16).
    `static_shapes=False`: compile the dynamic-batch IR once per file instead of once per shape set.
    """

    def __init__(
        self,
        folder: Path,
        threads: int | None = None,
        inference_precision: str | None = None,
        static_shapes: bool = True,
        files=None,
    ):
        if inference_precision not in (None, "f32", "bf16"):
            raise ValueError(f"inference_precision {inference_precision!r}: 'f32' or 'bf16'")
        self.folder = Path(folder)
        self.threads = threads
        self.inference_precision = inference_precision
        self.static_shapes = static_shapes
        self.files = files  # manifest.HeldFiles: the checked files, held open since the check
        self._weights: dict[str, tuple] = {}  # graph file -> (weights file, its mapping), while compiled from it
        self._core = None
        self._cpu = cpu_info()
        self._compiled: dict[tuple, object] = {}
        self._graph_of: dict[str, str] = {}  # graph file -> its graph name, for `release`

    def graph_config(self, record: GraphRecord) -> dict:
        """The compile properties for one graph: as built, with the thread count and override applied."""
        config = dict(record.runtime.get("config") or compile_config("f32"))
        precision = self.inference_precision or config.get("INFERENCE_PRECISION_HINT", "f32")
        config["INFERENCE_PRECISION_HINT"] = runnable_precision(precision, self._cpu)
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def compiled(self, record: GraphRecord, feeds: dict[str, np.ndarray] | None = None):
        """The compiled model for one graph: for the shapes of `feeds` when static, else the dynamic IR."""
        shapes = tuple((n, tuple(a.shape)) for n, a in sorted(feeds.items())) if self.static_shapes and feeds else None
        key = (record.file, shapes)
        if key not in self._compiled:
            import openvino as ov

            self._core = self._core or ov.Core()
            try:
                model = self._read(record)
                if shapes:
                    model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes})
                with self._paged_out(record.file):
                    self._compiled[key] = compile_graph(model, self.graph_config(record), self._core)
                del model
                self._check_unchanged(record.file)
            except RuntimeError as exc:  # OpenVINO reports unreadable IR / weights as RuntimeError
                raise unloadable(record.file, "OpenVINO", exc) from None
            self._graph_of[record.file] = record.graph
        return self._compiled[key]

    def _read(self, record: GraphRecord):
        """The IR of `record`: from the checked files where they are held (the weights mapped), else by path."""
        if self.files is None:
            return self._core.read_model(str(self.folder / record.file))
        import openvino as ov

        weights = [rel for rel in record.files if rel != record.file]
        if not weights or not self.files.manifest.files[weights[0]].bytes:
            return self._core.read_model(model=self.files.read(record.file), weights=b"")
        if record.file not in self._weights:  # one mapping per file, shared by its shape sets
            self._weights[record.file] = (weights[0], self.files.map(weights[0]))
        mapped = self._weights[record.file][1]
        return self._core.read_model(
            model=self.files.read(record.file), weights=ov.Tensor(mapped.array, shared_memory=True)
        )

    def _paged_out(self, file: str):
        """While `file`'s graph compiles, its mapped weights are handed back as the plugin copies them."""
        held = self._weights.get(file)
        return held[1].paged_out() if held else contextlib.nullcontext()

    def _check_unchanged(self, file: str) -> None:
        held = self._weights.get(file)
        if held:
            self.files.check_unchanged(held[0])

    def run(self, record: GraphRecord, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {t.name: feeds[t.name] for t in record.inputs}
        compiled = self.compiled(record, feeds)
        self._check_unchanged(record.file)
        return run_compiled(compiled, feeds)

    def release(self, graph_names) -> None:
        """Drop the compiled models of the graphs named (manifest graph names, e.g. "text_encoder"), every
        shape set of each."""
        names = set(graph_names)
        for key in [k for k in self._compiled if self._graph_of[k[0]] in names]:
            del self._compiled[key]
            self._weights.pop(key[0], None)

    @property
    def loaded(self) -> set[str]:
        """The graphs that hold a compiled model now."""
        return {self._graph_of[file] for file, _ in self._compiled}
