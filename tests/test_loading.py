"""reference.loading / reference.official: round trips on small models, and one clear error per bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import load_file, save_file

from reference import official
from reference.config import ControlNetConfig, DiTConfig
from reference.controlnet import PixArtControlNet
from reference.dit import PixArtDiT
from reference.errors import ModelError, WeightsError
from reference.loading import (
    TINY_DIR,
    detect_layout,
    load_controlnet,
    load_dit,
    load_model,
    load_official_dit,
    save_controlnet,
    save_dit,
)
from tests.conftest import SMALL_512, random_inputs

# Official checkpoints do not record the head width; PixArt uses 72, so small test models do too.
OFFICIAL_512 = DiTConfig(
    num_attention_heads=2,
    attention_head_dim=72,
    num_layers=2,
    cross_attention_dim=144,
    caption_channels=24,
    sample_size=8,
    use_additional_conditions=False,
)
OFFICIAL_MS = DiTConfig(
    num_attention_heads=2,
    attention_head_dim=72,
    num_layers=2,
    cross_attention_dim=144,
    caption_channels=24,
    sample_size=128,
)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_diffusers_folder_round_trip(tmp_path):
    dit = PixArtDiT(SMALL_512, text_len=12)
    save_dit(dit, tmp_path / "transformer")
    _same_state(dit, load_dit(tmp_path / "transformer"))
    # the folder is a real diffusers folder: diffusers loads it and computes the same output
    theirs = PixArtTransformer2DModel.from_pretrained(str(tmp_path / "transformer"), local_files_only=True).eval()
    latents, t, embeds, mask = random_inputs(SMALL_512)
    with torch.no_grad():
        want = theirs(latents, encoder_hidden_states=embeds, timestep=t, encoder_attention_mask=mask).sample
        torch.testing.assert_close(dit.eval()(latents, t, embeds, mask), want, rtol=0, atol=0)


def test_diffusers_folder_without_null_caption(tmp_path):
    dit = PixArtDiT(SMALL_512, text_len=12)
    save_dit(dit, tmp_path)
    (tmp_path / "pixart_null_caption.safetensors").unlink()
    assert load_dit(tmp_path).null_caption is None


def _official_checkpoint(config: DiTConfig, path, with_pos_embed: bool, wrap: bool = True):
    dit = PixArtDiT(config, text_len=12)
    sd = official.dit_to_official(dit.state_dict())
    if with_pos_embed:  # the 512 models keep their fixed sin-cos table as a buffer
        sd["pos_embed"] = dit.pos_embed.pos_embed.clone()
    torch.save({"state_dict": sd} if wrap else sd, path)
    # the head width is not in the weights: stated beside any checkpoint narrower than PixArt-XL
    (path.parent / "config.json").write_text(json.dumps({"attention_head_dim": config.attention_head_dim}))
    return dit


@pytest.mark.parametrize("config,pos", [(OFFICIAL_512, True), (OFFICIAL_MS, False)], ids=["512", "1024-ms"])
def test_official_checkpoint_round_trip(tmp_path, config, pos):
    dit = _official_checkpoint(config, tmp_path / "PixArt.pth", with_pos_embed=pos)
    loaded = load_official_dit(tmp_path / "PixArt.pth")
    assert loaded.config == DiTConfig(**{**config.to_dict(), "use_additional_conditions": not pos})
    _same_state(dit, loaded)
    raw = torch.load(tmp_path / "PixArt.pth", weights_only=True)["state_dict"]
    assert raw["blocks.0.attn.qkv.weight"].shape == (3 * 144, 144)  # upstream fused layout really was written
    assert "y_embedder.y_embedding" in raw


def test_official_controlnet_round_trip(tmp_path):
    base = PixArtDiT(OFFICIAL_512, text_len=12)
    net = PixArtControlNet(base, ControlNetConfig(num_copies=1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sd = official.controlnet_to_official(net.state_dict())
    sd.update({f"base_model.{k}": v for k, v in official.dit_to_official(base.state_dict()).items()})
    assert "controlnet.0.copied_block.attn.qkv.weight" in sd
    torch.save({"state_dict": sd}, tmp_path / "control.pth")
    _same_state(net, load_controlnet(tmp_path / "control.pth", base))


def test_controlnet_folder_round_trip(tmp_path):
    base = PixArtDiT(SMALL_512, text_len=12)
    net = PixArtControlNet(base, ControlNetConfig(num_copies=2))
    save_controlnet(net, tmp_path / "cn", base)
    _same_state(net, load_controlnet(tmp_path / "cn", base))


def test_mismatch_names_every_bad_key(tmp_path):
    dit = PixArtDiT(SMALL_512, text_len=12)
    save_dit(dit, tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    del sd["proj_out.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["scale_shift_table"] = torch.zeros(3, 3)
    save_file(sd, str(weights))
    with pytest.raises(WeightsError) as err:
        load_dit(tmp_path)
    msg = str(err.value)
    assert "missing 1: proj_out.bias" in msg
    assert "unexpected 1: extra.weight" in msg
    assert "scale_shift_table (file (3, 3), model (2, 32))" in msg


def test_corrupt_files_are_clear_errors(tmp_path):
    dit = PixArtDiT(SMALL_512, text_len=12)
    save_dit(dit, tmp_path / "t")
    (tmp_path / "t" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_dit(tmp_path / "t")
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file"):
        load_official_dit(tmp_path / "x.pth")
    (tmp_path / "t" / "config.json").write_text("{broken")
    with pytest.raises(ModelError, match="not readable JSON"):
        load_dit(tmp_path / "t")


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError):
        official.read_checkpoint(tmp_path / "evil.pth")


def test_unknown_config_and_layout(tmp_path):
    with pytest.raises(ModelError, match="unknown layout"):
        detect_layout(tmp_path)
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "absent")
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(
        json.dumps({**SMALL_512.to_diffusers_dict(), "norm_type": "ada_norm_zero"})
    )
    with pytest.raises(ModelError, match="norm_type"):
        load_dit(tmp_path / "transformer")


def test_tiny_loads_and_official_layout_folder(tmp_path):
    """An official-layout folder: the .pth with t5_ckpts/t5-v1_1-xxl and sd-vae-ft-ema beside it."""
    tiny = load_model("tiny", controlnet="tiny")
    assert tiny.layout == "diffusers" and tiny.controlnet is not None and tiny.default_resolution == 128
    cfg = DiTConfig(
        **{**OFFICIAL_512.to_dict(), "caption_channels": tiny.text_encoder.config.d_model, "sample_size": 16}
    )
    dit = _official_checkpoint(cfg, tmp_path / "PixArt-XL-2-512x512.pth", with_pos_embed=True, wrap=False)
    shutil.copytree(TINY_DIR / "text_encoder", tmp_path / "t5_ckpts" / "t5-v1_1-xxl")
    for f in (TINY_DIR / "tokenizer").iterdir():
        shutil.copy(f, tmp_path / "t5_ckpts" / "t5-v1_1-xxl" / f.name)
    shutil.copytree(TINY_DIR / "vae", tmp_path / "sd-vae-ft-ema")
    model = load_model(tmp_path)
    assert model.layout == "official" and model.lcm_spacing == "pixart"
    _same_state(dit, model.dit)
    shutil.rmtree(tmp_path / "sd-vae-ft-ema")
    with pytest.raises(ModelError, match="VAE folder missing"):
        load_model(tmp_path)


def test_controlnet_folder_records_its_base(tmp_path):
    base = PixArtDiT(SMALL_512, text_len=12)
    net = PixArtControlNet(base, ControlNetConfig(num_copies=2))
    save_controlnet(net, tmp_path / "cn", base)
    other = PixArtDiT(SMALL_512, text_len=12)  # same shapes, other weights
    with pytest.raises(ModelError, match="built for another base"):
        load_controlnet(tmp_path / "cn", other)
