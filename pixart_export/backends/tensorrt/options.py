"""Command-line options of the TensorRT targets: the `build` group, and the arguments of `check` and
`compile` (the two TensorRT-only commands)."""

from __future__ import annotations

from pathlib import Path

from ...manifest import Precision
from ..base import flag
from .loop import PLANS
from .prepare import CALIBRATION_COUNT


def add_options(parser) -> None:
    hint = "ship fp16 graphs only, no int8/fp8 Q/DQ graphs (the targets with int8/fp8 ship them by default)"
    flag(parser, "tensorrt (trt-*)", "--trt-fp16-only", hint)
    parser.add_argument_group("tensorrt (trt-*) K steps").add_argument(
        "--trt-k-step-plan",
        choices=PLANS,
        default=PLANS[0],
        help="how the K LCM steps run: loop (the one-step transformer engine K times in one CUDA graph, "
        "weights once; default) or unrolled (the denoiser_lcm{K} engine); the manifest records it",
    )


def options_from_args(backend, target, args) -> dict:
    """JSON-able build options (they enter the build key): int8 graphs or not, how many calibration
    prompts, the K-step plan, and the target's TensorRT facts (profile, versions) the graphs are checked against."""
    fp16_only = bool(getattr(args, "trt_fp16_only", False))
    int8 = Precision.INT8 in target.trt.prepared and not fp16_only
    fp8 = Precision.FP8 in target.trt.prepared and not fp16_only
    plan = getattr(args, "trt_k_step_plan", None) or PLANS[0]
    return {
        "int8": int8,
        "fp8": fp8,
        "calib_prompts": CALIBRATION_COUNT,
        "trt": repr(target.trt),
        "k_step_plan": plan,
    }


def add_check_arguments(parser, targets: list[str]) -> None:
    parser.add_argument(
        "--target", required=True, choices=targets, metavar="TARGET", help=f"one of: {', '.join(targets)}"
    )
    parser.add_argument(
        "folder", type=Path, metavar="DIR", help="a bundle from `build --target trt-*`, or a folder of .onnx files"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def add_compile_arguments(parser) -> None:
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle folder")
    parser.add_argument(
        "--only",
        choices=[str(p) for p in (Precision.FP16, Precision.INT8, Precision.FP8, Precision.BF16, Precision.FP32)],
        action="append",
        default=None,
        help="build only these precisions (repeatable; default all in the bundle)",
    )
    parser.add_argument(
        "--both-plans",
        action="store_true",
        help="build the engines of both K-step plans (loop and unrolled) to compare them; by default only "
        "those of the plan the bundle records",
    )
