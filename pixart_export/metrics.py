"""Error and image metrics, one definition each, used by every check (`verify.py`) and benchmark.

Images are float arrays in [0, 1] ([B,3,H,W] or [3,H,W]) compared after the runtime's own uint8
rounding (x255, round half to even), because uint8 pixels are what a user gets.
"""

from __future__ import annotations

import math

import numpy as np


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| in float64 (inf when `got` is not finite)."""
    got64, want64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.all(np.isfinite(got64)):
        return math.inf
    return float(np.linalg.norm(got64 - want64) / max(float(np.linalg.norm(want64)), 1e-30))


def max_abs(got: np.ndarray, want: np.ndarray) -> float:
    got64 = np.asarray(got, np.float64)
    if not np.all(np.isfinite(got64)):
        return math.inf
    return float(np.abs(got64 - np.asarray(want, np.float64)).max())


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images after uint8 rounding; inf when the uint8 images are identical (the
    manifest writes inf as null: "identical")."""
    mse = float(np.mean((to_uint8(a).astype(np.float64) - to_uint8(b)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [3,H,W] images after uint8 rounding (scikit-image, 7x7 window, data_range 255)."""
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            to_uint8(a).transpose(1, 2, 0), to_uint8(b).transpose(1, 2, 0), channel_axis=-1, data_range=255
        )
    )
