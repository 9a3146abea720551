"""The ControlNet the tests build with: the shipped, trained `--controlnet tiny`.

Until issue #14 the shipped tiny ControlNet was zero-initialised: it left every image unchanged, so a
check of the ControlNet path against it passed whether that path was right or wrong, and the tests
used a copy with seeded random projections. It is trained now, so every parity and quality gate that
uses a ControlNet is tested on the weights users get; `controlnet_under_test` refuses to hand out a
ControlNet whose residuals are all zero, so that blind spot cannot come back unnoticed.
"""

from __future__ import annotations

import functools


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
    """`--controlnet` for the tests: "tiny", the shipped trained ControlNet."""
    assert shipped_controlnet_is_trained(), "the shipped tiny ControlNet is untrained: its checks would prove nothing"
    return "tiny"
