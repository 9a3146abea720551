"""Export stage: a loaded reference model -> fp32 ONNX graphs, tokenizer files and the model's identity.

`exporter.py` traces the graphs of ARCHITECTURE.md (`wrappers.py` says what each computes, over the
reference's own modules), `tokenizer.py` writes what the torch-free runtime tokenises with, and
`identity.py` hashes the model. Needs torch (the `export` extra); nothing in `runtime/` imports it.
"""
