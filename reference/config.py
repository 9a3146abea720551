"""Frozen configs for the PixArt DiT and its ControlNet-Transformer.

`DiTConfig` mirrors the constructor of diffusers' `PixArtTransformer2DModel` (the fields that change
the computation), so a diffusers `transformer/config.json` maps onto it one to one and back again.
One config object flows from the model folder to every exported artifact's manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ModelError

#: Keys of a diffusers transformer config that do not change the PixArt computation (deprecated or
#: fixed for PixArt). They are accepted on load and not carried further.
_IGNORED_DIFFUSERS_KEYS = {
    "dropout",
    "norm_num_groups",
    "attention_bias",
    "num_embeds_ada_norm",
    "upcast_attention",
    "norm_elementwise_affine",
    "attention_type",
    "use_linear_projection",
    "num_vector_embeds",
    "only_cross_attention",
    "double_self_attention",
    "activation_fn",
    "norm_type",
}
#: Keys only older (Transformer2DModel-era) PixArt configs carry; never written.
_LEGACY_KEYS = {"only_cross_attention", "double_self_attention"}
#: Values that the ignored keys must have for this reference to be exact.
_REQUIRED_VALUES = {
    "norm_type": "ada_norm_single",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "norm_elementwise_affine": False,
    "only_cross_attention": False,
    "double_self_attention": False,
    "upcast_attention": False,
    "num_embeds_ada_norm": 1000,
}


class ConfigError(ModelError):
    """A model config that this reference cannot represent exactly."""


#: Lower bounds of the integer fields (every other integer field must be >= 1).
_INT_MIN = {"in_channels": 1}
_OPTIONAL = {"interpolation_scale", "use_additional_conditions"}


def _check_fields(config, what: str) -> None:
    """Types and ranges of a config read from JSON: the one validation layer for model configs, so a
    `"6"`, a `0` or a `2.5` is refused with the field's name instead of failing deep in torch."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and f.name in _OPTIONAL:
            continue
        if f.name == "use_additional_conditions":
            if not isinstance(value, bool):
                raise ConfigError(f"{what} {f.name}={value!r}: give true, false or null")
        elif f.name == "norm_eps":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"{what} {f.name}={value!r}: give a number between 0 and 1")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{what} {f.name}={value!r}: give an integer")
        elif value < _INT_MIN.get(f.name, 1) or value > 1_000_000:
            raise ConfigError(f"{what} {f.name}={value!r}: give a positive integer")


@dataclass(frozen=True)
class DiTConfig:
    """PixArt-alpha/delta transformer. Defaults are PixArt-XL-2 at 512 px (arXiv 2310.00426 Tab. 1)."""

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int = 8  # learned sigma: the first `in_channels` are the noise prediction
    num_layers: int = 28
    cross_attention_dim: int = 1152
    caption_channels: int = 4096  # T5-XXL width
    sample_size: int = 64  # latent size the positions are laid out for (512 px / 8)
    patch_size: int = 2
    interpolation_scale: int | None = None  # None: max(sample_size // 64, 1), as diffusers
    use_additional_conditions: bool | None = None  # None: sample_size == 128, as diffusers
    norm_eps: float = 1e-6

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def resolved_interpolation_scale(self) -> int:
        if self.interpolation_scale is not None:
            return self.interpolation_scale
        return max(self.sample_size // 64, 1)

    @property
    def resolved_additional_conditions(self) -> bool:
        if self.use_additional_conditions is not None:
            return self.use_additional_conditions
        return self.sample_size == 128

    def __post_init__(self) -> None:
        _check_fields(self, "transformer config")
        if self.sample_size % self.patch_size:
            raise ConfigError(
                f"transformer config sample_size {self.sample_size} is not a multiple of the patch size "
                f"{self.patch_size}"
            )
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ConfigError(f"out_channels must be in_channels or 2*in_channels, got {self.out_channels}")
        if self.cross_attention_dim != self.inner_dim:
            raise ConfigError(
                f"cross_attention_dim ({self.cross_attention_dim}) must equal heads*head_dim "
                f"({self.inner_dim}): PixArt projects captions to the hidden width"
            )
        if self.resolved_additional_conditions and self.inner_dim % 3:
            raise ConfigError(
                f"hidden width {self.inner_dim} must be divisible by 3 for the resolution/aspect-ratio embedders"
            )

    @classmethod
    def from_dict(cls, raw: dict) -> "DiTConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(
            k for k in raw if not k.startswith("_") and k not in fields and k not in _IGNORED_DIFFUSERS_KEYS
        )
        if unknown:
            raise ConfigError(f"unknown transformer config keys: {', '.join(unknown)}")
        for key, want in _REQUIRED_VALUES.items():
            if key in raw and raw[key] != want:
                raise ConfigError(f"transformer config {key}={raw[key]!r} is not supported (need {want!r})")
        return cls(**{k: v for k, v in raw.items() if k in fields})

    def to_diffusers_dict(self) -> dict:
        """The config.json of an equivalent diffusers `PixArtTransformer2DModel`."""
        out = {"_class_name": "PixArtTransformer2DModel", **dataclasses.asdict(self)}
        out.update({k: v for k, v in _REQUIRED_VALUES.items() if k not in _LEGACY_KEYS})
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ControlNetConfig:
    """PixArt-delta ControlNet-Transformer: trainable copies of the first `num_copies` base blocks."""

    num_copies: int = 13  # N in the paper (arXiv 2401.05252 Sec. 4): half of XL's 28 blocks, minus one

    def __post_init__(self) -> None:
        _check_fields(self, "ControlNet config")

    def check_base(self, base: DiTConfig) -> None:
        """Copy i feeds base block i+1, so the last base block is never copied: N in 1..layers-1."""
        if not 1 <= self.num_copies < base.num_layers:
            raise ConfigError(
                f"ControlNet num_copies {self.num_copies}: give an integer from 1 to {base.num_layers - 1} "
                f"(the base has {base.num_layers} blocks; copy i feeds block i+1)"
            )

    @classmethod
    def from_dict(cls, raw: dict) -> "ControlNetConfig":
        if not isinstance(raw, dict) or "num_copies" not in raw:
            raise ConfigError("ControlNet config needs num_copies (the number of copied base blocks)")
        return cls(num_copies=raw["num_copies"])

    def to_dict(self) -> dict:
        return {"_class_name": "PixArtControlNetTransformer", **dataclasses.asdict(self)}
