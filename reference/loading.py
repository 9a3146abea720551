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
from .t5_streamed import StreamedT5Encoder, should_stream

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
    #: An optional small decoder of the same latents (a diffusers AutoencoderTiny; the export's
    #: `vae_decoder_preview` graph), attached by the caller (`pixart_export.preview`), never loaded here.
    vae_preview: torch.nn.Module | None = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        return self.dit.config.sample_size * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def max_resolution(self) -> int:
        """The largest side drawn or exported: twice the native size (4x its tokens). PixArt's aspect
        buckets reach 2x native on one side; beyond, attention memory (tokens squared) runs away."""
        return 2 * self.default_resolution

    def resolution_error(self, height: int, width: int) -> str | None:
        """Why (`height`, `width`) cannot be drawn by this model, or None."""
        step = self.vae_scale_factor * self.dit.config.patch_size
        if height <= 0 or width <= 0 or height % step or width % step:
            return f"unsupported resolution {height}x{width}: height and width must be positive multiples of {step}"
        if max(height, width) > self.max_resolution:
            return (
                f"resolution {height}x{width} is too large for this model: at most {self.max_resolution} px a "
                f"side (twice its native {self.default_resolution} px)"
            )
        return None


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object (a config.json holds one object of settings)")
    return data


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


def _beside_head_dim(path: Path) -> int | None:
    """`attention_head_dim` from a config.json beside an official checkpoint (None when there is none)."""
    beside = path.parent / "config.json"
    if not beside.is_file():
        return None
    value = _read_json(beside).get("attention_head_dim")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"{beside}: attention_head_dim {value!r}: give a positive integer")
    return value


def load_official_dit(path: Path, sample_size: int | None = None) -> PixArtDiT:
    """An official PixArt `.pth`, converted in memory; the config is read off the tensor shapes."""
    raw = official.read_checkpoint(path)
    config = official.infer_dit_config(raw, attention_head_dim=_beside_head_dim(path), sample_size=sample_size)
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
        raw_config = _read_json(path / "config.json")
        config = ControlNetConfig.from_dict(raw_config)
        _check_recorded_base(path, raw_config, base)
        state = read_weights(path)
    elif path.is_file():
        raw = official.read_checkpoint(path)
        _check_stored_base(
            path, {k[len("base_model.") :]: v for k, v in raw.items() if k.startswith("base_model.")}, base
        )
        state, unknown = official.controlnet_from_official(raw)
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


def _check_recorded_base(path: Path, raw_config: dict, base: PixArtDiT) -> None:
    """A ControlNet folder of ours names the base it was trained on (`base_sha256`) and, optionally,
    other bases it was measured to work with (`validated_sha256`: PixArt-delta applies a ControlNet
    trained on the teacher to the LCD student distilled from it); refuse any other base."""
    recorded = raw_config.get("base_sha256")
    if recorded is None:
        return
    also = raw_config.get("validated_sha256", [])
    if not isinstance(recorded, str) or not isinstance(also, list) or not all(isinstance(v, str) for v in also):
        raise ModelError(f"{path}: base_sha256 must be a string and validated_sha256 a list of strings")
    if base_fingerprint(base) not in {recorded, *also}:
        raise ModelError(
            f"{path}: this ControlNet was built for another base model (base_sha256 differs from the "
            "loaded model's weights); give the model it was trained on"
        )


def base_fingerprint(base: PixArtDiT) -> str:
    """sha256 of a base DiT's weights (fp32 bytes in key order): what a ControlNet folder records of the
    model it was trained on, so it is never loaded onto another."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(base.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


#: How far a ControlNet checkpoint's stored base may be from the loaded one, per tensor, as
#: |a - b| / |b| (L2): 1e-2 admits a base stored in fp16 or bf16 (rounding ~4e-3), not another model.
BASE_TOLERANCE = 1e-2


def _check_stored_base(path: Path, stored: dict[str, torch.Tensor], base: PixArtDiT) -> None:
    """An official ControlNet checkpoint carries the base it was trained with (`base_model.*`): refuse
    it on a different base (the residuals it adds are meaningless there)."""
    if not stored:
        return
    converted, _ = official.dit_from_official(stored)
    own = base.state_dict()
    for key, value in converted.items():
        if key not in own:
            continue
        ref = own[key].to(torch.float32)
        value = value.to(torch.float32)
        if value.shape != ref.shape or float((value - ref).norm()) > BASE_TOLERANCE * float(ref.norm()) + 1e-6:
            raise ModelError(
                f"{path}: this ControlNet was built for another base model (its stored base_model.{key} "
                "differs from the loaded model's); give the model it was trained on"
            )


def save_controlnet(
    net: PixArtControlNet, folder: Path, base: PixArtDiT | None = None, validated: tuple[PixArtDiT, ...] = ()
) -> None:
    """config.json (with `base_sha256` of `base`, the model it was trained on, when given, and
    `validated_sha256` of the other bases it was measured on) + safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    config = net.config.to_dict() | ({"base_sha256": base_fingerprint(base)} if base is not None else {})
    if validated:
        config["validated_sha256"] = [base_fingerprint(b) for b in validated]
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
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
        if should_stream(t5_dir):  # T5-XXL: an fp32 copy would not fit beside the rest (t5_streamed.py)
            text_encoder = StreamedT5Encoder(t5_dir)
        else:
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
