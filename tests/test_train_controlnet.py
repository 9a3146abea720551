"""reference/train/controlnet.py and reference/controlnet_unet.py (smoke): a fresh ControlNet of either
design leaves the base exactly unchanged, the two designs have equal size, training moves the zero
projections and lowers the loss while the base stays frozen, a resumed run equals an uninterrupted
one, and the written folder loads (also onto the validated student, not onto another base)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reference.errors import ModelError
from reference.loading import TINY_DIR, base_fingerprint, load_controlnet, load_dit, load_model, save_controlnet
from reference.train import controlnet as train_cn
from reference.train.common import LossLog


@pytest.fixture(scope="module")
def teacher():
    return load_model("tiny-teacher")


def _inputs(dit, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    c = torch.randn(batch, 4, 16, 16, generator=g)
    e = torch.randn(batch, 120, dit.config.caption_channels, generator=g)
    return x, torch.tensor([10.0, 700.0][:batch]), e, torch.ones(batch, 120, dtype=torch.int64), c


@pytest.mark.parametrize("design,copies", [("transformer", 1), ("transformer", 3), ("unet", 3)])
def test_fresh_controlnet_is_the_base(teacher, design, copies):
    fused, net = train_cn.build(teacher.dit, design, copies)
    x, t, e, m, c = _inputs(teacher.dit)
    with torch.no_grad():
        assert torch.equal(fused(x, t, e, m, c), teacher.dit(x, t, e, m))


def test_unet_design_matches_transformer_size(teacher):
    _, t3 = train_cn.build(teacher.dit, "transformer", 3)
    _, u3 = train_cn.build(teacher.dit, "unet", 3)
    assert sum(p.numel() for p in t3.parameters()) == sum(p.numel() for p in u3.parameters())
    with pytest.raises(ValueError, match="1..3"):
        train_cn.build(teacher.dit, "unet", 4)


def test_unet_design_feeds_the_mirrored_blocks(teacher):
    """Copy i's residual enters base block L-1-i: with only copy 0's projection non-zero, the blocks
    before the last run exactly as in the base."""
    fused, net = train_cn.build(teacher.dit, "unet", 3)
    with torch.no_grad():
        net[0].before_proj.weight.normal_(0, 0.05)
        net[0].after_proj.weight.normal_(0, 0.05)
    seen = {}
    hooks = [
        block.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].clone()))
        for i, block in enumerate(teacher.dit.transformer_blocks)
    ]
    x, t, e, m, c = _inputs(teacher.dit)
    with torch.no_grad():
        fused(x, t, e, m, c)
        controlled = dict(seen)
        teacher.dit(x, t, e, m)
    for h in hooks:
        h.remove()
    for i in range(5):
        assert torch.equal(controlled[i], seen[i]), i
    assert not torch.equal(controlled[5], seen[5])


def run(out, steps, *extra):
    train_cn.main(
        [
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--batch-size",
            "4",
            "--num-images",
            "16",
            "--lr",
            "1e-3",
            "--warmup",
            "2",
            "--ckpt-every",
            "3",
            "--eval-every",
            "3",
            "--eval-scenes",
            "2",
            "--eval-steps",
            "2",
            "--copies",
            "2",
            "--no-progress",
            *extra,
        ]
    )


def test_training_moves_only_the_controlnet_and_resumes(tmp_path, teacher):
    before = {k: v.clone() for k, v in teacher.dit.state_dict().items()}
    full, parts = tmp_path / "full", tmp_path / "parts"
    run(full, 6, "--cache-dir", str(tmp_path / "cache"))
    run(parts, 3, "--cache-dir", str(tmp_path / "cache"))
    run(parts, 6, "--cache-dir", str(tmp_path / "cache"))
    a = load_file(str(full / "controlnet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(parts / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["controlnet.1.after_proj.weight"].abs().max()) > 0  # the zero layers learned
    config = json.loads((full / "controlnet" / "config.json").read_text())
    base = load_dit(TINY_DIR / "teacher" / "transformer")
    assert config["base_sha256"] == base_fingerprint(base)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # base untouched on disk
    evals = (full / "eval.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in evals] == ["step", "0", "3", "6"]
    assert len(LossLog(full, ["loss"], 6, enabled=False).read()["loss"]) == 6
    summary = json.loads((full / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["trainable_parameters"] > 0


def test_validated_bases_load_and_others_are_refused(tmp_path, teacher):
    from reference.config import ControlNetConfig
    from reference.controlnet import PixArtControlNet

    student = load_dit(TINY_DIR / "transformer")
    net = PixArtControlNet(teacher.dit, ControlNetConfig(num_copies=2))
    save_controlnet(net, tmp_path / "cn", teacher.dit, validated=(student,))
    load_controlnet(tmp_path / "cn", teacher.dit)
    load_controlnet(tmp_path / "cn", student)
    other = load_dit(TINY_DIR / "transformer")
    with torch.no_grad():
        other.proj_out.bias.add_(1e-3)
    with pytest.raises(ModelError, match="another base model"):
        load_controlnet(tmp_path / "cn", other)
    raw = json.loads((tmp_path / "cn" / "config.json").read_text())
    raw["validated_sha256"] = "not a list"
    (tmp_path / "cn" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="validated_sha256"):
        load_controlnet(tmp_path / "cn", student)


def test_eval_sampler_runs_both_samplers(teacher):
    fused, _ = train_cn.build(teacher.dit, "transformer", 1)
    ev = train_cn.EvalSet(teacher, "edge", 2)
    null = teacher.dit.null_caption.detach()
    for sampler in ("ddim", "lcm"):
        images = train_cn.sample(
            fused, teacher.vae, ev.embeds, ev.masks, ev.control_latents, 1.0, sampler, 2, 0, null=null
        )
        assert images.shape == (2, 128, 128, 3) and images.dtype.name == "uint8"


@pytest.mark.parametrize("sampler", ["ddim", "lcm"])
def test_eval_sampler_matches_the_reference_pipeline(teacher, sampler):
    """The training/benchmark sampler (fused model, one control per caption) draws what the reference
    pipeline draws (split residuals, a list of control images), with guidance on both branches for DDIM."""
    import dataclasses

    from PIL import Image

    from reference.pipeline import ReferencePipeline
    from reference.train import control

    fused, net = train_cn.build(teacher.dit, "transformer", 2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "proj" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ev = train_cn.EvalSet(teacher, "edge", 2)
    got = train_cn.sample(
        fused,
        teacher.vae,
        ev.embeds,
        ev.masks,
        ev.control_latents,
        0.8,
        sampler,
        3,
        seed=5,
        guidance=5.5,
        null=teacher.dit.null_caption.detach(),
        lcm_spacing=teacher.lcm_spacing,
    )
    model = dataclasses.replace(teacher, controlnet=net.eval())
    pipe = ReferencePipeline(model)
    same = dict(steps=3, seed=5, sampler=sampler, guidance_scale=5.5, ddim_spacing="trailing", output="pt")
    images = [Image.fromarray(c) for c in ev.controls]
    want = pipe(ev.captions, control_image=images, conditioning_scale=0.8, **same)
    diff = np.abs(got.astype(int) - control.to_uint8(want).astype(int))
    assert diff.max() <= 1  # fused vs split residuals: float32 rounding, at most one level after rounding
    plain = pipe(ev.captions, **same)
    zero = pipe(ev.captions, control_image=images, conditioning_scale=0.0, **same)
    assert torch.equal(zero, plain)  # scale 0 adds exact zeros


def test_shipped_controlnet_is_trained_and_scale_zero_is_the_plain_image():
    """The shipped `--controlnet tiny` is trained (non-zero projections, valid for the student it ships
    with), and at conditioning scale 0 it gives exactly the image without it."""
    from PIL import Image

    from reference.pipeline import ReferencePipeline
    from reference.train import control

    model = load_model("tiny", controlnet="tiny")
    assert all(float(m.after_proj.weight.abs().max()) > 0 for m in model.controlnet.controlnet)
    controls, _, captions, _ = control.control_set(train_cn.EVAL_SEED, 2, "edge", start=3000)
    pipe = ReferencePipeline(model)
    images = [Image.fromarray(c) for c in controls]
    plain = pipe(captions, seed=3, output="pt")
    zero = pipe(captions, seed=3, control_image=images, conditioning_scale=0.0, output="pt")
    controlled = pipe(captions, seed=3, control_image=images, output="pt")
    assert torch.equal(zero, plain)
    assert float((controlled - plain).abs().max()) > 0.1  # trained: the control moves pixels


def test_free_layout_scenes_join_the_training_set_and_the_curve_reads_placement(tmp_path, teacher):
    """--free-layout 0.5: half the fixed set are layout.py scenes (their captions appended to the caption
    table), and eval.csv gains a placement column measured on held-out layouts."""
    from safetensors.torch import load_file as load_tensors

    from reference.train import data

    run(tmp_path / "run", 2, "--free-layout", "0.5", "--cache-dir", str(tmp_path / "cache"))
    (cache,) = (tmp_path / "cache").glob("cache-*-free0.5.safetensors")
    ids = load_tensors(str(cache))["caption_ids"]
    known = len(data.training_captions())
    assert (ids[:8] < known).all() and (ids[8:] >= known).any()  # relation scenes first, then free layouts
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,control_iou,placement" and len(rows) == 2
    assert 0.0 <= float(rows[1].split(",")[2]) <= 1.0
