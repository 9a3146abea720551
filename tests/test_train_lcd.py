"""reference/train/lcd.py: the consistency function and its boundary, the pseudo-Huber loss, and (smoke)
a few LCD steps make the student more self-consistent on a fixed probe batch of the training set than
the teacher it started from (the logged loss is too noisy over t to compare in 60 steps); the model
folder written out is the target network and samples with LCM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reference.loading import load_model
from reference.pipeline import ReferencePipeline
from reference.sampling import lcm_step
from reference.schedules import alphas_cumprod, lcm_scalings
from reference.tiny import TINY_VAE
from reference.train import lcd, teacher
from reference.train.common import LossLog


def test_consistency_function_matches_lcm_step_and_is_identity_at_zero():
    ac = alphas_cumprod()
    eps, x = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    got = lcd.consistency(eps, x, [999, 259, 0], ac)
    for i, t in enumerate([999, 259]):
        torch.testing.assert_close(got[i : i + 1], lcm_step(eps[i : i + 1], x[i : i + 1], t, None, ac, None)[0])
    assert lcm_scalings(0.0) == (1.0, 0.0)
    torch.testing.assert_close(got[2], x[2])  # f(x, 0) = x: the boundary condition


def test_guided_solver_step_is_algorithm_1():
    """z_hat = (1 + w) Psi(z, c) - w Psi(z, null) with Psi the DDIM step; t_n < 0 lands on the clean end."""
    from reference.dit import PixArtDiT
    from reference.sampling import ddim_step
    from reference.tiny import TINY_DIT

    ac = alphas_cumprod()
    dit = PixArtDiT(TINY_DIT, text_len=10).eval()
    x = torch.randn(2, 4, 16, 16)
    embeds, mask = torch.randn(2, 10, 64), torch.tensor([[1] * 6 + [0] * 4, [1] * 10])
    got = lcd.guided_solver_step(dit, x, [519, 19], [499, -1], embeds, mask, 4.5, ac)
    ones = torch.ones(1, 10, dtype=torch.int64)
    for i, (t, tp) in enumerate([(519, 499), (19, -1)]):
        ts = torch.tensor([float(t)])
        eps_c = dit.predict_noise(x[i : i + 1], ts, embeds[i : i + 1], mask[i : i + 1])
        eps_u = dit.predict_noise(x[i : i + 1], ts, dit.null_caption[None], ones)
        want = 5.5 * ddim_step(eps_c, x[i : i + 1], t, tp, ac) - 4.5 * ddim_step(eps_u, x[i : i + 1], t, tp, ac)
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-4, atol=1e-4)


def test_pseudo_huber():
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([0.0, -1.0])
    assert float(lcd.huber(a, b, 0.001)) == pytest.approx(((16 + 1e-6) ** 0.5 - 0.001) / 2)
    assert float(lcd.huber(a, a, 0.001)) == 0.0


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("lcd")
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(str(root / "vae"), safe_serialization=True)
    teacher.main(
        [
            "--vae",
            str(root / "vae"),
            "--out",
            str(root / "teacher"),
            "--steps",
            "30",
            "--batch-size",
            "8",
            "--num-images",
            "16",
            "--lr",
            "1e-3",
            "--warmup",
            "5",
            "--ema-decay",
            "0",
            "--no-progress",
        ]
    )
    return root / "teacher" / "model"


def probe_loss(student_dit, target_dit, teacher_dit, train: dict) -> float:
    """The LCD loss on a fixed batch of the training set: 8 grid timesteps, fixed noise."""
    g = torch.Generator().manual_seed(0)
    x0, ids = train["latents"][:8], train["caption_ids"][:8]
    embeds, mask = train["embeds"][ids], train["masks"][ids]
    noise = torch.randn(x0.shape, generator=g)
    t = [19, 139, 259, 379, 499, 619, 799, 999]
    with torch.no_grad():
        return float(
            lcd.lcd_loss(
                student_dit.predict_noise,
                teacher_dit,
                target_dit,
                x0,
                noise,
                t,
                embeds,
                mask,
                4.5,
                20,
                0.001,
                alphas_cumprod(),
            )
        )


def test_lcd_smoke_student_becomes_self_consistent(teacher_dir, tmp_path):
    out = tmp_path / "lcd"
    lcd.main(
        [
            "--teacher",
            str(teacher_dir),
            "--out",
            str(out),
            "--steps",
            "60",
            "--batch-size",
            "8",
            "--num-images",
            "16",
            "--lr",
            "1e-3",
            "--no-progress",
        ]
    )
    loss = LossLog(out, ["loss"], 60, enabled=False).read()["loss"]
    assert len(loss) == 60 and np.isfinite(loss).all()
    tdit = load_model(teacher_dir).dit
    student = load_model(out / "model").dit
    target = load_file(str(out / "ckpt" / "target.safetensors"))
    for key, value in student.state_dict().items():
        assert torch.equal(value, target[key]), key  # written out: the target (EMA) network
    train = load_file(str(next(out.glob("cache-*.safetensors"))))
    before = probe_loss(tdit, copy.deepcopy(tdit), tdit, train)
    after = probe_loss(student, student, tdit, train)
    assert after < 0.7 * before, (before, after)
    images = ReferencePipeline(load_model(out / "model"))("a red circle", steps=4, output="pt")
    assert images.shape == (1, 3, 128, 128) and torch.isfinite(images).all()


def test_init_student_starts_from_that_model(teacher_dir, tmp_path):
    """`--init-student`: the student and its target start from another model's DiT, not the teacher's
    (fine-tuning a distilled student after its teacher changed); at lr 0 the written target is that DiT."""
    from reference.train.common import write_model_folder

    other = load_model(teacher_dir).dit
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    write_model_folder(tmp_path / "other", teacher_dir, dit=other)
    out = tmp_path / "lcd"
    args = ["--teacher", str(teacher_dir), "--out", str(out), "--steps", "1", "--batch-size", "4"]
    lcd.main([*args, "--num-images", "8", "--lr", "0", "--init-student", str(tmp_path / "other"), "--no-progress"])
    written = load_model(out / "model").dit.state_dict()
    want, teacher_sd = other.state_dict(), load_model(teacher_dir).dit.state_dict()
    name = "transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(written[name], want[name]) and not torch.equal(written[name], teacher_sd[name])


def test_init_student_of_another_architecture_is_refused(teacher_dir, tmp_path):
    import dataclasses

    from reference.dit import PixArtDiT
    from reference.train.common import write_model_folder

    config = load_model(teacher_dir).dit.config
    smaller = PixArtDiT(dataclasses.replace(config, num_layers=config.num_layers - 1), text_len=120)
    write_model_folder(tmp_path / "other", teacher_dir, dit=smaller)
    args = ["--teacher", str(teacher_dir), "--out", str(tmp_path / "lcd"), "--steps", "1", "--batch-size", "4"]
    with pytest.raises(SystemExit, match="is not the teacher's"):
        lcd.main([*args, "--num-images", "8", "--init-student", str(tmp_path / "other"), "--no-progress"])
