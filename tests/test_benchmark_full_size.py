"""`benchmarks/full_size.py`'s reading of build-stage records: what is the process's own peak, what a child's."""

from __future__ import annotations

from benchmarks.full_size import _render_check, build_peak, own_and_child

GIB = 2**30


def test_a_bound_child_is_not_subtracted_from_a_current_record():
    """A current record (`resources.StageMeter`) keeps an earlier child's high beside its figure, unadded:
    the 1024 px int8 stage peaked at 21.42 GiB in the build process itself with a 14.11 GiB bound beside it.
    Read as a legacy record (which added the children) it would say 7.32 GiB."""
    stage = {"name": "int8", "seconds": 1.0, "peak_rss_bytes": 21 * GIB, "children_peak_rss_bytes": 14 * GIB}
    stage["children_peak_is_bound"] = True
    assert own_and_child(stage, legacy=False) == (21 * GIB, 14 * GIB)
    assert own_and_child(stage, legacy=True) == (7 * GIB, 14 * GIB)
    exact = {"name": "x", "seconds": 1.0, "peak_rss_bytes": 9 * GIB, "children_peak_rss_bytes": 4 * GIB}
    assert own_and_child(exact, legacy=False) == (5 * GIB, 4 * GIB)
    at_once = {**exact, "children_measured_with_parent": True}
    assert own_and_child(at_once, legacy=False) == (9 * GIB, 4 * GIB) and build_peak([at_once]) == 9 * GIB


def test_check_render_reads_current_records_and_attempts():
    stage = {"name": "int8: calibrate", "seconds": 60.0, "peak_rss_bytes": 21 * GIB}
    stage.update(children_peak_rss_bytes=14 * GIB, children_peak_is_bound=True)
    check = {
        "resolution": [1024, 1024],
        "build": {"seconds": 600.0},
        "engine_bytes": 6 * GIB,
        "build_stages": [stage],
        "commands": {"run": {"exit": 0, "seconds": 3.0, "peak_rss_bytes": 9 * GIB}},
    }
    text = "\n".join(_render_check(check))
    assert "int8: 60 s / 21.00 (an earlier child's 14.00, a bound, not added)" in text
    assert "| run | 0 | 3.0 | 9.00 |" in text
    attempt = {"command": "full_size.py check", "started_utc": "a", "ended_utc": "b", "result": "OOM-killed"}
    assert "`full_size.py check`: OOM-killed" in "\n".join(_render_check(attempt))
