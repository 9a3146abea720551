"""Errors the CLI reports as one line (no traceback), each with its exit code.

Exit codes: 0 ok; 1 a gate failed (parity or quality below tolerance: `GateFailed`); 2 bad input or
usage (`UserError`: the message says what to do); 3 an internal error (a bug: the traceback is
shown with `-v`).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an environment that cannot do what was asked; the message says what to do."""

    exit_code = 2


class GateFailed(Exception):
    """A measured figure is beyond its tolerance (parity, precision or quality gate); nothing was installed."""

    exit_code = 1
