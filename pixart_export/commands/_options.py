"""Option groups shared by `export` and `build` (one place, so the two never drift)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import UserError


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny", help="'tiny' (built in), a diffusers folder, or an official .pth")
    g.add_argument("--controlnet", default=None, help="ControlNet folder or official .pth ('tiny' for the built-in)")
    g.add_argument("--lcm-spacing", choices=["diffusers", "pixart"], default=None,
                   help="LCM timestep spacing (default: diffusers for diffusers folders, pixart for .pth)")
    e = p.add_argument_group("graphs")
    e.add_argument("--resolution", nargs="+", default=None, metavar="PX",
                   help="resolution buckets, each PX (square) or HxW, e.g. --resolution 512 512x768; one file "
                        "per bucket for the spatial graphs (default: the model's native size)")
    e.add_argument("--steps", type=int, default=4, help="LCM steps unrolled in denoiser_lcm<K> (1-8, default 4)")


def parse_resolutions(values: list[str] | None) -> list[tuple[int, int]] | None:
    if not values:
        return None
    out = []
    for v in values:
        m = re.fullmatch(r"(\d+)(?:[x,](\d+))?", v.strip())
        if not m:
            raise UserError(f"--resolution {v!r}: give PX or HxW, e.g. 512 or 512x768")
        h = int(m.group(1))
        out.append((h, int(m.group(2)) if m.group(2) else h))
    return list(dict.fromkeys(out))


def check_out(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path}: exists and is not a folder")
    return path


def read_control_image(path: Path | None):
    """The --control-image as a loaded PIL image (None when not given); one clear error if unreadable."""
    if path is None:
        return None
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except OSError as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from exc
    return image
