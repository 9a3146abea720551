"""Backends: one folder each (`onnxruntime/`, `openvino/`, `tensorrt/`), the same parts in each
(`base.Backend`). `targets.py` holds one backend object per target row."""
