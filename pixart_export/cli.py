"""`pixart-export`: the command line. Every subcommand lives in `pixart_export.commands.<name>`.

Imports stay light here so `--help` works on any host: torch, onnxruntime, openvino and tensorrt are
imported by the subcommands that use them. Errors a user can fix print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import UserError

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = ["generate", "info", "export", "build", "run", "parity", "targets",
            "check", "compile"]  # check/compile: TensorRT bundles (issue #6)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixart-export",
        description="Export PixArt-delta (LCM 4-step DiT + ControlNet-Transformer) to ONNX, OpenVINO and "
                    "TensorRT engines, with parity reports against the PyTorch reference.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UserError]
    # Only if the reference was imported (a ModelError can exist only then); importing it here would
    # pull in torch, which the runtime commands must not need.
    if "reference.errors" in sys.modules:
        from reference.errors import ModelError
        errors.append(ModelError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub is reachable, and nothing may download
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pixart-export: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only the user-facing kinds are caught, the rest re-raised
        if isinstance(exc, _user_errors()):
            print(f"pixart-export: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
