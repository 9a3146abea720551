"""Calibration data: the inputs every graph sees when the *reference* pipeline draws a shipped prompt set.

Used twice by the TensorRT preparation (`build_trt.py`): the fp16 pass measures each graph's
activation ranges on it (which nodes would overflow fp16), and the int8 pass calibrates its Q/DQ
scales on it. Both need realistic activations, not random tensors: a DiT's activations at t = 999 on
pure noise differ from those at the last LCM step, so the transformer is calibrated on the latents of
every step of real LCM trajectories (`reference.sampling.lcm_sample` with a recording eps), and the
unrolled denoiser on the trajectories' starting noise (it runs the steps itself).

Everything is deterministic: prompts in order, noise from `reference.schedules.draw_noise(seed)`.
"""
from __future__ import annotations

import numpy as np

#: The shipped calibration prompt set: varied subjects, styles, lengths and languages (T5 sees
#: multilingual text in real use), a few long ones so the padding mask covers most of the 120 tokens.
PROMPTS: tuple[str, ...] = (
    "a small red circle above a blue square",
    "a photograph of an astronaut riding a horse on the moon, high detail",
    "a cozy wooden cabin in a snowy pine forest at dusk, warm light in the windows",
    "portrait of an old fisherman with a grey beard, dramatic lighting, 85mm",
    "a bowl of ramen with a soft-boiled egg, top view, food photography",
    "an isometric illustration of a futuristic city with flying cars and neon signs",
    "ein Haus am See, Öl auf Leinwand",
    "un chat noir assis sur un rebord de fenêtre, aquarelle",
    "macro shot of a dew drop on a green leaf",
    "a watercolor map of an imaginary archipelago with tiny lighthouses",
    "a steampunk owl made of brass gears",
    "sunset over the ocean, long exposure, pastel colours",
    "a minimalist logo of a mountain, flat vector, two colours",
    "a crowded night market in Taipei, lanterns, rain, reflections on the street, cinematic, "
    "shallow depth of field, shot on film, grain, moody teal and orange colour grading",
    "the text 'HELLO' written in chalk on a blackboard",
    "a golden retriever puppy playing in autumn leaves",
)

#: Held-out prompts: the precision checks measure on these, never on the calibration prompts.
HELDOUT: tuple[str, ...] = (
    "a red fox sitting in tall grass, morning fog",
    "a glass teapot on a marble table, studio light",
    "ein kleines Segelboot auf einem ruhigen See",
    "a pixel-art castle on a hill under a starry sky",
)


def prompt_batches(prompts, batch: int) -> list[list[str]]:
    prompts = list(prompts)
    return [prompts[i:i + batch] for i in range(0, len(prompts), batch)]


def collect(model, prompts=PROMPTS, resolution: tuple[int, int] | None = None, steps: int = 4, batch: int = 2,
            seed: int = 0, graphs: set[str] | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
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

    from .export_onnx import model_dims

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
                out[denoiser].append({"latents": noise[0].numpy(), "step_noise": noise[1:].numpy(),
                                      "prompt_embeds": embeds.numpy(), "prompt_attention_mask": mask.numpy(),
                                      **size})

            def eps(x, t):
                ts = torch.full((x.shape[0],), float(t))
                if "transformer" in graphs:
                    out["transformer"].append({"latents": x.numpy().copy(), "timestep": ts.numpy(),
                                               "prompt_embeds": embeds.numpy(),
                                               "prompt_attention_mask": mask.numpy(),
                                               "control_residuals": zeros.numpy(), **size})
                return model.dit.predict_noise(x, ts, embeds, mask, None, res, ar)

            denoised = lcm_sample(eps, noise[0], timesteps, list(noise[1:]), pipe.alphas_cumprod)
        if "vae_decoder" in graphs:
            out["vae_decoder"].append({"denoised": denoised.numpy()})
    return out
