"""PyTorch reference of PixArt-delta: the ground truth of pixart-export. Imports nothing from it."""

from .config import ControlNetConfig, DiTConfig
from .controlnet import ControlledDiT, PixArtControlNet
from .dit import PixArtDiT
from .errors import ModelError, WeightsError
from .loading import PixArtModel, load_model

__all__ = [
    "ControlNetConfig",
    "ControlledDiT",
    "DiTConfig",
    "ModelError",
    "PixArtControlNet",
    "PixArtDiT",
    "PixArtModel",
    "WeightsError",
    "load_model",
]
