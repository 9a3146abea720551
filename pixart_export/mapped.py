"""A held engine file mapped into memory, its pages handed back while a backend copies from it.

Why: OpenVINO's CPU plugin repacks every weight it compiles into memory of its own, so a graph compiled
from a buffer holds its weights twice until the buffer goes, and the buffer cannot go (the plugin keeps
a few constants pointing into it). The full-size T5's 4.56 GiB of int8 weights peaked at 8.8 GiB that
way, over the 8 GiB a full pipeline run may use. Mapped instead of read, the file's pages are only
borrowed: `paged_out()` hands them back every 0.2 s while the compile copies from them, and once more
after; a constant the plugin kept pointing into the mapping faults back in from the file when it is used.
Measured on that T5 (2-core AVX-512 CPU): peak RSS 4.55 GiB instead of 8.8, compile 14.0 s instead of
13.4 s, outputs bit-equal. A period of 0.05 s gave 4.50 GiB at 19 s; 0.5 s gave 4.65 GiB.

What runs is still what was hashed: the mapping is of the descriptor held since the check, and
`HeldFiles.check_unchanged` compares the file's size, mtime and ctime with those taken before it was
hashed, after each compile and before each run. A write to the file moves its ctime, which only root can
set back (to the file system's timestamp tick, a few ms: a write within a few ms of the file's last
change could go unseen; engine files are written once, at build).

Torch-free (the runtime imports this).
"""

from __future__ import annotations

import contextlib
import mmap
import threading

import numpy as np

#: Seconds between two hand-backs while a compile reads the mapping (see the module docstring).
PAGE_OUT_PERIOD_S = 0.2


class MappedFile:
    """`size` bytes of the open descriptor `fd`, mapped copy-on-write (the writable buffer OpenVINO's
    tensors ask for; nothing writes to it, and no write could reach the file). `array` is a uint8 view.
    The descriptor stays owned by its caller."""

    def __init__(self, fd: int, size: int):
        self._mm = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        self.array = np.frombuffer(self._mm, np.uint8)

    def give_back(self) -> None:
        """Unmap the resident pages (they are the file's, unchanged: a later read faults them in again).
        Where the platform lacks MADV_DONTNEED this does nothing and the pages stay until the unmap."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    @contextlib.contextmanager
    def paged_out(self, period_s: float = PAGE_OUT_PERIOD_S):
        """Within the block, the mapping's pages are handed back every `period_s` seconds by a thread of
        its own (OpenVINO releases the GIL while it compiles), and once after the block."""
        stop = threading.Event()

        def pager():
            while not stop.wait(period_s):
                self.give_back()

        thread = threading.Thread(target=pager, name="page-out", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.give_back()
