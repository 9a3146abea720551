"""reference/train/common.py SceneStream: the on-the-fly scene stream is a function of (seed, step) only:
a window reached step by step equals one rebuilt at that step (resume), rendering in worker processes
equals rendering inline, and the window slides by one chunk every `refresh` steps."""

from __future__ import annotations

import numpy as np
import torch

from reference.tiny import TINY_VAE
from reference.train import common, data


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**TINY_VAE).eval()


def test_window_depends_on_step_only_and_slides():
    vae = _vae()
    walked = common.SceneStream(7, 32, vae, "cpu", window=2, chunk=4, refresh=3)
    for step in range(8):
        walked.advance(step)
    assert sorted(walked.slots.values()) == [2, 3]  # step 7: chunks 7 // 3 = 2 and 3
    assert walked.rendered == 4 * 4  # chunks 0..3, each rendered once
    rebuilt = common.SceneStream(7, 32, vae, "cpu", window=2, chunk=4, refresh=3, workers=1)
    try:
        rows = np.arange(8)
        a, ids_a = walked.batch(7, rows)
        b, ids_b = rebuilt.batch(7, rows)
    finally:
        rebuilt.close()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(ids_a, ids_b)
    captions = data.training_captions()
    slot_of_chunk_2 = 2 % 2
    for j in range(4):  # the rows of chunk 2 hold stream scenes 8..11, captioned as the stream says
        _, text, _ = data.sample(7, 8 + j, 32)
        assert captions[int(walked.caption_ids[slot_of_chunk_2 * 4 + j])] == text


def test_teacher_on_the_stream_resumes_exactly(tmp_path):
    """A teacher run on the stream stopped and resumed (the window rebuilt at the resumed step) equals an
    uninterrupted one, weights and loss log."""
    from safetensors.torch import load_file

    from reference.loading import TINY_DIR
    from reference.train import teacher
    from reference.train.common import LossLog

    def run(out, steps):
        teacher.main(
            [
                "--vae",
                str(TINY_DIR / "vae"),
                "--base",
                str(TINY_DIR),
                "--out",
                str(out),
                "--steps",
                str(steps),
                "--batch-size",
                "4",
                "--window",
                "2",
                "--chunk",
                "8",
                "--refresh",
                "2",
                "--warmup",
                "2",
                "--ckpt-every",
                "100",
                "--no-progress",
            ]
        )

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 3)
    run(tmp_path / "resumed", 4)
    a = load_file(str(tmp_path / "straight" / "ckpt" / "dit.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "ckpt" / "dit.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    one = LossLog(tmp_path / "straight", ["loss"], 4, enabled=False).read()
    two = LossLog(tmp_path / "resumed", ["loss"], 4, enabled=False).read()
    assert two["step"].tolist() == [1, 2, 3, 4] and np.array_equal(one["loss"], two["loss"])
