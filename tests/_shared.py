"""Session artifacts built once across processes: the test process and the build process conftest.py starts
beside it (`tests/_prebuild.py`) share one folder, named by $PIXART_TEST_SHARED.

`once(name, build)` runs `build(folder)` in whichever process asks first, under a lock on the name: a process
that asks while another builds waits for it and then reads the same folder. A build that failed (or a process
killed in the middle of one) leaves no mark, so the next caller builds again and reports its own failure: the
background process can only save time, never change what a test sees.

A process started without $PIXART_TEST_SHARED (a script importing the test helpers) gets a folder of its own.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV = "PIXART_TEST_SHARED"


@functools.lru_cache(maxsize=None)
def root() -> Path:
    path = os.environ.get(ENV)
    if path:
        return Path(path)
    own = Path(tempfile.mkdtemp(prefix="pixart-export-shared-"))
    atexit.register(shutil.rmtree, own, ignore_errors=True)
    return own


def once(name: str, build: Callable[[Path], object]) -> tuple[Path, object]:
    """(`root() / name`, what `build(folder)` returned), built the first time any sharing process asks. The
    result (a Manifest, say) is pickled beside the folder: every process gets what the build returned, not
    a reading of the folder, so a test can still compare the two."""
    folder, result, done = root() / name, root() / f"{name}.pickle", root() / f"{name}.done"
    with open(root() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a killed builder left
            value = build(folder)
            result.write_bytes(pickle.dumps(value))
            done.touch()
            return folder, value
    return folder, pickle.loads(result.read_bytes())
