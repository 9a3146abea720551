"""Load PixArt models from the layouts users have, from local files only; save ours as safetensors.

Layouts:
- diffusers: `transformer/` (config.json + diffusion_pytorch_model*.safetensors), `text_encoder/`,
  `tokenizer/`, `vae/`, `scheduler/`; optional `controlnet/` (ours: config.json + safetensors) and
  `transformer/pixart_null_caption.safetensors` (the learned null caption diffusers drops).
- official: a PixArt-alpha `.pth` (e.g. `PixArt-XL-2-512x512.pth`), converted in memory, with the
  T5 and VAE folders the official repository downloads beside it (`t5_ckpts/t5-v1_1-xxl/`,
  `sd-vae-ft-ema/`), as in its `output/pretrained_models/`.
- `tiny`: the built-in diffusers-layout folder shipped in `reference/assets/tiny` (the 4-step LCD
  student); `tiny-teacher`: the same folder with the teacher DiT it was distilled from
  (`reference/assets/tiny/teacher/transformer`), for guided DDIM (`model_for_sampler`).

Every weights load is strict: one `WeightsError` names all missing, unexpected and mis-shaped keys.
Nothing here touches the network (`local_files_only` everywhere).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import official
from .config import ControlNetConfig, DiTConfig
from .controlnet import PixArtControlNet
from .dit import PixArtDiT
from .errors import ModelError, WeightsError
from .schedules import BETA_END, BETA_START, LCM_SPACINGS, NUM_TRAIN_TIMESTEPS

TINY_DIR = Path(__file__).resolve().parent / "assets" / "tiny"
TINY_TEACHER = "tiny-teacher"
TINY_TEACHER_DIT = TINY_DIR / "teacher" / "transformer"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
NULL_CAPTION_NAME = "pixart_null_caption.safetensors"
OFFICIAL_T5_DIRS = ("t5_ckpts/t5-v1_1-xxl", "t5-v1_1-xxl")
OFFICIAL_VAE_DIRS = ("sd-vae-ft-ema", "sd-vae-ft-mse")


@dataclass
class PixArtModel:
    """Everything a text-to-image run needs, in fp32 eval mode."""

    dit: PixArtDiT
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    source: Path
    layout: str
    lcm_spacing: str
    controlnet: PixArtControlNet | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        return self.dit.config.sample_size * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


# -- helpers ----------------------------------------------------------------------------------------
def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """`load_state_dict(strict=True)` with one error naming every missing/unexpected/mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or misshaped:
        raise WeightsError.from_mismatch(where, missing, unexpected, misshaped)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_weights(folder: Path, stem: str = "diffusion_pytorch_model") -> dict[str, torch.Tensor]:
    """A diffusers weights folder: single or sharded safetensors, else a `.bin` read weights-only."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.exists():
        return _read_safetensors(single)
    if index.exists():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors(folder / shard))
        return state
    legacy = folder / f"{stem}.bin"
    if legacy.exists():
        return official.read_checkpoint(legacy)
    raise ModelError(f"{folder}: no {stem}.safetensors (or sharded index, or .bin) found")


# -- DiT and ControlNet ----------------------------------------------------------------------------
def load_dit(folder: Path) -> PixArtDiT:
    """A diffusers `transformer/` folder (plus our optional null-caption file)."""
    config = DiTConfig.from_dict(_read_json(folder / "config.json"))
    state = read_weights(folder)
    null_path = folder / NULL_CAPTION_NAME
    null = _read_safetensors(null_path)["null_caption"] if null_path.exists() else None
    dit = PixArtDiT(config, text_len=None if null is None else null.shape[0])
    if null is not None:
        state = {**state, "null_caption": null}
    load_strict(dit, state, str(folder))
    return dit.eval()


def save_dit(dit: PixArtDiT, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dit.config.to_diffusers_dict(), indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in dit.diffusers_state_dict().items()}, str(folder / WEIGHTS_NAME))
    if dit.null_caption is not None:
        save_file({"null_caption": dit.null_caption.detach().contiguous()}, str(folder / NULL_CAPTION_NAME))


def load_official_dit(path: Path, sample_size: int | None = None) -> PixArtDiT:
    """An official PixArt `.pth`, converted in memory; the config is read off the tensor shapes."""
    raw = official.read_checkpoint(path)
    config = official.infer_dit_config(raw, sample_size=sample_size)
    state, unknown = official.dit_from_official(raw)
    null = state.get("null_caption")
    dit = PixArtDiT(config, text_len=None if null is None else null.shape[0])
    if unknown:
        raise WeightsError.from_mismatch(str(path), [], unknown, [])
    load_strict(dit, state, str(path))
    return dit.eval()


def load_controlnet(path: Path, base: PixArtDiT) -> PixArtControlNet:
    """Our `controlnet/` folder (config.json + safetensors) or an official ControlNet `.pth`."""
    if path.is_dir():
        config = ControlNetConfig.from_dict(_read_json(path / "config.json"))
        state = read_weights(path)
    elif path.is_file():
        state, unknown = official.controlnet_from_official(official.read_checkpoint(path))
        if unknown:
            raise WeightsError.from_mismatch(str(path), [], unknown, [])
        copies = {int(k.split(".")[1]) for k in state}
        if not copies:
            raise WeightsError(f"{path}: no ControlNet weights (controlnet.*) in this checkpoint")
        config = ControlNetConfig(num_copies=max(copies) + 1)
    else:
        raise ModelError(f"{path}: no such ControlNet file or folder")
    net = PixArtControlNet(base, config)
    load_strict(net, state, str(path))
    return net.eval()


def save_controlnet(net: PixArtControlNet, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(net.config.to_dict(), indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS_NAME))


# -- whole model -------------------------------------------------------------------------------------
def resolve(spec: str | Path) -> Path:
    """`tiny` -> the shipped folder; anything else must exist locally."""
    if str(spec) == "tiny":
        return TINY_DIR
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder (give a diffusers folder, an official .pth, or 'tiny')")
    return path


def resolve_controlnet(spec: str | Path) -> Path:
    """`tiny` -> the shipped tiny ControlNet; anything else must exist locally."""
    if str(spec) == "tiny":
        return TINY_DIR / "controlnet"
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{path}: no such ControlNet file or folder")
    return path


def detect_layout(path: Path) -> tuple[str, Path]:
    """('diffusers', folder) or ('official', .pth file); ModelError naming what was looked for."""
    if path.is_file():
        if path.suffix in {".pth", ".pt"}:
            return "official", path
        raise ModelError(f"{path}: unknown model file (expected an official PixArt .pth)")
    if (path / "transformer" / "config.json").exists():
        return "diffusers", path
    pth = sorted(path.glob("*.pth"))
    if len(pth) == 1:
        return "official", pth[0]
    if len(pth) > 1:
        raise ModelError(f"{path}: several .pth files ({', '.join(p.name for p in pth)}); pass one of them")
    raise ModelError(f"{path}: unknown layout (no transformer/config.json for diffusers, no PixArt .pth)")


def _check_scheduler(folder: Path) -> str:
    """The LCM spacing a diffusers folder implies; refuse schedules the reference does not implement."""
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    if not cfg_path.exists():
        return "diffusers"
    cfg = _read_json(cfg_path)
    schedule = (
        cfg.get("beta_schedule", "linear"),
        cfg.get("beta_start", BETA_START),
        cfg.get("beta_end", BETA_END),
        cfg.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS),
    )
    if (
        schedule[0] != "linear"
        or abs(schedule[1] - BETA_START) > 1e-9
        or abs(schedule[2] - BETA_END) > 1e-9
        or schedule[3] != NUM_TRAIN_TIMESTEPS
        or cfg.get("prediction_type", "epsilon") != "epsilon"
    ):
        raise ModelError(
            f"{cfg_path}: schedule {schedule} / prediction {cfg.get('prediction_type')!r} is not "
            "PixArt's (linear betas 1e-4..0.02, 1000 steps, epsilon)"
        )
    return "diffusers"


def _load_text_and_vae(t5_dir: Path, tok_dir: Path, vae_dir: Path):
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, T5EncoderModel

    for what, d in (("text encoder", t5_dir), ("tokenizer", tok_dir), ("VAE", vae_dir)):
        if not d.is_dir():
            raise ModelError(f"{d}: {what} folder missing")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        text_encoder = T5EncoderModel.from_pretrained(str(t5_dir), local_files_only=True, dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"could not load text encoder/tokenizer/VAE: {exc}") from exc
    return tokenizer, text_encoder.eval(), vae.eval()


def model_for_sampler(spec: str | Path, sampler: str) -> str | Path:
    """The model a sampler should run: `tiny` with "ddim" (the guided teacher sampler) is `tiny-teacher`
    when the teacher is shipped; anything else is `spec` unchanged."""
    if str(spec) == "tiny" and sampler == "ddim" and TINY_TEACHER_DIT.is_dir():
        return TINY_TEACHER
    return spec


def load_model(spec: str | Path, controlnet: str | Path | None = None, lcm_spacing: str | None = None) -> PixArtModel:
    """Load a whole model from `tiny`, `tiny-teacher`, a diffusers folder, or an official checkpoint layout."""
    teacher = str(spec) == TINY_TEACHER
    if teacher and not TINY_TEACHER_DIT.is_dir():
        raise ModelError(f"{TINY_TEACHER_DIT}: the tiny teacher is not shipped in this copy")
    layout, path = detect_layout(resolve("tiny" if teacher else spec))
    if layout == "diffusers":
        spacing = _check_scheduler(path)
        dit = load_dit(TINY_TEACHER_DIT if teacher else path / "transformer")
        tokenizer, text_encoder, vae = _load_text_and_vae(path / "text_encoder", path / "tokenizer", path / "vae")
    else:
        spacing = "pixart"
        dit = load_official_dit(path)
        root = path.parent
        t5 = next((root / d for d in OFFICIAL_T5_DIRS if (root / d).is_dir()), root / OFFICIAL_T5_DIRS[0])
        vae_dir = next((root / d for d in OFFICIAL_VAE_DIRS if (root / d).is_dir()), root / OFFICIAL_VAE_DIRS[0])
        tokenizer, text_encoder, vae = _load_text_and_vae(t5, t5, vae_dir)
    if lcm_spacing is not None:
        if lcm_spacing not in LCM_SPACINGS:
            raise ModelError(f"unknown LCM spacing {lcm_spacing!r}; choose one of {', '.join(LCM_SPACINGS)}")
        spacing = lcm_spacing
    net = load_controlnet(resolve_controlnet(controlnet), dit) if controlnet else None
    if text_encoder.config.d_model != dit.config.caption_channels:
        raise ModelError(
            f"text encoder width {text_encoder.config.d_model} != transformer caption_channels "
            f"{dit.config.caption_channels}"
        )
    return PixArtModel(
        dit=dit,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        source=path,
        layout=layout,
        lcm_spacing=spacing,
        controlnet=net,
    )
