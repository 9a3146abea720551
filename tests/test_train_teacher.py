"""reference/train/teacher.py (smoke): the epsilon objective falls in a few steps, caption dropout
swaps in the learned null caption, a resumed run equals an uninterrupted one, the written model
folder (with the trained or the frozen T5) runs in the reference pipeline, and the PixArt
initialisation starts every block as the identity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from reference.dit import PixArtDiT
from reference.loading import load_model
from reference.pipeline import ReferencePipeline
from reference.tiny import TINY_DIT, TINY_VAE
from reference.train import teacher
from reference.train.common import LossLog


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    AutoencoderKL(**TINY_VAE).save_pretrained(str(folder), safe_serialization=True)
    return folder


def run(vae_dir, out, steps, *extra):
    teacher.main(
        [
            "--vae",
            str(vae_dir),
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--batch-size",
            "8",
            "--num-images",
            "32",
            "--lr",
            "1e-3",
            "--warmup",
            "5",
            "--no-progress",
            *extra,
        ]
    )


def test_teacher_loss_falls_and_model_folder_samples(vae_dir, tmp_path):
    out = tmp_path / "teacher"
    run(vae_dir, out, 40)
    loss = LossLog(out, ["loss"], 40, enabled=False).read()["loss"]
    assert loss[-10:].mean() < 0.5 * loss[:10].mean(), loss

    model = load_model(out / "model")
    ema = load_file(str(out / "ckpt" / "ema.safetensors"))
    for key, value in model.dit.state_dict().items():
        assert torch.equal(value, ema[key]), key  # the written transformer is the EMA
    text_ema = load_file(str(out / "ckpt" / "text_ema.safetensors"))
    base = load_model(out / "base").text_encoder.state_dict()  # the random tiny the run started from
    written = model.text_encoder.state_dict()
    assert all(torch.equal(written[k], text_ema[k]) for k in text_ema)  # the written T5 is its EMA, trained
    assert not all(torch.equal(written[k], base[k]) for k in base)
    assert model.vae.config.scaling_factor == 1.0 and model.controlnet is None
    images = ReferencePipeline(model)("a red circle", steps=2, sampler="ddim", output="pt")
    assert images.shape == (1, 3, 128, 128) and torch.isfinite(images).all()


def test_frozen_text_encoder_is_written_unchanged(vae_dir, tmp_path):
    run(vae_dir, tmp_path / "frozen", 3, "--text-encoder", "frozen")
    base = load_model(tmp_path / "frozen" / "base").text_encoder.state_dict()
    written = load_model(tmp_path / "frozen" / "model").text_encoder.state_dict()
    assert all(torch.equal(written[k], base[k]) for k in base)
    assert not (tmp_path / "frozen" / "ckpt" / "text_ema.safetensors").exists()


def test_pixart_init_starts_blocks_as_identity_and_predicts_zero():
    torch.manual_seed(0)
    dit = teacher.initialize_like_pixart(PixArtDiT(TINY_DIT, text_len=12)).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0])
    embeds, mask = torch.randn(2, 12, TINY_DIT.caption_channels), torch.ones(2, 12, dtype=torch.int64)
    assert torch.count_nonzero(dit.predict_noise(x, t, embeds, mask)) == 0  # zero final layer
    for block in dit.transformer_blocks:  # cross-attention contributes nothing at the start
        assert torch.count_nonzero(block.attn2.to_out[0].weight) == 0
    q = dit.transformer_blocks[0].attn1.to_q.weight
    bound = (6 / (q.shape[0] + q.shape[1])) ** 0.5
    assert q.abs().max() <= bound and q.abs().max() > 0.9 * bound  # xavier-uniform
    assert abs(float(dit.adaln_single.linear.weight.detach().std()) - 0.02) < 0.002


def test_resumed_run_equals_uninterrupted_run(vae_dir, tmp_path):
    run(vae_dir, tmp_path / "straight", 6, "--ckpt-every", "100")
    run(vae_dir, tmp_path / "resumed", 3, "--ckpt-every", "100")
    run(vae_dir, tmp_path / "resumed", 6, "--ckpt-every", "100")
    a = load_file(str(tmp_path / "straight" / "ckpt" / "dit.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "ckpt" / "dit.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = LossLog(tmp_path / "resumed", ["loss"], 6, enabled=False).read()
    assert rows["step"].tolist() == [1, 2, 3, 4, 5, 6]


def test_min_snr_weights():
    ac = torch.tensor([0.999, 0.9, 5 / 6, 0.5, 0.01])  # SNR 999, 9, 5, 1, 0.0101
    weight = teacher.snr_weight(ac, 5.0)
    torch.testing.assert_close(weight, torch.tensor([5 / 999, 5 / 9, 1.0, 1.0, 1.0]), rtol=1e-4, atol=0)
    assert torch.equal(teacher.snr_weight(ac, 0.0), torch.ones(5))  # PixArt's plain MSE


def test_ema_decay_warms_up():
    assert teacher.ema_decay(0.999, -1) == 0.0  # during the LR warm-up the EMA copies the weights
    assert teacher.ema_decay(0.999, 0) == 0.1 and teacher.ema_decay(0.999, 90) == 0.91
    assert teacher.ema_decay(0.999, 10**6) == 0.999


def test_caption_dropout_uses_the_null_caption():
    dit = PixArtDiT(TINY_DIT, text_len=12).eval()
    objective = teacher.EpsObjective(dit)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 700.0])
    embeds = torch.randn(2, 12, TINY_DIT.caption_channels)
    mask = torch.tensor([[1] * 5 + [0] * 7] * 2)
    got = objective(x, t, embeds, mask, torch.tensor([True, False]))
    null = dit.predict_noise(x[:1], t[:1], dit.null_caption[None], torch.ones(1, 12, dtype=torch.int64))
    cond = dit.predict_noise(x[1:], t[1:], embeds[1:], mask[1:])
    torch.testing.assert_close(got[:1], null)
    torch.testing.assert_close(got[1:], cond)
    assert not torch.allclose(null, dit.predict_noise(x[:1], t[:1], embeds[:1], mask[:1]))


def test_aux_role_loss_trains_a_head_beside_the_t5(vae_dir, tmp_path):
    out = tmp_path / "aux"
    run(vae_dir, out, 6, "--aux-role", "1")
    head = load_file(str(out / "ckpt" / "role_head.safetensors"))
    assert head["weight"].shape == (3, 64)
    summary = json.loads((out / "summary.json").read_text())
    first, last = summary["aux_role_loss_first_last_100"]
    assert 0 < last and first < 2.0  # cross-entropy over 3 classes, logged
    assert not (out / "model" / "role_head").exists()  # training-only: the model folder is unchanged in layout
    with pytest.raises(SystemExit):
        run(vae_dir, tmp_path / "frozen-aux", 1, "--text-encoder", "frozen", "--aux-role", "1")


def test_out_of_time_by_duration_or_wall_clock():
    import time
    from types import SimpleNamespace

    from reference.train.common import out_of_time

    acc = SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, op: t)
    now = time.time()
    assert not out_of_time(acc, now, 0.0) and not out_of_time(acc, now, 0.0, 0.0)  # no limit
    assert out_of_time(acc, now - 10, 5.0) and not out_of_time(acc, now, 60.0)
    assert out_of_time(acc, now, 0.0, now - 1) and not out_of_time(acc, now, 0.0, now + 60)
    assert out_of_time(acc, now, 60.0, now - 1)  # whichever comes first


def test_free_layout_set_and_fine_tuning_from_a_trained_dit(vae_dir, tmp_path):
    """`--free-layout` mixes layout.py's scenes into the fixed set (the cache's captions are the ones
    `dataset_captions` lists, in its order); `--init-from` starts the DiT from that model's weights (step 0's
    EMA is exactly them), where a fresh run starts from the PixArt initialisation."""
    from reference.train import common, layout

    run(vae_dir, tmp_path / "first", 2)
    run(vae_dir, tmp_path / "tuned", 1, "--free-layout", "0.5", "--init-from", str(tmp_path / "first" / "model"))
    captions = common.dataset_captions(0, 32, 0.5)
    assert sum(" and " in c or "," in c for c in captions[16:]) > 0  # free-layout captions, last half
    assert not any(" and " in c for c in captions[:16])
    cached = next((tmp_path / "tuned").glob("cache-*-free0.5-*.safetensors"))
    assert len(load_file(str(cached))["embeds"]) == len(set(captions))
    assert all(not layout.shows_heldout_pair(layout.scene(0, i)) for i in layout.base_training_indices(0, 16))
    start = load_model(tmp_path / "first" / "model").dit.state_dict()
    fresh = teacher.initialize_like_pixart(PixArtDiT(load_model(tmp_path / "first" / "model").dit.config, text_len=120))
    tuned = load_model(tmp_path / "tuned" / "model").dit.state_dict()
    # one step at lr 1e-3 with warm-up 5 moves the weights a little; the EMA of step 1 (rate 0: warm-up) is
    # the trained weights, so: much closer to the start than a fresh initialisation is
    name = "transformer_blocks.0.attn1.to_q.weight"
    assert (tuned[name] - start[name]).norm() < 0.1 * (fresh.state_dict()[name] - start[name]).norm()


def test_free_layout_needs_a_fixed_set(vae_dir, tmp_path):
    with pytest.raises(SystemExit, match="--num-images"):
        teacher.main(
            ["--vae", str(vae_dir), "--out", str(tmp_path / "x"), "--steps", "1", "--free-layout", "0.5"]
            + ["--batch-size", "8", "--no-progress"]
        )
