"""pixart-export: export, quantise, compile and run PixArt-delta (LCM 4-step DiT + ControlNet).

Data flows one way: reference -> export -> quantise -> compile -> runtime. Heavy backends (torch,
onnxruntime, openvino, tensorrt) are imported lazily by the stage that needs them.
"""

__version__ = "0.1.0"
