"""Wall time and peak resident memory of one stretch of work (a build stage), child processes included.

Peak RSS per stage, not the process's high-water mark to date: on Linux the kernel's peak
(`VmHWM` in /proc/self/status) is reset to the current RSS by writing "5" to /proc/self/clear_refs
before the stage and read after it (method "clear_refs"). Where that fails (not Linux, a kernel or
sandbox that refuses the write), `resource.getrusage(RUSAGE_SELF).ru_maxrss` is read instead: the
process's peak since it started, so a stage can only show the largest peak of the stages before it
and itself (method "getrusage"). The record says which was used.

Child processes: `getrusage(RUSAGE_CHILDREN).ru_maxrss` is the peak of the largest child waited for
so far, and cannot be reset. A child that ran in the stage and set a new high gives its exact peak;
a child that ran (its CPU time grew) without beating an earlier child gives only a bound, the earlier
peak, which is then recorded with `children_peak_is_bound`. `peak_rss_bytes` is the process's peak
plus the children's: they may overlap in time (a parent waiting on its child), so it is an upper
bound on the memory in use at once, never an underestimate.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from pathlib import Path

#: where the kernel keeps this process's peak RSS, and the file that resets it (Linux)
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _maxrss_bytes(who: int) -> int:
    """ru_maxrss in bytes (Linux reports KiB, macOS bytes)."""
    value = resource.getrusage(who).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _vm_hwm() -> int | None:
    """The kernel's peak RSS of this process in bytes (VmHWM), or None where it cannot be read."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def reset_peak() -> bool:
    """Reset the kernel's peak RSS of this process to its current RSS; False where that is not possible."""
    if _vm_hwm() is None:
        return False
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def release_freed_memory() -> bool:
    """Give memory the stage freed back to the OS: collect garbage, then glibc's `malloc_trim(0)`.

    glibc raises its mmap threshold after large blocks are freed, so the exporter's and converters'
    later large buffers come from the heap, and the heap keeps what they free: measured on the
    full-size build, the process stayed at 12 GiB after exporting and converting graphs that hold
    3 GiB, into the stage that adds 13 GiB for T5. False where there is no glibc (nothing to do)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        return False


class StageMeter:
    """Measures from construction: `record()` gives {"name", "seconds", "peak_rss_bytes", ...} so far."""

    def __init__(self, name: str):
        self.name = name
        self.method = "clear_refs" if reset_peak() else "getrusage"
        self._children_peak = _maxrss_bytes(resource.RUSAGE_CHILDREN)
        self._children_cpu = _children_cpu()
        self._start = time.perf_counter()
        self._at_once: list[int] = []

    def child_ran(self, child_peak: int, parent_rss: int) -> None:
        """A child process of this stage ran to its `child_peak` (its own VmHWM, reported by the child)
        while this process held `parent_rss`, waiting on it: their sum is the memory in use at once
        then, exactly, instead of the bound that adding the two peaks gives."""
        self._at_once.append(int(child_peak) + int(parent_rss))

    def _own_peak(self) -> int:
        if self.method == "clear_refs":
            peak = _vm_hwm()
            if peak is not None:
                return peak
        return _maxrss_bytes(resource.RUSAGE_SELF)

    def record(self) -> dict:
        seconds = time.perf_counter() - self._start
        own = self._own_peak()
        rec = {"name": self.name, "seconds": round(seconds, 3), "peak_rss_bytes": own, "rss_method": self.method}
        children = _maxrss_bytes(resource.RUSAGE_CHILDREN)
        if children > self._children_peak:  # a child of this stage set a new high: its exact peak
            rec["children_peak_rss_bytes"] = children
        elif _children_cpu() > self._children_cpu:  # a child ran; its peak is at most the earlier high
            rec["children_peak_rss_bytes"] = children
            rec["children_peak_is_bound"] = True
        if self._at_once:  # the children said their peaks, and what this process held meanwhile
            rec["children_peak_rss_bytes"] = max(self._at_once)
            rec.pop("children_peak_is_bound", None)
            rec["children_measured_with_parent"] = True
            rec["peak_rss_bytes"] = max(own, max(self._at_once))
        elif rec.get("children_peak_is_bound"):
            # only an earlier child's high is known (e.g. a short `lscpu`): not added to the stage's
            # figure, which would then be a sum of peaks that never coexisted; recorded beside it
            rec["peak_rss_bytes"] = own
        else:
            rec["peak_rss_bytes"] = own + rec.get("children_peak_rss_bytes", 0)
        return rec


def current_rss() -> int:
    """This process's resident memory now, bytes (VmRSS), 0 where it cannot be read."""
    try:
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(match.group(1)) * 1024 if match else 0


def format_stage(rec: dict) -> str:
    """One line for a stage record: '12.3 s, peak RSS 1.42 GiB' (with what the figure includes)."""
    line = f"{rec['seconds']:.1f} s, peak RSS {rec['peak_rss_bytes'] / 2**30:.2f} GiB"
    notes = []
    if rec.get("children_measured_with_parent"):
        notes.append(f"with a child process: {rec['children_peak_rss_bytes'] / 2**30:.2f} GiB at once")
    elif "children_peak_rss_bytes" in rec:
        bound = "at most " if rec.get("children_peak_is_bound") else ""
        added = ", not added" if rec.get("children_peak_is_bound") else ""
        notes.append(f"child processes {bound}{rec['children_peak_rss_bytes'] / 2**30:.2f} GiB{added}")
    if rec.get("in_progress"):
        notes.append("until the manifest was written")
    if rec.get("rss_method") == "getrusage":
        notes.append("process peak to date: per-stage reset unavailable")
    return line + (f" ({'; '.join(notes)})" if notes else "")
