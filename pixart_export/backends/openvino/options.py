"""`build` options of the OpenVINO targets. `ov-cpu` has none; `ov-cpu-int8` has its calibration and
quality-gate group.

The options are a JSON-able dict (they enter the build key and are what `prepare.py` reads):

    {"calibration_prompts_file": "calibration_prompts.txt",  # recorded in the manifest
     "calibration_prompts": [...],       # the prompts themselves: editing the file rebuilds
     "transformer_prompts": 16,          # calibration prompts x K steps = one-step graph samples
     "denoiser_prompts": 16,             # samples of the unrolled graph (each holds K steps; 8 gave
                                         # 28.65 dB on tiny, 16 29.8, 30 29.76: `benchmarks/int8_quality.py`)
     "held_out_prompts": 2,              # the file's last prompts, never calibrated on: score candidates
     "control_scenes": 16,               # with a ControlNet: control scenes its graphs are calibrated on
     "control_held_out": 2,              # and the next scenes, held out: score its graphs
     "candidates": [{"name", "smooth_quant_alpha", "ignored_patterns"}, ...],  # NNCF settings tried
     "bf16_groups": true,                # on a bf16 CPU: measure bf16 per op group on the unrolled
                                         # denoiser (`precision.py`); false: all or nothing, as for the
                                         # one-step graph (a quicker build: the tests' engines)
     "gate": {"min_mean_psnr_db", "min_image_psnr_db", "min_mean_ssim", "pairs"},  # verify.QualityGate
     "cpu": [model, [isa flags]]}        # int8/bf16 choices are measured on this CPU: another rebuilds

`int8_options(**overrides)` makes one from Python (scripts, tests: fewer candidates and samples).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...calibration import CALIBRATION_PROMPTS, read_prompts
from ...errors import UserError
from ...verify import QualityGate

#: The quality gate needs at least this many held-out prompt/seed pairs.
MIN_QUALITY_PAIRS = 16
#: The quality gate's flags: (flag, `verify.QualityGate` field, type, metavar, help).
GATE_FLAGS = (
    (
        "--min-psnr",
        "min_mean_psnr_db",
        float,
        "DB",
        "fail the build below this mean image PSNR (default {default:g} dB)",
    ),
    (
        "--min-image-psnr",
        "min_image_psnr_db",
        float,
        "DB",
        "fail the build if any image is below this PSNR (default {default:g} dB)",
    ),
    ("--min-ssim", "min_mean_ssim", float, "S", "fail the build below this mean SSIM (default {default:g})"),
    (
        "--quality-pairs",
        "pairs",
        int,
        "N",
        f"held-out prompt/seed pairs the gate compares (default {{default}}, at least {MIN_QUALITY_PAIRS})",
    ),
)


def add_options(parser) -> None:
    """The ov-cpu-int8 group of `pixart-export build` (once per parser: both OpenVINO objects may ask)."""
    if "--min-psnr" in parser._option_string_actions:
        return
    gate = QualityGate()
    g = parser.add_argument_group(
        "openvino (ov-cpu-int8: calibration and quality gate, int8 images vs the fp32 reference)"
    )
    g.add_argument(
        "--calibration-prompts",
        type=Path,
        default=CALIBRATION_PROMPTS,
        metavar="FILE",
        help="prompts (one a line) the reference pipeline runs to collect calibration activations "
        "(default: the shipped pixart_export/data/calibration_prompts.txt)",
    )
    for name, field, kind, metavar, text in GATE_FLAGS:
        default = getattr(gate, field)
        g.add_argument(name, type=kind, default=default, metavar=metavar, help=text.format(default=default))


def options_from_args(backend, target, args) -> dict:
    """The JSON-able build options of `backend` from parsed arguments (defaults when `args` is None)."""
    if not backend.int8:
        return {}
    if args is None:
        return int8_options()
    gate = QualityGate(
        min_mean_psnr_db=args.min_psnr,
        min_image_psnr_db=args.min_image_psnr,
        min_mean_ssim=args.min_ssim,
        pairs=args.quality_pairs,
    )
    return int8_options(calibration_prompts=Path(args.calibration_prompts), gate=gate)


def int8_options(
    calibration_prompts: Path = CALIBRATION_PROMPTS,
    transformer_prompts: int = 16,
    denoiser_prompts: int = 16,
    held_out_prompts: int = 2,
    control_scenes: int = 16,
    control_held_out: int = 2,
    candidates=None,
    gate: QualityGate | None = None,
    bf16_groups: bool = True,
) -> dict:
    """The ov-cpu-int8 options dict (see the module docstring); UserError for values the build cannot use.

    `candidates`: `quantize.QuantSettings` (default `quantize.CANDIDATES`, tried in order, the lowest
    error wins; a single one is used as it is, without a trial).
    """
    from .quantize import CANDIDATES
    from .runner import cpu_info

    gate = gate or QualityGate()
    cpu = cpu_info()
    path = Path(calibration_prompts)
    if not path.is_file():
        raise UserError(f"--calibration-prompts {path}: no such file")
    options = {
        "calibration_prompts_file": path.name,
        "calibration_prompts": read_prompts(path),
        "transformer_prompts": int(transformer_prompts),
        "denoiser_prompts": int(denoiser_prompts),
        "held_out_prompts": int(held_out_prompts),
        "control_scenes": int(control_scenes),
        "control_held_out": int(control_held_out),
        "candidates": [_settings_dict(c) for c in (CANDIDATES if candidates is None else candidates)],
        "bf16_groups": bool(bf16_groups),
        "gate": dataclasses.asdict(gate),
        "cpu": [cpu["model"], cpu["isa"]],
    }
    check(options)
    return options


def _settings_dict(settings) -> dict:
    d = dataclasses.asdict(settings)
    d["ignored_patterns"] = list(d["ignored_patterns"])
    return d


def check(options: dict) -> None:
    """UserError for options an int8 build cannot run with (before anything expensive starts)."""
    gate = options["gate"]
    if gate["pairs"] < MIN_QUALITY_PAIRS:
        raise UserError(
            f"--quality-pairs {gate['pairs']}: the int8 quality gate needs at least {MIN_QUALITY_PAIRS} pairs"
        )
    if not options["candidates"]:
        raise UserError("ov-cpu-int8: no quantisation candidates given")
    need = max(options["transformer_prompts"], options["denoiser_prompts"]) + options["held_out_prompts"]
    if min(options["transformer_prompts"], options["denoiser_prompts"], options["held_out_prompts"]) < 1:
        raise UserError("ov-cpu-int8: transformer, denoiser and held-out prompt counts must be at least 1")
    if min(options["control_scenes"], options["control_held_out"]) < 1:
        raise UserError("ov-cpu-int8: ControlNet calibration and held-out scene counts must be at least 1")
    if len(options["calibration_prompts"]) < need:
        raise UserError(
            f"{options['calibration_prompts_file']}: {len(options['calibration_prompts'])} calibration "
            f"prompts, need at least {need}"
        )


def gate_from(options: dict) -> QualityGate:
    return QualityGate(**options["gate"])
