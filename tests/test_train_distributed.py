"""reference/train (smoke): a training entry point runs data-parallel unchanged, 2 CPU processes (gloo)
under `torchrun`; the two replicas end with identical weights, and the run follows the same steps as
one process with the same global batch (same loss, weights equal to float rounding)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from reference.tiny import TINY_VAE
from reference.train import teacher
from reference.train.common import LossLog

ROOT = Path(__file__).resolve().parents[1]


def data_parallel_matches_one_process(
    tmp_path, stage, args: list[str], steps: int, weights: list[str], timeout: int
) -> None:
    """Run `reference.train.<stage>` under torchrun (2 gloo processes) and in this process with the same
    arguments; assert the replicas agree and the losses and `weights` checkpoints match one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    run = subprocess.run(
        [*launch, stage.__name__, *args, "--out", str(tmp_path / "ddp")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    replicas = json.loads((tmp_path / "ddp" / "replicas.json").read_text())
    assert replicas["processes"] == 2
    assert len(set(replicas["sha256"])) == 1

    stage.main([*args, "--out", str(tmp_path / "single")])
    ddp_loss = LossLog(tmp_path / "ddp", ["loss"], steps, enabled=False).read()["loss"]
    one_loss = LossLog(tmp_path / "single", ["loss"], steps, enabled=False).read()["loss"]
    assert len(one_loss) == steps
    np.testing.assert_allclose(ddp_loss, one_loss, rtol=1e-4)
    for name in weights:
        a = load_file(str(tmp_path / "ddp" / "ckpt" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "single" / "ckpt" / f"{name}.safetensors"))
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-4, (name, worst)


def test_two_process_teacher_replicas_agree_and_match_one_process(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(str(tmp_path / "vae"), safe_serialization=True)
    args = [
        "--vae",
        str(tmp_path / "vae"),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--num-images",
        "16",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--no-progress",
    ]
    data_parallel_matches_one_process(tmp_path, teacher, args, steps=4, weights=["dit"], timeout=120)


def test_two_process_lcd_replicas_agree_and_match_one_process(tmp_path):
    """The LCD stage under torchrun (2 gloo processes, the on-the-fly scene stream): identical student
    weights on both replicas, and the same losses and weights as one process with the same global batch."""
    from reference.tiny import build_tiny
    from reference.train import lcd

    teacher_dir = build_tiny(tmp_path / "teacher")  # random weights: the stage's arithmetic is what is tested
    args = [
        "--teacher",
        str(teacher_dir),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--window",
        "2",
        "--chunk",
        "8",
        "--refresh",
        "2",
        "--lr",
        "1e-3",
        "--no-progress",
    ]
    data_parallel_matches_one_process(tmp_path, lcd, args, steps=3, weights=["student", "target"], timeout=180)


def test_two_process_controlnet_replicas_agree_and_match_one_process(tmp_path):
    """The ControlNet stage under torchrun: the fixed cached set is built once (by the main process),
    the eval curve is measured by the main process alone, and both replicas end equal."""
    from reference.train import controlnet

    args = [
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--num-images",
        "8",
        "--lr",
        "1e-3",
        "--warmup",
        "1",
        "--copies",
        "1",
        "--eval-every",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    data_parallel_matches_one_process(tmp_path, controlnet, args, steps=3, weights=["controlnet"], timeout=180)
