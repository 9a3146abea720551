"""Prompt -> images from an engine folder: `Pipeline(folder, manifest, runner)`, the same for every backend.

tokenizer -> `text_encoder` -> the unrolled `denoiser_lcm{K}` (or its ControlNet form, after
`vae_encoder` on the control image) -> `vae_decoder`. Numerically the reference pipeline: same
tokenisation, same noise (`noise.draw_noise`), same image pre- and post-processing (PIL bicubic
resize, /255; x255, round half to even, uint8). Graph names, files and shapes come from the manifest,
never spelled here; *how* one graph file runs is the runner's business (a backend's `GraphRunner`:
an onnxruntime session, an OpenVINO compiled model, a TensorRT engine).

`low_memory=True` holds one graph at a time: the runner loads each graph on its first run anyway, and
the pipeline releases (`runner.release`) the text encoder before the denoiser loads, the denoiser
before the VAE decoder loads, the decoder (and the control image's encoder) after use. The same images;
each call loads every graph again (the latency cost).

`precision` picks among the precisions the folder carries (`Manifest.choosable_precisions`, e.g. a
TensorRT bundle's fp16 and int8 engines); each graph falls back as `manifest.FALLBACK` says.

`decoder="preview"` decodes with the folder's `vae_decoder_preview` graph (built with `--preview-decoder`:
a small AutoencoderTiny reading the same latents) instead of `vae_decoder`; the full decoder is the default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import UserError
from ..manifest import EngineError, Manifest, Precision
from .budget import chunk_size
from .noise import draw_noise
from .tokenizer import load_tokenizer


def image_to_array(image: Image.Image, height: int, width: int) -> np.ndarray:
    """PIL -> [1,3,H,W] float32 in [0, 1], resized as the reference does (bicubic)."""
    image = image.convert("RGB").resize((width, height), Image.BICUBIC)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def to_pil(images: np.ndarray) -> list[Image.Image]:
    arr = (images.transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


class Pipeline:
    """One engine folder, one runner. Call it with a prompt (or a list) to get PIL images."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        runner,
        precision: str | Precision | None = None,
        memory_budget: int | None = None,
        low_memory: bool = False,
        decoder: str = "full",
    ):
        self.folder = Path(folder)
        self.decoder_graph = self._check_decoder(manifest, decoder)
        self.low_memory = low_memory
        self.memory_budget = memory_budget
        self.manifest = manifest
        self.runner = runner
        self.precision = self._check_precision(precision)
        self.tokenizer = load_tokenizer(self.folder, manifest.tokenizer)
        self.steps = manifest.steps
        self.resolutions = [tuple(r) for r in manifest.resolutions]

    @property
    def max_batch(self) -> int:
        """Images per call of the graphs at the first bucket (see `budget.chunk_size`)."""
        return self._chunk(*self.resolutions[0])

    def _chunk(self, height: int, width: int) -> int:
        return chunk_size(self.manifest, height, width, self.memory_budget, getattr(self.runner, "max_batch", None))

    @staticmethod
    def _check_decoder(manifest: Manifest, decoder: str) -> str:
        """The graph that decodes for `decoder` ("full" | "preview"); UserError where the folder has none."""
        if decoder == "full":
            return "vae_decoder"
        if decoder != "preview":
            raise UserError(f"decoder {decoder!r}: choose 'full' or 'preview'")
        if not any(r.graph == "vae_decoder_preview" for r in manifest.runnable):
            raise UserError(
                "this engine folder has no preview decoder (vae_decoder_preview); rebuild it with "
                "--preview-decoder DIR (a diffusers AutoencoderTiny folder for this VAE)"
            )
        return "vae_decoder_preview"

    def _check_precision(self, precision) -> Precision:
        if precision is None:
            return self.manifest.default_precision
        try:
            precision = Precision(precision)
        except ValueError:
            raise UserError(
                f"precision {precision!r} is unknown; this folder carries "
                f"{', '.join(map(str, self.manifest.choosable_precisions))}"
            ) from None
        if precision not in self.manifest.choosable_precisions:
            raise UserError(
                f"this {self.manifest.target} folder carries no {precision} choice; choose one of "
                f"{', '.join(map(str, self.manifest.choosable_precisions))}"
            )
        return precision

    def run(
        self, graph: str, feeds: dict[str, np.ndarray], height: int | None = None, width: int | None = None
    ) -> list[np.ndarray]:
        """One graph of the folder on `feeds` (extra feeds are dropped: graphs declare their inputs)."""
        rec = self.manifest.record(graph, height, width, self.precision)
        return self.runner.run(rec, {t.name: feeds[t.name] for t in rec.inputs})

    def _release(self, graph: str) -> None:
        """In low-memory mode, drop what the runner holds for `graph` (it loads again on its next run)."""
        if self.low_memory:
            self.runner.release([graph])

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        for p in prompts:
            self.encode_check(p)
        ids, mask = self.tokenizer(prompts)
        return self.run("text_encoder", {"input_ids": ids, "attention_mask": mask})[0], mask

    def bucket(self, resolution=None) -> tuple[int, int]:
        """(height, width) of `resolution` (None: the first bucket); UserError for one the engine lacks."""
        if resolution is None:
            return self.resolutions[0]
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(int(v) for v in resolution)
        if (h, w) not in self.resolutions:
            raise UserError(
                f"resolution {h}x{w} is not in this engine (built for "
                f"{', '.join(f'{a}x{b}' for a, b in self.resolutions)}); rebuild with --resolution"
            )
        return h, w

    def __call__(self, prompt: str | list[str], seed: int = 0, num_images: int = 1, output: str = "pil", **options):
        """Images for `prompt` (a list gives one image each; a string gives `num_images` images).

        `options`: `seeds` (one per image), `control_image` (PIL, or one per image), `conditioning_scale`
        (default 1), `resolution` (a bucket), as
        `chunks`, which makes them chunk by chunk; `output`: "pil", "np" ([B,3,H,W] in [0,1]) or "latent".
        """
        parts = list(self.chunks(prompt, seed, num_images, output=output, **options))
        if output == "pil":
            return [image for part in parts for image in part]
        return np.concatenate(parts)

    def chunks(
        self,
        prompt: str | list[str],
        seed: int = 0,
        num_images: int = 1,
        control_image: Image.Image | None = None,
        conditioning_scale: float = 1.0,
        resolution: int | Sequence[int] | None = None,
        output: str = "pil",
        seeds: Sequence[int] | None = None,
    ) -> Iterator:
        """The same images as `__call__`, one chunk (at most `max_batch` images) at a time.

        `seeds`: one per image (a string prompt then gives `len(seeds)` images); default seed, seed+1, ...
        Image i's noise comes from its own seed alone (`noise.draw_noise`), so chunking or batching changes
        no pixel. `control_image`: one for every image, or a list of one per image."""
        count = num_images if seeds is None else len(seeds)
        prompts = [prompt] * count if isinstance(prompt, str) else list(prompt)
        if seeds is not None and len(seeds) != len(prompts):
            raise UserError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per image")
        if not prompts:
            raise UserError("no prompt given")
        if not math.isfinite(conditioning_scale):
            raise UserError(f"conditioning scale {conditioning_scale}: give a finite number")
        height, width = self.bucket(resolution)
        for p in prompts:  # every prompt checked before the first chunk runs
            self.encode_check(p)
        f = self.manifest.vae_scale_factor
        latent_shape = (self.manifest.latent_channels, height // f, width // f)
        noise = draw_noise(seed if seeds is None else seeds, len(prompts), latent_shape, self.steps)
        control = None
        if control_image is not None:
            if not self.manifest.model.controlnet:
                raise UserError("this engine has no ControlNet; rebuild with --controlnet to use a control image")
            images = list(control_image) if isinstance(control_image, (list, tuple)) else [control_image]
            if len(images) not in (1, len(prompts)):
                raise UserError(f"{len(images)} control images for {len(prompts)} images: give one, or one each")
            control = np.concatenate(  # one image at a time: each as `run` encodes it alone
                [self.run("vae_encoder", {"image": image_to_array(c, height, width)}, height, width)[0] for c in images]
            )
            self._release("vae_encoder")
        size = self._chunk(height, width)
        for start in range(0, len(prompts), size):
            stop = min(start + size, len(prompts))
            part = control if control is None or len(control) == 1 else control[start:stop]
            yield self._generate(
                prompts[start:stop], noise[:, start:stop], part, conditioning_scale, height, width, output
            )

    def encode_check(self, prompt) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("empty prompt: give the text to draw")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError("the prompt is not valid UTF-8 text") from None

    def _generate(self, prompts, noise, control, conditioning_scale, height, width, output):
        embeds, mask = self.encode(prompts)
        self._release("text_encoder")
        n = len(prompts)
        feeds = {
            "latents": np.ascontiguousarray(noise[0]),
            "step_noise": np.ascontiguousarray(noise[1:]),
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            # multi-aspect models' conditions; `run` passes only the inputs a graph declares
            "resolution": np.tile(np.array([[height, width]], np.float32), (n, 1)),
            "aspect_ratio": np.full((n, 1), height / width, np.float32),
        }
        graph = f"denoiser_lcm{self.steps}"
        if control is not None:
            feeds["control_latents"] = np.ascontiguousarray(np.broadcast_to(control, (n, *control.shape[1:])))
            feeds["conditioning_scale"] = np.array([conditioning_scale], np.float32)
            graph += "_controlnet"
        denoised = self.run(graph, feeds, height, width)[0]
        self._release(graph)
        if output == "latent":
            return denoised
        images = self.run(self.decoder_graph, {"denoised": denoised}, height, width)[0]
        self._release(self.decoder_graph)
        return images if output == "np" else to_pil(images)


__all__ = ["Pipeline", "EngineError", "image_to_array", "to_pil"]
