"""Errors the CLI reports as one line (no traceback): the user can act on each of them."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or an environment that cannot do what was asked; the message says what to do."""
