"""ControlNet conditions of the miniature's scenes, and a control metric that needs no trained model.

Conditions are computed from the rendered scene, as PixArt-delta computes HED edges from a photo:

    edge     black outlines on white: where the scene's colour changes (a gradient threshold), 3 px wide
    mask     the filled silhouette of every shape, black on white

They are RGB images like any control image (the ControlNet reads them through the VAE), so the
runtime's `--control-image` accepts them unchanged. Black on white, not HED's white on black: the
miniature's VAE has only seen white backgrounds; it reconstructs black-on-white edges to a mean of
14 levels and white-on-black ones to 129 (an orange field; 32 scenes), so only the former keep their
geometry in the latents the ControlNet reads.

Control IoU: the generated image is segmented against the white background (any channel darker than
`FOREGROUND_LEVEL`; the scenes' colours are all at least 30 levels from white in some channel, the
background is exactly white and the VAE's reconstruction of it stays within a few levels) and
compared with the foreground of the scene the control was computed from. It reads pixels only, so it
measures every ControlNet (trained, untrained, int8, on the teacher or the student) with one ruler.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import data

#: A pixel is foreground when some channel is below this level (white background: 255).
FOREGROUND_LEVEL = 200
#: Edge pixels: colour change across a pixel (max over channels of the central difference), in levels.
EDGE_THRESHOLD = 40
CONDITIONS = ("edge", "mask")


def foreground(images: np.ndarray) -> np.ndarray:
    """bool [..., H, W]: pixels that are not background, for uint8 images [..., H, W, 3]."""
    return images.min(axis=-1) < FOREGROUND_LEVEL


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of bool [H, W] (edges one pixel wider on each side)."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def edges(image: np.ndarray) -> np.ndarray:
    """bool [H, W]: where the colour of uint8 `image` [H, W, 3] changes by more than `EDGE_THRESHOLD`
    levels between a pixel's neighbours (horizontal or vertical), thinned to the change itself."""
    x = image.astype(np.int16)
    gx = np.zeros(x.shape[:2], dtype=np.int16)
    gy = np.zeros(x.shape[:2], dtype=np.int16)
    gx[:, 1:-1] = np.abs(x[:, 2:] - x[:, :-2]).max(axis=-1)
    gy[1:-1] = np.abs(x[2:] - x[:-2]).max(axis=-1)
    return np.maximum(gx, gy) > EDGE_THRESHOLD


def condition(image: np.ndarray, kind: str = "edge") -> np.ndarray:
    """The control image (uint8 [H, W, 3], black on white) of a rendered scene."""
    if kind == "edge":
        mask = _dilate(edges(image))
    elif kind == "mask":
        mask = foreground(image)
    else:
        raise ValueError(f"unknown condition {kind!r}; choose one of {', '.join(CONDITIONS)}")
    return np.repeat(np.where(mask, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def control_set(seed: int, count: int, kind: str = "edge", size: int = 128, start: int = 0, heldout: bool = False):
    """(control images uint8 [N,H,W,3], scenes uint8 [N,H,W,3], captions, labels int64 [N,5]) for
    scenes start..start+count-1 of data set `seed` (the same scenes `data.dataset` renders)."""
    scenes, captions, labels = data.dataset(seed, count, size, start=start, heldout=heldout)
    controls = np.stack([condition(s, kind) for s in scenes])
    return controls, scenes, captions, labels


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union per image of bool masks [N, H, W] (1.0 where both are empty)."""
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def control_iou(generated: np.ndarray, scenes: np.ndarray) -> np.ndarray:
    """float [N]: IoU of the generated images' foreground with their scenes' (uint8 [N, H, W, 3])."""
    return mask_iou(foreground(generated), foreground(scenes))


def to_uint8(images) -> np.ndarray:
    """[N,3,H,W] float in [0,1] (torch or numpy) -> uint8 [N,H,W,3], rounded as `pipeline.to_pil`."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return (arr.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def to_pil(control: np.ndarray) -> Image.Image:
    return Image.fromarray(control)
