"""Runs the graph files of an ONNX Runtime engine folder: one `InferenceSession` per file, made on first use.

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
    def __init__(self, folder: Path, providers: Sequence[str] | None = None, threads: int | None = None):
        self.folder = Path(folder)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self._sessions: dict[str, object] = {}

    def session(self, record: GraphRecord):
        if record.file not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.threads:
                options.intra_op_num_threads = int(self.threads)
            if record.precision == Precision.INT8:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                self._sessions[record.file] = ort.InferenceSession(
                    str(self.folder / record.file), options, providers=self.providers
                )
            except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
                raise unloadable(record.file, "onnxruntime", exc) from None
        return self._sessions[record.file]

    def run(self, record: GraphRecord, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session(record).run([t.name for t in record.outputs], feeds)
