"""Progress output for long work: tqdm bars on stderr, so stdout stays clean for results."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def step_bar(total: int, desc: str):
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False) as bar:
        yield bar
