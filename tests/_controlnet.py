"""A ControlNet for the tests whose residuals are not zero.

The shipped tiny ControlNet is zero-initialised and untrained (as the design says until one is trained),
so it leaves every image unchanged: a check of the ControlNet path against it would pass whether that
path is right or wrong. The tests use this copy instead: the same blocks with seeded N(0, 0.02)
projections, written beside the test run with the base fingerprint of the shipped student. Random
weights are a test fixture here, never shipped.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=None)
def nonzero_controlnet() -> str:
    """Path (as a string, like a CLI argument) of the non-zero test ControlNet for the shipped tiny."""
    import torch

    from reference.loading import TINY_DIR, load_controlnet, load_dit, save_controlnet

    root = Path(tempfile.mkdtemp(prefix="pixart-export-test-controlnet-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    base = load_dit(TINY_DIR / "transformer")
    net = load_controlnet(TINY_DIR / "controlnet", base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "before_proj" in name or "after_proj" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    save_controlnet(net, root / "controlnet", base)
    return str(root / "controlnet")


def shipped_controlnet_is_trained() -> bool:
    """Whether the shipped tiny ControlNet does anything (a zero-initialised, untrained one returns zero
    residuals: every image unchanged, so a ControlNet check on it proves nothing)."""
    import numpy as np
    from safetensors.numpy import load_file

    from reference.loading import TINY_DIR

    weights = load_file(str(TINY_DIR / "controlnet" / "diffusion_pytorch_model.safetensors"))
    return any(np.abs(v).max() > 0 for k, v in weights.items() if "after_proj" in k)


@functools.lru_cache(maxsize=None)
def controlnet_under_test() -> str:
    """The ControlNet the int8 ControlNet tests build with: the shipped `tiny` once it is trained, until
    then the non-zero test ControlNet (`nonzero_controlnet`)."""
    return "tiny" if shipped_controlnet_is_trained() else nonzero_controlnet()
