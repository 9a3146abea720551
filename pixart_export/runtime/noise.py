"""The project's noise contract, restated without torch or `reference` (a test holds the two equal).

Same as `reference.schedules.draw_noise`: image i's noise is numpy PCG64
`default_rng(seeds[i]).standard_normal((K, C, h, w))` in float32, from its own seed alone, so batching,
chunking or serving never changes an image. Stacked on axis 1: [K, B, C, h, w]; [0] is x_T, [1:] the fresh
noise of LCM steps 2..K. One seed for a batch of B means seeds seed, seed+1, ..., seed+B-1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def image_seeds(seed: int | Sequence[int], num_images: int) -> list[int]:
    """The seed of every image: `seed` and the next `num_images - 1` integers, or a list of one per image."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(num_images)]
    seeds = [int(s) for s in seed]
    if len(seeds) != num_images:
        raise ValueError(f"{len(seeds)} seeds for {num_images} images: give one seed per image")
    return seeds


def draw_noise(
    seed: int | Sequence[int], num_images: int, latent_shape: tuple[int, int, int], steps: int
) -> np.ndarray:
    """[K, B, C, h, w] float32; image i from `default_rng(seeds[i])` alone (`image_seeds(seed, num_images)`)."""
    shape = (max(steps, 1), *latent_shape)
    per_image = [
        np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in image_seeds(seed, num_images)
    ]
    return np.stack(per_image, axis=1)
