"""`pixart-export`: the command line. Every subcommand lives in `pixart_export.commands.<name>`.

Imports stay light here so `--help` works on any host: torch, onnxruntime, openvino and tensorrt are
imported by the subcommands that use them.

Exit codes: 0 ok; 1 a gate failed (parity, precision or quality below tolerance); 2 bad input or
usage (one line saying what to do); 3 an internal error (one line; the traceback with `-v`);
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Progress and logs go to stderr (`-q`: warnings
only, `-v`: debug); results and `--json` documents go to stdout.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
import threading
import traceback

from . import __version__
from .errors import GateFailed, UserError

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = ["generate", "info", "export", "build", "run", "serve", "parity", "targets", "check", "compile"]

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143


class Terminated(BaseException):
    """SIGTERM, raised where the program is so every `finally` runs: a build's staging folder is removed
    and nothing half-written stays behind (a bare SIGTERM would end the process without unwinding)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixart-export",
        description="Export PixArt-delta (LCM 4-step DiT + ControlNet-Transformer) to ONNX Runtime, OpenVINO and "
        "TensorRT engine folders, with parity reports against the PyTorch reference.",
        epilog="exit codes: 0 ok, 1 a gate failed (figures beyond tolerance), 2 bad input or usage, "
        "3 internal error (rerun with -v for the traceback)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (no progress)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("pixart_export")
    logger.handlers[:] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


#: OS errors that the host causes, not this tool (a full disk, a read-only file system, permissions,
#: too many open files): the user's to fix, so exit 2 with the path and the errno text.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EMFILE,
    errno.ENFILE,
}


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
    _setup_logging(args.verbose, args.quiet)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return _run(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pixart-export: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("pixart-export: terminated (SIGTERM); nothing was installed", file=sys.stderr)
        return EXIT_TERMINATED
    except GateFailed as exc:
        print(f"pixart-export: gate failed: {exc}", file=sys.stderr)
        return EXIT_GATE
    except Exception as exc:  # noqa: BLE001 - every error ends as one line and an exit code
        if isinstance(exc, _user_errors()):
            print(f"pixart-export: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"pixart-export: error: {where}{exc.strerror or exc} (the host's, not a bug)", file=sys.stderr)
            return EXIT_USAGE
        if args.verbose:
            traceback.print_exc()
        print(
            f"pixart-export: internal error: {type(exc).__name__}: {exc} (a bug: rerun with -v for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
