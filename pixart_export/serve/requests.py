"""KServe v2 requests -> images, without Triton: what the served model does with one batch of requests.

Triton's core refuses what the model config already says is wrong (a missing `prompt`, a wrong dtype or
shape, an input the model does not have, a batch above `max_batch_size`) with HTTP 400 / gRPC
INVALID_ARGUMENT before the model sees it. Everything else about a request is checked here, request by
request: `parse` turns one request's tensors into `Item`s or raises `RequestError` with one line; a
bad request never fails the others of its batch. `generate` groups the good items that can share one
call of the graphs (same resolution, same conditioning scale with or without a control image) and runs
each group through the runtime with one seed per image: image i's noise comes from its own seed alone
(`runtime.noise`), so an item's image does not depend on what it was batched with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from ..runtime.pipeline import Pipeline, to_pil

MAX_SEED = 2**63 - 1
#: The largest control image a request may carry, a side (the runtime resizes it to the output size).
MAX_CONTROL_SIDE = 4096
#: `conditioning_scale` range, as the command line's `--conditioning-scale`.
MAX_CONDITIONING_SCALE = 10.0


class RequestError(ValueError):
    """A bad request: the one line the client gets back (HTTP 400 / gRPC INVALID_ARGUMENT)."""


@dataclass
class Item:
    """One image to draw: a row of a request."""

    prompt: str
    seed: int
    height: int
    width: int
    control: np.ndarray | None = None  # uint8 [H, W, 3]
    conditioning_scale: float = 1.0

    def group(self) -> tuple:
        return (
            self.height,
            self.width,
            self.control is not None,
            self.conditioning_scale if self.control is not None else None,
        )


def _rows(tensors: dict[str, np.ndarray], name: str, rows: int) -> np.ndarray | None:
    value = tensors.get(name)
    if value is None:
        return None
    if value.shape[0] != rows:
        raise RequestError(f"input '{name}' has {value.shape[0]} rows and 'prompt' has {rows}: give one per image")
    return value


def _prompt(raw) -> str:
    if not isinstance(raw, (bytes, np.bytes_)):
        raise RequestError("input 'prompt' must be BYTES (UTF-8 text)")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("input 'prompt' is not valid UTF-8 text") from None
    if not text.strip():
        raise RequestError("empty prompt: give the text to draw")
    return text


def parse(tensors: dict[str, np.ndarray], pipe: Pipeline) -> list[Item]:
    """One request's inputs ({name: array with the batch axis first}) -> its items, or RequestError."""
    if "prompt" not in tensors:
        raise RequestError("input 'prompt' is missing: give the text to draw (BYTES, shape [batch, 1])")
    if "seed" not in tensors:
        raise RequestError("input 'seed' is missing: give one INT64 seed per prompt (shape [batch, 1])")
    prompts = tensors["prompt"].reshape(len(tensors["prompt"]), -1)
    rows = len(prompts)
    if rows == 0:
        raise RequestError("no prompt given")
    seeds = _rows(tensors, "seed", rows).reshape(rows, -1)
    if prompts.shape[1] != 1 or seeds.shape[1] != 1:
        raise RequestError("'prompt' and 'seed' take one value per row (shape [batch, 1])")
    texts = [_prompt(p) for p in prompts[:, 0]]
    for p in texts:
        pipe.encode_check(p)
    values = [int(s) for s in seeds[:, 0]]
    for s in values:
        if not 0 <= s <= MAX_SEED:
            raise RequestError(f"seed {s} is out of range: give an integer 0..2^63-1")

    buckets = pipe.resolutions
    heights, widths = _rows(tensors, "height", rows), _rows(tensors, "width", rows)
    if (heights is None) != (widths is None):
        raise RequestError("give both 'height' and 'width', or neither (the engine's first bucket)")
    sizes = [buckets[0]] * rows
    if heights is not None:
        sizes = [(int(h), int(w)) for h, w in zip(heights.reshape(rows), widths.reshape(rows))]
        if len(set(sizes)) > 1:
            raise RequestError("the rows of one request share one resolution: send other sizes as other requests")
        for h, w in sizes:
            if (h, w) not in buckets:
                raise RequestError(
                    f"resolution {h}x{w} is not in this engine (built for {', '.join(f'{a}x{b}' for a, b in buckets)})"
                )

    controls = _rows(tensors, "control_image", rows)
    scales = _rows(tensors, "conditioning_scale", rows)
    if controls is not None:
        if not pipe.manifest.model.controlnet:  # the config declares no control_image then; kept for direct use
            raise RequestError("this engine has no ControlNet: leave out 'control_image'")
        if controls.ndim != 4 or controls.shape[3] != 3:
            raise RequestError(
                f"'control_image' must be UINT8 [batch, H, W, 3] (RGB); got shape {list(controls.shape)}"
            )
        if controls.dtype != np.uint8:
            raise RequestError(f"'control_image' must be UINT8; got {controls.dtype}")
        h, w = controls.shape[1:3]
        if not (1 <= h <= MAX_CONTROL_SIDE and 1 <= w <= MAX_CONTROL_SIDE):
            raise RequestError(
                f"control image is {h}x{w}; at most {MAX_CONTROL_SIDE} pixels a side (it is resized to the output)"
            )
    scale_values = [1.0] * rows
    if scales is not None:
        scale_values = [float(v) for v in scales.reshape(rows, -1)[:, 0]]
        for v in scale_values:
            if not (math.isfinite(v) and 0.0 <= v <= MAX_CONDITIONING_SCALE):
                raise RequestError(
                    f"conditioning_scale {v} is out of range: give a number 0..{MAX_CONDITIONING_SCALE:g}"
                )
    return [
        Item(
            texts[i],
            values[i],
            *sizes[i],
            None if controls is None else np.ascontiguousarray(controls[i]),
            scale_values[i],
        )
        for i in range(rows)
    ]


def generate(
    pipe: Pipeline,
    items: list[Item],
    on_error: Callable[[Exception], None] | None = None,
    one_at_a_time: bool = False,
) -> list:
    """uint8 [H, W, 3] images (or the exception of the group that failed) for `items`, in order.

    Items that can share a call of the graphs run together (the runtime chunks them to its memory budget),
    or each alone with `one_at_a_time` (for graphs whose pixels depend on the batch size, see
    `model.batch_invariant`); each image is what `run --seed S` writes for its prompt, seed and options."""
    out: list = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((i,) if one_at_a_time else item.group(), []).append(i)
    for index in groups.values():
        height, width, has_control, scale = items[index[0]].group()
        chosen = [items[i] for i in index]
        options = {}
        if has_control:
            options = {
                "control_image": [Image.fromarray(it.control, "RGB") for it in chosen],
                "conditioning_scale": scale,
            }
        try:
            images = pipe(
                [it.prompt for it in chosen],
                seeds=[it.seed for it in chosen],
                resolution=(height, width),
                output="np",
                **options,
            )
            for i, image in zip(index, to_pil(images)):
                out[i] = np.asarray(image, dtype=np.uint8)
        except Exception as error:  # one group failing leaves the others' images
            if on_error:
                on_error(error)
            for i in index:
                out[i] = error
    return out
