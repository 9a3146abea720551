"""Official PixArt checkpoints (`.pth`, the PixArt-alpha repository's key layout) <-> our state dicts.

Upstream layout (`diffusion/model/nets/PixArt.py`, `PixArtMS.py`, `PixArt_blocks.py`,
`pixart_controlnet.py`) against diffusers' names, which ours equal:

    x_embedder.proj                 pos_embed.proj
    t_embedder.mlp.{0,2}            adaln_single.emb.timestep_embedder.linear_{1,2}
    csize_embedder.mlp.{0,2}        adaln_single.emb.resolution_embedder.linear_{1,2}     (1024-MS)
    ar_embedder.mlp.{0,2}           adaln_single.emb.aspect_ratio_embedder.linear_{1,2}   (1024-MS)
    t_block.1                       adaln_single.linear
    y_embedder.y_proj.fc{1,2}       caption_projection.linear_{1,2}
    y_embedder.y_embedding          null_caption
    blocks.i.attn.qkv               transformer_blocks.i.attn1.to_{q,k,v}   (split in 3 along dim 0)
    blocks.i.attn.proj              transformer_blocks.i.attn1.to_out.0
    blocks.i.cross_attn.q_linear    transformer_blocks.i.attn2.to_q
    blocks.i.cross_attn.kv_linear   transformer_blocks.i.attn2.to_{k,v}     (split in 2 along dim 0)
    blocks.i.cross_attn.proj        transformer_blocks.i.attn2.to_out.0
    blocks.i.mlp.fc{1,2}            transformer_blocks.i.ff.net.{0.proj,2}
    blocks.i.scale_shift_table      transformer_blocks.i.scale_shift_table
    final_layer.linear              proj_out
    final_layer.scale_shift_table   scale_shift_table
    pos_embed (buffer, 512 models)  -- recomputed from the shape, dropped

ControlNet (`ControlPixArtHalf` state dict): `controlnet.j.copied_block.<block keys>`,
`controlnet.0.before_proj`, `controlnet.j.after_proj`, plus the frozen `base_model.<keys above>`.
One table drives both directions, so the conversion cannot drift from its inverse.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .config import DiTConfig
from .errors import WeightsError

# (official suffix, diffusers suffixes): several diffusers tensors = one official tensor split on dim 0.
_BLOCK_MAP: list[tuple[str, tuple[str, ...]]] = [
    ("attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    ("attn.proj", ("attn1.to_out.0",)),
    ("cross_attn.q_linear", ("attn2.to_q",)),
    ("cross_attn.kv_linear", ("attn2.to_k", "attn2.to_v")),
    ("cross_attn.proj", ("attn2.to_out.0",)),
    ("mlp.fc1", ("ff.net.0.proj",)),
    ("mlp.fc2", ("ff.net.2",)),
]
_GLOBAL_MAP: list[tuple[str, str]] = [
    ("x_embedder.proj", "pos_embed.proj"),
    ("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
    ("csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1"),
    ("csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2"),
    ("ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1"),
    ("ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2"),
    ("t_block.1", "adaln_single.linear"),
    ("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
    ("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
    ("final_layer.linear", "proj_out"),
]
_PARAMS = ("weight", "bias")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an official `.pth` (weights only: never unpickles code), unwrapping 'state_dict'."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return obj


def _block_to_diffusers(rest: str, value: torch.Tensor, prefix: str, out: dict) -> bool:
    if rest == "scale_shift_table":
        out[f"{prefix}scale_shift_table"] = value
        return True
    for official, targets in _BLOCK_MAP:
        for param in _PARAMS:
            if rest == f"{official}.{param}":
                for name, part in zip(targets, value.chunk(len(targets), dim=0)):
                    out[f"{prefix}{name}.{param}"] = part.clone()
                return True
    return False


def dit_from_official(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official DiT keys -> ours. Returns (converted, keys it did not recognise)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    globals_map = {f"{o}.{p}": f"{d}.{p}" for o, d in _GLOBAL_MAP for p in _PARAMS}
    for key, value in sd.items():
        if key in globals_map:
            out[globals_map[key]] = value
        elif key == "final_layer.scale_shift_table":
            out["scale_shift_table"] = value
        elif key == "y_embedder.y_embedding":
            out["null_caption"] = value
        elif key == "pos_embed":
            continue  # a fixed sin-cos buffer in the 512 models; we compute it from the shape
        elif (m := _BLOCK_RE.match(key)) and _block_to_diffusers(
            m.group(2), value, f"transformer_blocks.{m.group(1)}.", out
        ):
            continue
        else:
            unknown.append(key)
    return out, unknown


def dit_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> official keys (inverse of `dit_from_official`; used to write test checkpoints)."""
    out: dict[str, torch.Tensor] = {}
    inverse = {f"{d}.{p}": f"{o}.{p}" for o, d in _GLOBAL_MAP for p in _PARAMS}
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks."))
    for key, value in sd.items():
        if key in inverse:
            out[inverse[key]] = value
    out["final_layer.scale_shift_table"] = sd["scale_shift_table"]
    if "null_caption" in sd:
        out["y_embedder.y_embedding"] = sd["null_caption"]
    for i in range(depth):
        out.update(_block_to_official(sd, f"transformer_blocks.{i}.", f"blocks.{i}."))
    return out


