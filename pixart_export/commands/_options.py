"""Option groups and argument checks shared by the subcommands (one place, so they never drift).

One resolution syntax everywhere: `512` (square) or `512x768` (HEIGHTxWIDTH).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
from pathlib import Path

from ..errors import UserError
from ..manifest import engine_folder_around, read_regular

#: The largest control image file read (PIL then also refuses more than Image.MAX_IMAGE_PIXELS pixels).
MAX_CONTROL_BYTES = 256 * 2**20


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


def float_range(low: float, high: float):
    """An argparse type: a finite number in [low, high] (NaN and inf never reach the numerics)."""

    def parse(value: str) -> float:
        number = finite_float(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value}: give a number from {low:g} to {high:g}")
        return number

    parse.__name__ = "number"
    return parse


def int_range(low: int, high: int, what: str = "an integer"):
    """An argparse type: an integer in [low, high]."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value}: {what} from {low} to {high}")
        return number

    parse.__name__ = "integer"
    return parse


#: Bounds of the values every command shares. Why these: a ControlNet residual scale beyond 10 or a
#: CFG scale beyond 50 only saturates the image; 256 images per call bounds the noise drawn up front
#: (the noise of a seed is drawn for the whole batch at once, as the reference does).
CONDITIONING_SCALE = (0.0, 10.0)
GUIDANCE_SCALE = (0.0, 50.0)
MAX_IMAGES = 256
MAX_THREADS = 1024

seed = int_range(0, 2**63 - 1, "a seed is an integer")


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
    p.add_argument(
        "--invert-control",
        action="store_true",
        help="invert the control image's levels first (white-on-black edges such as HED's, for a ControlNet "
        "trained on black on white; the ControlNet's control_convention.json says which it expects)",
    )
    p.add_argument(
        "--conditioning-scale",
        type=float_range(*CONDITIONING_SCALE),
        default=1.0,
        help="ControlNet residual scale, %g to %g (default 1)" % CONDITIONING_SCALE,
    )
    p.add_argument("--out", type=Path, default=Path("image.png"), help="output PNG path (default image.png)")


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")


def emit_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UserError("empty prompt: give the text to draw with --prompt")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("the prompt is not valid UTF-8 text (check the terminal's encoding)") from None


def check_steps(steps: int, sampler: str = "lcm") -> None:
    if steps < 1 or (sampler == "lcm" and steps > 8):
        raise UserError(
            f"--steps {steps}: LCM sampling takes 1 to 8 steps" if sampler == "lcm" else "--steps must be at least 1"
        )


def check_png_out(path: Path, engine: Path | None = None) -> Path:
    """An image path we may write: *.png, not a folder, in an existing folder, and not inside an engine
    folder (an unlisted file there would make the engine refuse to load)."""
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: the output is a PNG, name it *.png")
    if not path.is_absolute():
        try:
            os.getcwd()
        except FileNotFoundError:
            raise UserError(
                f"--out {path}: the working folder no longer exists; cd to a folder or give an absolute --out"
            ) from None
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; give a file name ending in .png")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: no such folder {path.parent}; create it first")
    folder = engine_folder_around(path)
    if folder is not None or (engine is not None and _within(path, engine)):
        raise UserError(
            f"--out {path}: inside the engine folder {folder or engine}; writing there would break its "
            "file list: write the image elsewhere"
        )
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
    try:  # writable (permissions, a read-only file system), before any inference runs
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {path}: {path.parent} is not writable ({exc.strerror or exc})") from None
    return path


def check_free_space(paths: list[Path], height: int, width: int) -> None:
    """Room for the images on the file system of `paths` (a PNG is at most its raw pixels plus a little),
    checked before the inference runs."""
    need = len(paths) * (height * width * 3 + height + 4096)
    try:
        st = os.statvfs(paths[0].parent)
    except (OSError, AttributeError):  # no statvfs (Windows): the write itself will say
        return
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise UserError(
            f"--out {paths[0]}: {free} bytes free on its file system, {len(paths)} PNG(s) of {height}x{width} "
            f"need up to {need}: free some space or choose another --out"
        )


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def check_out(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path}: exists and is not a folder")
    return path


def read_control_image(path: Path | None):
    """The --control-image as a loaded PIL image (None when not given); one clear error if unreadable."""
    if path is None:
        return None
    import warnings

    from PIL import Image

    data = read_regular(path, MAX_CONTROL_BYTES, lambda m: UserError(f"--control-image {m}")) if path.exists() else b""
    try:
        with warnings.catch_warnings():
            # PIL only warns between its pixel limit and twice that; both are refused here. Image.open
            # reads the header only, so the pixel count is checked before any pixel memory is allocated.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if data else path)
            if more_than_8_bits(image):
                raise UserError(
                    f"--control-image {path}: {image.mode} with more than 8 bits a sample; control images are "
                    "8-bit (convert it first, e.g. PIL: image.convert('RGB') after scaling to 0..255)"
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"--control-image {path}: too large ({exc}); give an image near the output size") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"--control-image {path}: not a readable image ({exc})") from None
    return image


def read_checked_control(args: argparse.Namespace, convention_folder: Path | None):
    """`read_control_image`, inverted with --invert-control, then checked against the convention recorded
    in `convention_folder` (`control_check`): one warning line naming the fix when it looks inverted."""
    image = read_control_image(args.control_image)
    if image is None:
        return None
    from .. import control_check
    from ..progress import LOGGER

    if args.invert_control:
        image = control_check.invert(image)
    if convention_folder is not None and convention_folder.is_dir():
        if warning := control_check.check(image, control_check.read_convention(convention_folder)):
            LOGGER.warning(f"--control-image {args.control_image}: {warning}")
    return image


def more_than_8_bits(image) -> bool:
    """Whether an opened (not yet loaded) PIL image has more than 8 bits a sample: 16-bit and 32-bit
    modes, a 16-bit PNG that PIL would narrow to RGB, a PPM whose maxval is not 255. One rule with the C++
    runtime (which reads 8-bit PPMs only): such images are refused, never clipped or narrowed silently."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return True
    for tile in image.tile:
        args = tile[3]
        raw = args[0] if isinstance(args, tuple) and args else args
        if (isinstance(raw, str) and ";16" in raw) or tile[0] == "ppm":
            return True
    return False


def save_png(image, path: Path) -> None:
    """Write `image` to `path` through a temporary file beside it (never a half-written PNG); a full disk
    or a read-only file system is the user's to fix (exit 2, the errno text)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format="PNG")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot be written ({exc.strerror or exc}); nothing was left there") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def subcommand(sub: argparse._SubParsersAction, doc: str, name: str, help: str) -> argparse.ArgumentParser:
    """The parser of one subcommand; its `--help` text is the command module's docstring (one text for
    readers of the code and users of the command)."""
    return sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
