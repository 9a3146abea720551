"""The project's noise contract, restated without torch or `reference` (a test holds the two equal).

Same as `reference.schedules.draw_noise`: numpy PCG64 `default_rng(seed).standard_normal` in float32,
shape [K, B, C, h, w]; [0] is x_T, [1:] the fresh noise of LCM steps 2..K.
"""

from __future__ import annotations

import numpy as np


def draw_noise(seed: int, num_images: int, latent_shape: tuple[int, int, int], steps: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((max(steps, 1), num_images, *latent_shape), dtype=np.float32)
