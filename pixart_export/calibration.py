"""Calibration data, one set and one collector for every quantiser (NNCF for OpenVINO, the ONNX Q/DQ
and fp16 passes for TensorRT): the inputs every graph sees when the *reference* pipeline draws the
shipped prompts.

Realistic activations, not random tensors: a DiT's activations at t = 999 on pure noise differ from
those at the last LCM step, so the one-step transformer is calibrated on the latents of every step
of real LCM trajectories (`reference.sampling.lcm_sample` with a recording eps), and the unrolled
denoiser on the trajectories' starting noise (it runs the steps itself).

Prompt sets (data files, one prompt a line, '#' lines ignored):
- `data/calibration_prompts.txt`: what quantisers calibrate on;
- `data/quality_prompts.txt`: held out, never calibrated on: precision checks and the int8 quality
  gate measure on these.

Everything is deterministic: prompts in order, noise from `reference.schedules.draw_noise(seed + i)`
for batch i.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
CALIBRATION_PROMPTS = DATA / "calibration_prompts.txt"
HELD_OUT_PROMPTS = DATA / "quality_prompts.txt"


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompt file: one a line, blank and '#' lines skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def prompt_batches(prompts, batch: int) -> list[list[str]]:
    prompts = list(prompts)
    return [prompts[i : i + batch] for i in range(0, len(prompts), batch)]


def collect(
    model,
    prompts,
    resolution: tuple[int, int] | None = None,
    steps: int = 4,
    batch: int = 2,
    seed: int = 0,
    graphs: set[str] | None = None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """{graph name: [feeds]} as the reference pipeline produces them, for the graphs of ARCHITECTURE.md.

    `graphs` limits what is kept (default: text_encoder, transformer, denoiser_lcm{K}, vae_decoder).
    Multi-aspect (1024-MS) models get their `resolution`/`aspect_ratio` inputs as the reference builds
    them. The transformer's `control_residuals` are zeros (plain text-to-image: the contract says zeros give
    the plain result) so calibration sees the activations the plain path sees.
    """
    import torch

    from reference.pipeline import ReferencePipeline, size_conditions
    from reference.sampling import lcm_sample
    from reference.schedules import draw_noise, lcm_timesteps
    from reference.text import tokenize

    from .export.exporter import model_dims

    denoiser = f"denoiser_lcm{steps}"
    graphs = graphs or {"text_encoder", "transformer", denoiser, "vae_decoder"}
    height, width = resolution or (model.default_resolution, model.default_resolution)
    dims = model_dims(model, height, width, steps)
    pipe = ReferencePipeline(model)
    timesteps = lcm_timesteps(steps, model.lcm_spacing)
    latent_shape = (model.dit.config.in_channels, dims.h, dims.w)
    out: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}
    multi_aspect = bool(model.dit.config.resolved_additional_conditions)
    for i, chunk in enumerate(prompt_batches(prompts, batch)):
        ids, mask = tokenize(model.tokenizer, chunk)
        if "text_encoder" in graphs:
            out["text_encoder"].append({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            embeds, mask = pipe.encode(chunk)
            noise = torch.from_numpy(draw_noise(seed + i, len(chunk), latent_shape, steps))
            zeros = torch.zeros(dims.N, len(chunk), dims.value("T"), dims.D)
            res, ar = size_conditions(height, width, len(chunk))
            size = {"resolution": res.numpy(), "aspect_ratio": ar.numpy()} if multi_aspect else {}
            if denoiser in graphs:
                out[denoiser].append(
                    {
                        "latents": noise[0].numpy(),
                        "step_noise": noise[1:].numpy(),
                        "prompt_embeds": embeds.numpy(),
                        "prompt_attention_mask": mask.numpy(),
                        **size,
                    }
                )

            def eps(x, t):
                ts = torch.full((x.shape[0],), float(t))
                if "transformer" in graphs:
                    out["transformer"].append(
                        {
                            "latents": x.numpy().copy(),
                            "timestep": ts.numpy(),
                            "prompt_embeds": embeds.numpy(),
                            "prompt_attention_mask": mask.numpy(),
                            "control_residuals": zeros.numpy(),
                            **size,
                        }
                    )
                return model.dit.predict_noise(x, ts, embeds, mask, None, res, ar)

            denoised = lcm_sample(eps, noise[0], timesteps, list(noise[1:]), pipe.alphas_cumprod)
        if "vae_decoder" in graphs:
            out["vae_decoder"].append({"denoised": denoised.numpy()})
    return out
