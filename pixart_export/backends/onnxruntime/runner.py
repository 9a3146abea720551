"""Runs the graph files of an ONNX Runtime engine folder: one `InferenceSession` per file, made on first use;
`release(graph_names)` drops the sessions of those graphs (`--low-memory`), made again on their next run.

Q/DQ (int8) graphs run with graph optimisations off, so QuantizeLinear/DequantizeLinear execute as
written: fake quantization, the numbers an int8 GEMM with int32 accumulation gives up to fp32
rounding (how the TensorRT preparation verifies its int8 graphs on a CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ...manifest import GraphRecord, Precision, unloadable


class OrtRunner:
    def __init__(self, folder: Path, providers: Sequence[str] | None = None, threads: int | None = None, files=None):
        self.folder = Path(folder)
        self.files = files  # manifest.HeldFiles: the checked files, held open since the check
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self._sessions: dict[str, object] = {}
        self._graph_of: dict[str, str] = {}  # session file -> its graph name, for `release`

    def session(self, record: GraphRecord):
        if record.file not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.threads:
                options.intra_op_num_threads = int(self.threads)
            if record.precision == Precision.INT8:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            # a single-file graph loads from the bytes of the checked file; one with external data (over
            # 2 GB) loads by path, as onnxruntime finds its data files beside the graph
            single = self.files is not None and tuple(record.files) in ((), (record.file,))
            try:
                model = self.files.read(record.file) if single else str(self.folder / record.file)
                self._sessions[record.file] = ort.InferenceSession(model, options, providers=self.providers)
            except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
                raise unloadable(record.file, "onnxruntime", exc) from None
            self._graph_of[record.file] = record.graph
        return self._sessions[record.file]

    def run(self, record: GraphRecord, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session(record).run([t.name for t in record.outputs], feeds)

    def release(self, graph_names) -> None:
        """Drop the sessions of the graphs named (manifest graph names, e.g. "text_encoder")."""
        names = set(graph_names)
        for file in [f for f in self._sessions if self._graph_of[f] in names]:
            del self._sessions[file]

    @property
    def loaded(self) -> set[str]:
        """The graphs that hold a session now."""
        return {self._graph_of[f] for f in self._sessions}
