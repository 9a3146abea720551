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

ControlNet graphs (`controlnet`, `denoiser_lcm{K}_controlnet`) also need control images: they are
calibrated on scenes of the miniature's scene generator (`control_scenes`: the edge map of each scene
as the control image, its caption as the prompt; `reference.train.control.control_set`), scenes
`CONTROL_CALIBRATION_SEED`, never those of the control gate (`verify.CONTROL_GATE_SEED`) nor of the
ControlNet training run (`reference.train.controlnet`: data seed 0 by default, eval 900_001). Edges on
white are what the shipped ControlNet is trained on; for other models they are still images with
edges, so their activations are realistic for an edge ControlNet, if not from its own domain.

Everything is deterministic: prompts in order, prompt j's noise from `reference.schedules.draw_noise`
with seed + j (each image's noise from its own seed, whatever the batch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
CALIBRATION_PROMPTS = DATA / "calibration_prompts.txt"
HELD_OUT_PROMPTS = DATA / "quality_prompts.txt"
#: The scene data set the ControlNet graphs are calibrated on (module docstring).
CONTROL_CALIBRATION_SEED = 1_400_140


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompt file: one a line, blank and '#' lines skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def prompt_batches(prompts, batch: int) -> list[list[str]]:
    prompts = list(prompts)
    return [prompts[i : i + batch] for i in range(0, len(prompts), batch)]


def control_scenes(count: int, start: int = 0, size: int = 128, seed: int = CONTROL_CALIBRATION_SEED):
    """(control images as PIL, captions) of scenes start..start+count-1 of scene data set `seed`: the
    edge map of each scene (black on white) and the scene's caption."""
    from PIL import Image

    from reference.train.control import control_set

    controls, _, captions, _ = control_set(seed, count, "edge", size=size, start=start)
    return [Image.fromarray(c) for c in controls], list(captions)


def collect(
    model,
    prompts,
    resolution: tuple[int, int] | None = None,
    steps: int = 4,
    batch: int = 2,
    seed: int = 0,
    graphs: set[str] | None = None,
    controls: list | None = None,
    conditioning_scale: float = 1.0,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """{graph name: [feeds]} as the reference pipeline produces them, for the graphs of ARCHITECTURE.md.

    `graphs` limits what is kept (default: text_encoder, transformer, denoiser_lcm{K}, vae_decoder; with
    `controls`: controlnet, denoiser_lcm{K}_controlnet). Multi-aspect (1024-MS) models get their
    `resolution`/`aspect_ratio` inputs as the reference builds them. Without `controls` the transformer's
    `control_residuals` are zeros (plain text-to-image: the contract says zeros give the plain result) so
    calibration sees the activations the plain path sees. `controls`: one control image (PIL) per
    prompt; the trajectories are then the controlled ones (`ReferencePipeline` with `control_image`,
    `conditioning_scale`), and the `controlnet` graph's feeds are recorded at every step.
    """
    import torch

    from reference import vae as vae_io
    from reference.pipeline import ReferencePipeline, image_to_tensor, size_conditions
    from reference.sampling import lcm_sample
    from reference.schedules import draw_noise, lcm_timesteps
    from reference.text import tokenize

    from .export.exporter import model_dims

    denoiser = f"denoiser_lcm{steps}"
    if controls is not None:
        if model.controlnet is None:
            raise ValueError("control images need a model with a ControlNet")
        if len(controls) != len(list(prompts)):
            raise ValueError(f"{len(controls)} control images for {len(list(prompts))} prompts")
        denoiser += "_controlnet"
        graphs = graphs or {"controlnet", denoiser}
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
            noise = torch.from_numpy(draw_noise(seed + i * batch, len(chunk), latent_shape, steps))
            zeros = torch.zeros(dims.N, len(chunk), dims.value("T"), dims.D)
            res, ar = size_conditions(height, width, len(chunk))
            size = {"resolution": res.numpy(), "aspect_ratio": ar.numpy()} if multi_aspect else {}
            control: dict = {}
            if controls is not None:
                images = controls[i * batch : i * batch + len(chunk)]
                latents = torch.cat([vae_io.encode(model.vae, image_to_tensor(c, height, width)) for c in images])
                scale = np.array([conditioning_scale], np.float32)
                control = {"control_latents": latents.numpy(), "conditioning_scale": scale}
            if denoiser in graphs:
                out[denoiser].append(
                    {
                        "latents": noise[0].numpy(),
                        "step_noise": noise[1:].numpy(),
                        "prompt_embeds": embeds.numpy(),
                        "prompt_attention_mask": mask.numpy(),
                        **control,
                        **size,
                    }
                )

            def eps(x, t):
                ts = torch.full((x.shape[0],), float(t))
                text = {"prompt_embeds": embeds.numpy(), "prompt_attention_mask": mask.numpy()}
                residuals = None
                if control:
                    if "controlnet" in graphs:
                        out["controlnet"].append(
                            {"latents": x.numpy().copy(), "timestep": ts.numpy(), **text, **control, **size}
                        )
                    residuals = model.controlnet(
                        model.dit,
                        x,
                        ts,
                        embeds,
                        mask,
                        torch.from_numpy(control["control_latents"]),
                        conditioning_scale,
                        res,
                        ar,
                    )
                if "transformer" in graphs:
                    out["transformer"].append(
                        {
                            "latents": x.numpy().copy(),
                            "timestep": ts.numpy(),
                            **text,
                            "control_residuals": (zeros if residuals is None else residuals).numpy(),
                            **size,
                        }
                    )
                return model.dit.predict_noise(x, ts, embeds, mask, residuals, res, ar)

            denoised = lcm_sample(eps, noise[0], timesteps, list(noise[1:]), pipe.alphas_cumprod)
        if "vae_decoder" in graphs:
            out["vae_decoder"].append({"denoised": denoised.numpy()})
    return out
