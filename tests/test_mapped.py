"""`pixart_export/mapped.py` and `HeldFiles.map`: a mapped weights file hands its pages back and reads
the same bytes after; a file written to after the check is refused, however it was changed."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest

from pixart_export.mapped import MappedFile

MIB = 2**20


def _rss_file() -> int:
    """The process's resident file-backed memory (bytes), from /proc/self/status."""
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_give_back_returns_the_pages_and_the_bytes_stay(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 64 * MIB, dtype=np.uint8)
    (tmp_path / "w.bin").write_bytes(data.tobytes())
    fd = os.open(tmp_path / "w.bin", os.O_RDONLY)
    try:
        mapped = MappedFile(fd, data.size)
        before = _rss_file()
        assert int(mapped.array[::4096].sum()) == int(data[::4096].sum())  # one byte a page: all resident
        touched = _rss_file()
        mapped.give_back()
        given = _rss_file()
        assert touched - before > 48 * MIB, (before, touched)
        assert touched - given > 48 * MIB, (touched, given)
        assert hashlib.sha256(mapped.array).digest() == hashlib.sha256(data).digest()  # faulted back in
        with mapped.paged_out(period_s=0.01):
            assert np.array_equal(mapped.array, data)
        assert touched - _rss_file() > 48 * MIB
    finally:
        del mapped
        os.close(fd)


def _held(tmp_path, payload: bytes):
    from pixart_export.manifest import FileEntry, check_files

    (tmp_path / "w.bin").write_bytes(payload)
    entry = FileEntry(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))

    class _Manifest:  # the part of a Manifest check_files reads
        files = {"w.bin": entry}

    return check_files(tmp_path, _Manifest())


@pytest.mark.parametrize("change", ["rewrite", "one byte", "touch"])
def test_a_file_written_after_the_check_is_refused(tmp_path, change):
    from pixart_export.manifest import EngineError

    payload = bytes(range(256)) * 64
    held = _held(tmp_path, payload)
    mapped = held.map("w.bin")
    assert bytes(mapped.array) == payload
    held.check_unchanged("w.bin")
    path = tmp_path / "w.bin"
    time.sleep(0.05)  # past the file system's timestamp tick (a few ms): a write in the same tick as the build
    if change == "rewrite":  # the same bytes written again: the content is equal, the write is seen
        path.write_bytes(payload)
    elif change == "one byte":
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"\xff")
    else:
        os.utime(path)  # mtime set by hand: the ctime moves with it
    with pytest.raises(EngineError, match=r"w\.bin: changed after the folder was checked"):
        held.check_unchanged("w.bin")
    with pytest.raises(EngineError, match=r"w\.bin: changed after the folder was checked"):
        held.map("w.bin")
    held.close()
