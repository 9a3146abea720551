"""Progress output for long work: tqdm bars and log lines on stderr, so stdout stays clean for results.

The CLI sets the level (`-q` warnings only, `-v` debug); library callers get the `logging` defaults
(nothing printed unless they configure logging) and may pass their own `log` function.
"""

from __future__ import annotations

import contextlib
import logging
import sys

LOGGER = logging.getLogger("pixart_export")


def log(message: str) -> None:
    LOGGER.info(message)


def bars_enabled() -> bool:
    return LOGGER.getEffectiveLevel() <= logging.INFO and sys.stderr.isatty()


@contextlib.contextmanager
def step_bar(total: int, desc: str, unit: str = "step"):
    """A tqdm bar on stderr (silent with -q, or when stderr is not a terminal)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not bars_enabled()) as bar:
        yield bar


def each(items, desc: str, unit: str = "graph"):
    """Iterate `items` with a progress bar (a long stage's per-item work)."""
    items = list(items)
    with step_bar(len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