def _block_to_official(sd: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    out = {f"{dst}scale_shift_table": sd[f"{src}scale_shift_table"]}
    for official, targets in _BLOCK_MAP:
        for param in _PARAMS:
            out[f"{dst}{official}.{param}"] = torch.cat([sd[f"{src}{t}.{param}"] for t in targets], dim=0)
    return out


def controlnet_from_official(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official `ControlPixArtHalf` keys -> our `PixArtControlNet` keys. `base_model.*` is skipped:
    the base weights come from the model folder. Returns (converted, unrecognised keys)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    pattern = re.compile(r"^controlnet\.(\d+)\.(copied_block|before_proj|after_proj)\.(.+)$")
    for key, value in sd.items():
        if key.startswith("base_model."):
            continue
        m = pattern.match(key)
        if not m:
            unknown.append(key)
        elif m.group(2) != "copied_block":
            out[key] = value
        elif not _block_to_diffusers(m.group(3), value, f"controlnet.{m.group(1)}.copied_block.", out):
            unknown.append(key)
    return out, unknown


def controlnet_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> official `controlnet.*` keys (inverse of `controlnet_from_official`)."""
    out = {k: v for k, v in sd.items() if ".copied_block." not in k}
    copies = sorted({int(k.split(".")[1]) for k in sd})
    for j in copies:
        out.update(_block_to_official(sd, f"controlnet.{j}.copied_block.", f"controlnet.{j}.copied_block."))
    return out


#: PixArt-XL-2's width and head width (16 heads of 72), the only official DiT size.
PIXART_XL_WIDTH, PIXART_XL_HEAD_DIM = 1152, 72


def infer_dit_config(
    sd: dict[str, torch.Tensor], attention_head_dim: int | None = None, sample_size: int | None = None
) -> DiTConfig:
    """A `DiTConfig` from official tensor shapes. Head width is not visible in the shapes: PixArt-XL
    uses 72 (16 heads x 72 = 1152), assumed only at that width; any other width must state it (a head
    width that merely divides the width would give a model with the right shapes and wrong numbers).
    The 512 models' `pos_embed` buffer gives the sample size; the multi-aspect models (csize/ar
    embedders) are 1024 px, sample size 128."""
    try:
        conv = sd["x_embedder.proj.weight"]  # [D, C_in, p, p]
        hidden, in_channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
        out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
        caption_channels = sd["y_embedder.y_proj.fc1.weight"].shape[1]
    except KeyError as exc:
        raise WeightsError(f"not a PixArt checkpoint: missing {exc.args[0]}") from exc
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))), default=-1)
    multi_aspect = "csize_embedder.mlp.0.weight" in sd
    if sample_size is None:
        if multi_aspect:
            sample_size = 128
        elif "pos_embed" in sd:
            sample_size = int(round(sd["pos_embed"].shape[1] ** 0.5)) * patch
        else:
            raise WeightsError("cannot tell the sample size of this checkpoint (no pos_embed); pass it explicitly")
    if attention_head_dim is None:
        if hidden != PIXART_XL_WIDTH:
            raise WeightsError(
                f"hidden width {hidden}: the head width is not stored in the weights (PixArt-XL: "
                f"{PIXART_XL_HEAD_DIM} at width {PIXART_XL_WIDTH}); put a config.json with "
                '{"attention_head_dim": N} beside the checkpoint'
            )
        attention_head_dim = PIXART_XL_HEAD_DIM
    if hidden % attention_head_dim:
        raise WeightsError(
            f"attention_head_dim {attention_head_dim}: the hidden width {hidden} is not a multiple of it; fix "
            "the config.json beside the checkpoint"
        )
    return DiTConfig(
        num_attention_heads=hidden // attention_head_dim,
        attention_head_dim=attention_head_dim,
        in_channels=in_channels,
        out_channels=out_channels,
        num_layers=depth,
        cross_attention_dim=hidden,
        caption_channels=caption_channels,
        sample_size=sample_size,
        patch_size=patch,
        use_additional_conditions=multi_aspect,
    )
