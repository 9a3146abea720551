"""Option groups and argument checks shared by the subcommands (one place, so they never drift).

One resolution syntax everywhere: `512` (square) or `512x768` (HEIGHTxWIDTH).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from ..errors import UserError


def resolution(value: str) -> tuple[int, int]:
    """`512` -> (512, 512); `512x768` -> (512, 768); anything else: a usage error naming the syntax."""
    m = re.fullmatch(r"\s*(\d+)(?:\s*[xX,]\s*(\d+))?\s*", value)
    if not m:
        raise argparse.ArgumentTypeError(f"{value!r}: give PX or HEIGHTxWIDTH, e.g. 512 or 512x768")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: sizes must be positive")
    return h, w


def finite_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r}: give a finite number")
    return number


def seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 0 <= number < 2**63:
        raise argparse.ArgumentTypeError(f"{value}: a seed is an integer from 0 to 2**63-1")
    return number


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny", help="'tiny' (built in), a diffusers folder, or an official .pth")
    g.add_argument("--controlnet", default=None, help="ControlNet folder or official .pth ('tiny' for the built-in)")
    g.add_argument(
        "--lcm-spacing",
        choices=["diffusers", "pixart"],
        default=None,
        help="LCM timestep spacing (default: diffusers for diffusers folders, pixart for .pth)",
    )


def add_graph_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("graphs")
    g.add_argument(
        "--resolution",
        nargs="+",
        type=resolution,
        default=None,
        metavar="PX|HxW",
        help="resolution buckets, each PX (square) or HxW, e.g. --resolution 512 512x768; one file "
        "per bucket for the spatial graphs (default: the model's native size)",
    )
    g.add_argument("--steps", type=int, default=4, help="LCM steps unrolled in denoiser_lcm<K> (1-8, default 4)")


def add_image_options(p: argparse.ArgumentParser, what: str) -> None:
    """The options of commands that draw: prompt, seed, resolution, control image, output."""
    p.add_argument("--prompt", required=True, help="text to draw")
    p.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="noise seed; the same seed gives the same image on every backend (default 0)",
    )
    p.add_argument(
        "--resolution",
        type=resolution,
        default=None,
        metavar="PX|HxW",
        help=f"image size, PX (square) or HxW, e.g. 512 or 512x768 (default: {what})",
    )
    p.add_argument("--control-image", type=Path, default=None, help="condition image (needs a ControlNet)")
    p.add_argument("--conditioning-scale", type=finite_float, default=1.0, help="ControlNet residual scale (default 1)")
    p.add_argument("--out", type=Path, default=Path("image.png"), help="output PNG path (default image.png)")


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")


def emit_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UserError("empty prompt: give the text to draw with --prompt")


def check_steps(steps: int, sampler: str = "lcm") -> None:
    if steps < 1 or (sampler == "lcm" and steps > 8):
        raise UserError(
            f"--steps {steps}: LCM sampling takes 1 to 8 steps" if sampler == "lcm" else "--steps must be at least 1"
        )


def check_png_out(path: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: the output is a PNG, name it *.png")
    if path.exists() and path.is_dir():
        raise UserError(f"--out {path}: is a folder; give a file name ending in .png")
    return path


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
    except (OSError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from exc
    return image


def save_png(image, path: Path) -> None:
    """Write `image` to `path` through a temporary file beside it (never a half-written PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def subcommand(sub: argparse._SubParsersAction, doc: str, name: str, help: str) -> argparse.ArgumentParser:
    """The parser of one subcommand; its `--help` text is the command module's docstring (one text for
    readers of the code and users of the command)."""
    return sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
