"""Build stage resources: each stage's wall time and its own peak RSS (not the process's peak to date),
child processes included; recorded in the manifest's `build.stages`, printed, and shown by `info`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pixart_export import resources
from pixart_export.resources import StageMeter, format_stage
from tests._tiny_engine import engine  # noqa: F401 - fixture

MIB = 2**20


def _touch(mib: int) -> bytearray:
    block = bytearray(mib * MIB)
    for i in range(0, len(block), 4096):  # every page resident
        block[i] = 1
    return block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the per-stage reset is Linux's /proc")
def test_peak_is_the_stages_own():
    big = StageMeter("big")
    block = _touch(256)
    first = big.record()
    del block
    small = StageMeter("small")  # resets the kernel's peak: the 256 MiB are gone
    time.sleep(0.01)
    second = small.record()
    assert first["rss_method"] == second["rss_method"] == "clear_refs"
    assert first["peak_rss_bytes"] >= 256 * MIB
    assert second["peak_rss_bytes"] <= first["peak_rss_bytes"] - 200 * MIB, (first, second)
    assert second["seconds"] >= 0.01 and "children_peak_rss_bytes" not in second


def test_child_processes_count():
    meter = StageMeter("child")
    code = "b = bytearray(300 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1"
    subprocess.run([sys.executable, "-c", code], check=True)
    rec = meter.record()
    # exact where this child set a new high of this process's children, else a bound (an earlier, larger child)
    assert rec["children_peak_rss_bytes"] >= 300 * MIB
    assert "child processes" in format_stage(rec)
    if rec.get("children_peak_is_bound"):  # recorded beside the stage's figure, not added to it
        assert "not added" in format_stage(rec)
    else:
        assert rec["peak_rss_bytes"] >= rec["children_peak_rss_bytes"] + 10 * MIB  # + this process's own


def test_fallback_without_the_reset_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "CLEAR_REFS", tmp_path / "no-such-dir" / "clear_refs")
    rec = StageMeter("fallback").record()
    assert rec["rss_method"] == "getrusage" and rec["peak_rss_bytes"] > 10 * MIB
    assert "per-stage reset unavailable" in format_stage(rec)


def test_manifest_records_every_stage(engine, capsys):  # noqa: F811
    from pixart_export.cli import main

    folder, manifest = engine
    stages = manifest.build["stages"]
    names = [s["name"] for s in stages]
    assert len(names) == 5 and names[0].startswith("load model tiny") and names[-1].startswith("write manifest.json")
    assert names[-2] == "verify against the reference"
    for s in stages:
        assert s["seconds"] >= 0 and 10 * MIB < s["peak_rss_bytes"] < 64 * 2**30, s
        assert s["rss_method"] == ("clear_refs" if sys.platform.startswith("linux") else "getrusage")
    assert stages[-1]["in_progress"] is True  # the install stage, measured until it wrote the manifest
    assert sum(s["seconds"] for s in stages) <= manifest.build["seconds"] + 1

    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "ort-cpu (onnxruntime" in out
    for i, s in enumerate(stages, 1):
        assert f"stage {i:<6} {format_stage(s)}  {s['name']}" in out
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"] == stages


def test_build_prints_each_stage_as_it_ends(engine):  # noqa: F811
    """A rebuild of the shared engine is reused after its first stage: that stage's line is printed."""
    from pixart_export.build import build_target
    from tests._controlnet import controlnet_under_test

    folder, _ = engine
    lines = []
    _, _, reused = build_target(
        "ort-cpu",
        "tiny",
        out=folder,
        controlnet_spec=controlnet_under_test(),
        options={"optimise": False},
        log=lines.append,
    )
    assert reused and lines[0].startswith("[1/5] load model tiny")
    assert lines[1].strip().startswith("[1/5] ") and " s, peak RSS " in lines[1] and "GiB" in lines[1], lines


def test_a_child_that_reports_its_peak_counts_with_what_the_parent_held():
    """Parent and child peaks added are a bound on memory that may never have coexisted (a child run
    while the parent held little); a child that reports its peak, with the parent's RSS while it ran,
    gives the memory in use at once."""
    from pixart_export.resources import StageMeter

    meter = StageMeter("convert")
    meter.child_ran(child_peak=40 * 2**30, parent_rss=2 * 2**30)
    rec = meter.record()
    assert rec["peak_rss_bytes"] == max(42 * 2**30, rec["peak_rss_bytes"]) == 42 * 2**30
    assert rec["children_measured_with_parent"] and "children_peak_is_bound" not in rec
