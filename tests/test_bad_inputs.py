"""The careless and hostile user's battery (issue 12): every bad input ends in exit code 2 (or 1 for a
failed gate), ONE line that says what to do, no traceback, and the file system as it was before:
user files intact, no temporary folders, no partial images.

Each case runs the CLI in this process (`cli.main`), so an uncaught exception would show up as exit 3
("internal error"), which the helper rejects like a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixart_export.cli import main
from pixart_export.manifest import MANIFEST, sha256_file
from reference.loading import TINY_DIR
from tests._tiny_engine import copy_engine, tiny_engine


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones too) with the sha256 of its bytes (folders as 'dir')."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():  # never followed: a link to /dev/zero must not be read
            out[rel] = f"link to {os.readlink(p)}"
        elif p.is_dir() or not p.is_file():
            out[rel] = "dir" if p.is_dir() else "special"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, argv: list[str], match: str, root: Path | None = None, code: int = 2) -> str:
    """Run `argv`; assert exit `code`, one `pixart-export...` line matching `match`, no traceback, and
    `root` unchanged. Returns the line."""
    before = snapshot(root) if root is not None else None
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("pixart-export")]
    assert "Traceback" not in err and "internal error" not in err, err
    assert rc == code, err
    assert len(lines) == 1 and re.search(match, lines[0]), err
    if root is not None:
        assert snapshot(root) == before, "the file system changed"
    return lines[0]


def edit_manifest(folder: Path, change) -> None:
    path = folder / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rehash(folder: Path, rel: str) -> None:
    """Make the manifest's files entry for `rel` match its (tampered) bytes: what a careful attacker does."""

    def change(data):
        data["files"][rel] = {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}

    edit_manifest(folder, change)


def run_argv(folder: Path, out: Path, *extra) -> list:
    return ["run", folder, "--prompt", "a red circle", "--out", out, *extra]


# -- 1. data loss ----------------------------------------------------------------------------------------
def _web_app(root: Path) -> Path:
    app = root / "site"
    app.mkdir()
    (app / "index.html").write_text("<html>mine</html>")
    (app / "manifest.json").write_text(json.dumps({"name": "my web app", "start_url": "/"}))
    return app


@pytest.mark.parametrize("command", ["build", "export"])
def test_out_holding_a_web_app_is_not_replaced(tmp_path, capsys, command):
    app = _web_app(tmp_path)
    argv = [command, "--model", "tiny", "--out", app] + (["--target", "ort-cpu"] if command == "build" else [])
    refused(capsys, argv, r"did not write.*choose another --out", root=tmp_path)


def test_engine_folder_with_user_notes_is_not_replaced(tmp_path, capsys):
    folder = copy_engine(tmp_path / "engine")
    (folder / "my-notes.txt").write_text("keep me")
    argv = ["build", "--target", "ort-cpu", "--model", "tiny", "--controlnet", "tiny", "--out", folder]
    refused(capsys, argv, r"did not write", root=tmp_path)


def test_output_inside_an_engine_folder_is_refused(tmp_path, capsys):
    folder = copy_engine(tmp_path / "engine")
    refused(capsys, run_argv(folder, folder / "in.png"), r"inside the engine folder", root=tmp_path)
    refused(capsys, run_argv(folder, folder / "tokenizer" / "x.png"), r"inside the engine folder", root=tmp_path)


# -- 2. integrity ----------------------------------------------------------------------------------------
def graph_file(folder: Path, graph: str) -> str:
    manifest = json.loads((folder / MANIFEST).read_text())
    return next(rec["file"] for rec in manifest["graphs"] if rec["graph"] == graph)


def test_graph_path_outside_the_folder_is_refused(tmp_path, capsys):
    folder = copy_engine(tmp_path / "engine")
    outside = tmp_path / "outside"
    outside.mkdir()
    name = graph_file(folder, "vae_decoder")
    shutil.copy(folder / name, outside / name)

    def change(data):
        for rec in data["graphs"]:
            if rec["graph"] == "vae_decoder":
                rec["file"] = f"../outside/{name}"

    edit_manifest(folder, change)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"not a plain relative path inside", root=tmp_path)


def test_tokenizer_folder_outside_is_refused(tmp_path, capsys):
    folder = copy_engine(tmp_path / "engine")
    edit_manifest(folder, lambda d: d["tokenizer"].update(dir="../outside"))
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"tokenizer folder .* not inside", root=tmp_path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d["backend"].update(name="openvino"), r"runs on onnxruntime"),
        (lambda d: d.update(target="trt-t4"), r"runs on tensorrt"),
        # both edited to agree with each other: still not what was verified
        (lambda d: (d.update(target="ov-cpu"), d["backend"].update(name="openvino")), r"verified"),
        (lambda d: d.update(target="ort-cuda"), r"verified"),
    ],
)
def test_backend_and_target_must_agree_with_what_was_verified(tmp_path, capsys, edit, match):
    folder = copy_engine(tmp_path / "engine")
    edit_manifest(folder, edit)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), match, root=tmp_path)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--conditioning-scale", "nan"], r"finite"),
        (["--conditioning-scale", "1e9"], r"conditioning-scale.*from"),
        (["--conditioning-scale", "-3"], r"conditioning-scale.*from"),
        (["--seed", "-1"], r"a seed is an integer from 0"),
        (["--seed", "1.5"], r"not an integer"),
        (["--num-images", "0"], r"num-images.*from 1"),
        (["--num-images", "10000"], r"num-images.*from 1"),
        (["--threads", "0"], r"threads.*from 1"),
        (["--resolution", "65536"], r"resolution"),
    ],
)
def test_run_values_are_checked(tmp_path, capsys, extra, match):
    folder = tiny_engine()[0]
    refused(capsys, run_argv(folder, tmp_path / "x.png", *extra), match, root=tmp_path)


def test_a_bucket_the_engine_lacks_is_named_before_disk_space(tmp_path, capsys, monkeypatch):
    """A 65536x65536 request on a disk with less than its 12.9 GB of PNG room: the answer is that the
    engine has no such bucket (what the user must change), not that the disk is full (a fresh clone's
    suite failed that way on a machine with 12.8 GB free)."""
    import os

    folder = tiny_engine()[0]
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 1

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    refused(capsys, run_argv(folder, tmp_path / "x.png", "--resolution", "65536"), r"not in this engine", root=tmp_path)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"bytes free on its file system", root=tmp_path)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--guidance-scale", "inf"], r"finite"),
        (["--guidance-scale", "1000"], r"guidance-scale.*from"),
        (["--resolution", "65536"], r"65536x65536.*at most"),
        (["--resolution", "0"], r"positive"),
        (["--steps", "0"], r"steps"),
    ],
)
def test_generate_values_are_checked(tmp_path, capsys, extra, match):
    argv = ["generate", "--model", "tiny", "--prompt", "a red circle", "--out", tmp_path / "x.png", *extra]
    refused(capsys, argv, match, root=tmp_path)


def test_build_resolution_is_bounded(tmp_path, capsys):
    argv = ["build", "--target", "ort-cpu", "--model", "tiny", "--out", tmp_path / "e", "--resolution", "65536"]
    refused(capsys, argv, r"65536x65536.*at most", root=tmp_path)


# -- 3. one line, never a traceback ---------------------------------------------------------------------
def test_prompt_with_lone_surrogates(tmp_path, capsys):
    """What Python makes of a prompt whose bytes are not UTF-8 (os.fsdecode's surrogateescape)."""
    bad = os.fsdecode(b"a red \xff circle")
    folder = tiny_engine()[0]
    refused(capsys, ["run", folder, "--prompt", bad, "--out", tmp_path / "x.png"], r"UTF-8", root=tmp_path)
    argv = ["generate", "--prompt", bad, "--out", tmp_path / "x.png"]
    refused(capsys, argv, r"UTF-8", root=tmp_path)


def test_out_into_a_missing_folder_or_onto_a_folder(tmp_path, capsys):
    folder = tiny_engine()[0]
    refused(capsys, run_argv(folder, tmp_path / "missing" / "x.png"), r"no such folder", root=tmp_path)
    (tmp_path / "d.png").mkdir()
    refused(capsys, run_argv(folder, tmp_path / "d.png"), r"is a folder", root=tmp_path)
    refused(capsys, run_argv(folder, tmp_path / "x.jpg"), r"PNG", root=tmp_path)


def _model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(TINY_DIR, dst)
    return dst


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("patch_size", 0, r"patch_size"),
        ("num_layers", "6", r"num_layers.*integer"),
        ("num_layers", -1, r"num_layers"),
        ("num_attention_heads", 2.5, r"num_attention_heads.*integer"),
        ("sample_size", 7, r"sample_size.*multiple of the patch"),
        ("norm_eps", "small", r"norm_eps.*number"),
        ("in_channels", True, r"in_channels.*integer"),
    ],
)
def test_bad_transformer_config(tmp_path, capsys, key, value, match):
    model = _model_copy(tmp_path)
    path = model / "transformer" / "config.json"
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    refused(capsys, ["info", "--model", model], match, root=tmp_path)


@pytest.mark.parametrize(
    "value,match",
    [
        (99, r"num_copies 99.*1 to 5"),
        (0, r"num_copies.*(1 to 5|positive)"),
        ("two", r"num_copies.*integer"),
        (-1, r"num_copies.*positive"),
    ],
)
def test_bad_controlnet_config(tmp_path, capsys, value, match):
    model = _model_copy(tmp_path)
    path = model / "controlnet" / "config.json"
    data = json.loads(path.read_text())
    data["num_copies"] = value
    path.write_text(json.dumps(data))
    refused(capsys, ["info", "--model", model, "--controlnet", model / "controlnet"], match, root=tmp_path)


def test_missing_config_json_and_non_object(tmp_path, capsys):
    model = _model_copy(tmp_path)
    (model / "transformer" / "config.json").write_text("[1, 2]")
    refused(capsys, ["info", "--model", model], r"config.json.*JSON object", root=tmp_path)
    (model / "transformer" / "config.json").write_text("{not json")
    refused(capsys, ["info", "--model", model], r"config.json.*not readable JSON", root=tmp_path)


def test_decompression_bomb_control_image(tmp_path, capsys, monkeypatch):
    """A control image larger than PIL's pixel limit is refused, whether PIL warns (1-2x) or raises (>2x)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    folder = tiny_engine()[0]
    for side in (40, 100):  # 1600 px: PIL only warns; 10000 px: PIL raises
        path = tmp_path / f"bomb{side}.png"
        Image.new("1", (side, side)).save(path)
        argv = run_argv(folder, tmp_path / "x.png", "--control-image", path)
        refused(capsys, argv, r"too large", root=tmp_path)


def test_control_image_that_is_not_an_image(tmp_path, capsys):
    folder = tiny_engine()[0]
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    argv = run_argv(folder, tmp_path / "x.png", "--control-image", tmp_path / "c.png")
    refused(capsys, argv, r"not a readable image", root=tmp_path)
    argv = run_argv(folder, tmp_path / "x.png", "--control-image", tmp_path / "none.png")
    refused(capsys, argv, r"not a readable image|no such", root=tmp_path)


@pytest.mark.parametrize("graph", ["vae_decoder", "text_encoder"])
def test_truncated_graph_with_matching_hash(tmp_path, capsys, graph):
    folder = copy_engine(tmp_path / "engine")
    graph = graph_file(folder, graph)
    data = (folder / graph).read_bytes()
    (folder / graph).write_bytes(data[: len(data) // 3])
    rehash(folder, graph)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), rf"{graph}.*not loadable.*rebuild", root=tmp_path)


def test_random_bytes_graph_in_check(tmp_path, capsys):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "transformer.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    argv = ["check", "--target", "trt-t4", tmp_path / "bundle"]
    refused(capsys, argv, r"transformer.onnx.*not a readable ONNX", root=tmp_path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.pop("steps"), r"steps.*missing"),
        (lambda d: d["tokenizer"].update(kind="sentencepiece"), r"tokenizer kind 'sentencepiece'"),
        (lambda d: d.update(steps="four"), r"steps"),
        (lambda d: d.update(steps=0), r"steps"),
        (lambda d: d.update(resolutions=[[0, 64]]), r"resolutions"),
        (lambda d: d.update(schema_version=1), r"schema version 1.*rebuild"),
    ],
)
def test_broken_manifest(tmp_path, capsys, edit, match):
    folder = copy_engine(tmp_path / "engine")
    edit_manifest(folder, edit)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), match, root=tmp_path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pixart-export-pwned",))


def test_malicious_pickle_is_refused_in_one_line(tmp_path, capsys):
    model = _model_copy(tmp_path)
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    with open(model / "transformer" / "diffusion_pytorch_model.bin", "wb") as fh:
        pickle.dump({"x": _Payload()}, fh)
    refused(capsys, ["info", "--model", model], r"not a readable PyTorch weights file", root=tmp_path)
    shutil.copy(model / "transformer" / "diffusion_pytorch_model.bin", tmp_path / "evil.pth")
    refused(capsys, ["info", "--model", tmp_path / "evil.pth"], r"not a readable PyTorch weights file", root=tmp_path)
    assert not Path("/tmp/pixart-export-pwned").exists()


# -- 4. bounded resources --------------------------------------------------------------------------------
def test_large_batches_run_in_chunks_with_the_same_images():
    """Images are made in chunks that fit the memory budget; chunking changes no pixel."""
    from pixart_export import runtime

    folder, _ = tiny_engine()
    whole = runtime.load(folder)("a red circle", seed=3, num_images=3, output="np")
    pipe = runtime.load(folder, memory_budget=1)  # 1 byte: one image per chunk
    assert pipe.max_batch == 1
    chunked = pipe("a red circle", seed=3, num_images=3, output="np")
    np.testing.assert_array_equal(whole, chunked)


# -- 5. interrupted builds -------------------------------------------------------------------------------
def test_interrupted_build_leaves_nothing_behind(tmp_path):
    """SIGTERM during a build: its staging folder is removed on the way out; after SIGKILL, the next
    build removes the dead process's folder, and never one of a live process or someone else's."""
    out = tmp_path / "engine"
    cmd = [sys.executable, "-m", "pixart_export.cli", "build", "--target", "ort-cpu", "--model", "tiny"]
    proc = subprocess.Popen([*cmd, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".engine.building-*")):
        time.sleep(0.2)
    assert list(tmp_path.glob(".engine.building-*")), "the build never started staging"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "SIGTERM left files behind"

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from pixart_export.engine_folder import OWNER, clean_leftovers

    def leftover(name: str, marker: dict | None) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "f").write_text("x")
        if marker is not None:
            (path / OWNER).write_text(json.dumps(marker))
        return path

    def mark(pid: int, kind: str) -> dict:
        return {"pid": pid, "out": "engine", "kind": kind}

    stale = leftover(f".engine.building-{dead.pid}-abc", mark(dead.pid, "building"))
    stale_old = leftover(f".engine.old-{dead.pid}-123", mark(dead.pid, "old"))
    live = leftover(f".engine.building-{os.getpid()}-abc", mark(os.getpid(), "building"))
    kept = [
        live,
        leftover(".engine.mine", None),
        # issue 26: a user's folder that only looks like a leftover is never deleted
        leftover(f".engine.old-{dead.pid}-456", None),
        leftover(f".engine.building-{dead.pid}-def", None),
        leftover(f".engine.scratch-{dead.pid}-ghi", mark(dead.pid + 1, "scratch")),  # another pid's marker
        leftover(f".engine.building-{dead.pid}-jkl", {**mark(dead.pid, "building"), "out": "other"}),
    ]
    assert sorted(clean_leftovers(out)) == sorted([stale, stale_old])
    assert all(p.exists() and (p / "f").read_text() == "x" for p in kept)
    assert not stale.exists() and not stale_old.exists()


def test_staging_folders_carry_their_marker(tmp_path):
    """What the clean-up relies on: every folder a build makes beside --out is marked with its pid."""
    from pixart_export.engine_folder import OWNER, staging

    with staging(tmp_path / "engine") as tmp, staging(tmp_path / "engine", "scratch") as scratch:
        for path, kind in ((tmp, "building"), (scratch, "scratch")):
            marker = json.loads((path / OWNER).read_text())
            assert marker == {"pid": os.getpid(), "out": "engine", "kind": kind}
            assert path.name.startswith(f".engine.{kind}-{os.getpid()}-")
    assert list(tmp_path.iterdir()) == []


# -- 6. loading models -----------------------------------------------------------------------------------
def test_official_checkpoint_head_width(tmp_path, capsys):
    """The head width is not in the weights: 72 is assumed only for PixArt's own width (1152); other
    widths need a config.json beside the .pth, and a stated value is checked."""
    import torch

    from reference.loading import load_dit
    from reference.official import dit_to_official

    dit = load_dit(TINY_DIR / "transformer")
    pth = tmp_path / "ckpt" / "PixArt-tiny.pth"
    pth.parent.mkdir()
    sd = {**dit_to_official(dit.state_dict()), "pos_embed": dit.pos_embed.pos_embed.clone()}
    torch.save({"state_dict": sd}, pth)
    width = dit.config.inner_dim
    refused(capsys, ["info", "--model", pth], rf"width {width}.*head width.*config.json", root=tmp_path)
    (pth.parent / "config.json").write_text(json.dumps({"attention_head_dim": "72"}))
    refused(capsys, ["info", "--model", pth], r"attention_head_dim '72'.*positive integer", root=tmp_path)
    (pth.parent / "config.json").write_text(json.dumps({"attention_head_dim": 48}))
    refused(capsys, ["info", "--model", pth], r"attention_head_dim 48.*not a multiple", root=tmp_path)


def test_controlnet_for_another_base_is_refused(tmp_path, capsys):
    import torch

    from reference.loading import load_dit, read_weights
    from reference.official import controlnet_to_official, dit_to_official

    base = load_dit(TINY_DIR / "transformer")
    sd = controlnet_to_official(read_weights(TINY_DIR / "controlnet"))
    other = {f"base_model.{k}": v + 0.01 for k, v in dit_to_official(base.state_dict()).items()}
    torch.save({**sd, **other}, tmp_path / "cn.pth")
    refused(capsys, ["info", "--controlnet", tmp_path / "cn.pth"], r"built for another base", root=tmp_path)
    same = {f"base_model.{k}": v for k, v in dit_to_official(base.state_dict()).items()}
    torch.save({**sd, **same}, tmp_path / "cn_ok.pth")
    assert main(["info", "--controlnet", str(tmp_path / "cn_ok.pth")]) == 0


def test_controlnet_folder_for_another_base_is_refused(tmp_path, capsys):
    """Our ControlNet folders record the sha256 of the base they were trained on (`base_sha256`) and of
    the bases it was measured on (`validated_sha256`: the shipped one, trained on the teacher, names
    the student); a base in neither is refused."""
    model = _model_copy(tmp_path)
    path = model / "controlnet" / "config.json"
    data = json.loads(path.read_text())
    assert data["base_sha256"] and data["validated_sha256"]  # the shipped one records its bases
    data["base_sha256"] = "0" * 64
    data["validated_sha256"] = ["1" * 64]
    path.write_text(json.dumps(data))
    argv = ["info", "--model", model, "--controlnet", model / "controlnet"]
    refused(capsys, argv, r"built for another base", root=tmp_path)


@pytest.mark.parametrize("suffix", [".xml", ".bin"])
def test_truncated_openvino_files_with_matching_hash(tmp_path, capsys, suffix):
    pytest.importorskip("openvino")
    from tests._openvino_engine import ov_engine

    src = ov_engine()[0]
    folder = tmp_path / "engine"
    shutil.copytree(src, folder)
    xml = graph_file(folder, "vae_decoder")
    name = xml if suffix == ".xml" else xml[: -len(".xml")] + ".bin"
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    rehash(folder, name)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), rf"{xml}.*not loadable by OpenVINO.*rebuild", root=tmp_path)


def test_symlinked_graph_is_refused(tmp_path, capsys):
    """A listed file that is a link (here to an identical copy outside, so even its hash matches)."""
    folder = copy_engine(tmp_path / "engine")
    name = graph_file(folder, "vae_decoder")
    (tmp_path / "outside").mkdir()
    (folder / name).rename(tmp_path / "outside" / name)
    (folder / name).symlink_to(tmp_path / "outside" / name)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"symbolic link", root=tmp_path)


# == issue 26: the third pass, with the C++ runtime beside the Python one where the case applies =========
# The C++ runtime is built as tests/test_cpp.py builds it (cpp/build, or $PIXART_CPP_BUILD); its cases skip,
# naming the missing tool, where cmake or a compiler is missing. Its folder-level checks run on the shared
# ort-cpu engine (the manifest is read and checked before a backend is needed); the backend-level ones on
# the shared tiny ov-cpu engine.
@pytest.fixture(scope="module")
def cpp():
    from tests.test_cpp import _build

    folder, why = _build()
    if folder is None:
        pytest.skip(why)
    return folder


def cpp_refused(build: Path, argv: list, match: str, root: Path | None = None, tool: str = "pixart_run", **kw) -> str:
    """The C++ counterpart of `refused`: exit 2, one line on stderr (`error: ...`) matching `match`, and
    `root` unchanged."""
    before = snapshot(root) if root is not None else None
    proc = subprocess.run([str(build / tool), *map(str, argv)], capture_output=True, text=True, timeout=120, **kw)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(match, lines[0]), proc.stderr
    if root is not None:
        assert snapshot(root) == before, "the file system changed"
    return lines[0]


@pytest.fixture(scope="module")
def ov_folder():
    pytest.importorskip("openvino")
    from tests._openvino_engine import ov_engine

    return ov_engine()[0]


# -- 1. data loss -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["build", "export"])
def test_out_inside_an_engine_folder_is_refused_by_build_and_export(tmp_path, capsys, command):
    folder = copy_engine(tmp_path / "engine")
    argv = [command, "--model", "tiny", "--out", folder / "inner"] + (["--target", "ort-cpu"] * (command == "build"))
    refused(capsys, argv, r"inside the engine folder .*engine", root=tmp_path)


def test_cpp_out_inside_an_engine_folder_is_refused(tmp_path, cpp):
    folder = copy_engine(tmp_path / "engine")
    for out in (folder / "in.png", folder / "tokenizer" / "x.png"):
        cpp_refused(cpp, [folder, "--prompt", "a red circle", "--out", out], r"inside the engine folder", root=tmp_path)
    # another engine folder than the one run
    cpp_refused(
        cpp, [tiny_engine()[0], "--prompt", "a red circle", "--out", folder / "x.png"], r"inside", root=tmp_path
    )


# -- 3. one argument contract: the same table of bad arguments through both CLIs -------------------------
BAD_ARGUMENTS = [
    (["--seed", "-1"], r"seed.*from 0 to"),
    (["--seed", "abc"], r"seed.*'abc' is not an integer|'abc' is not an integer"),
    (["--seed", "1.5"], r"not an integer"),
    (["--seed", "12abc"], r"not an integer"),
    (["--seed", "99999999999999999999"], r"seed.*from 0 to"),
    (["--num-images", "0"], r"num-images.*from 1 to 256"),
    (["--num-images", "100000"], r"num-images.*from 1 to 256"),
    (["--conditioning-scale", "11"], r"conditioning-scale.*from 0 to 10"),
    (["--conditioning-scale", "abc"], r"not a number"),
    (["--conditioning-scale", "nan"], r"finite"),
    (["--conditioning-scale", "0x10"], r"not a number"),
    (["--conditioning-scale", "1e400"], r"finite"),
    (["--threads", "-1"], r"threads.*from 1 to 1024"),
    (["--threads", "2x"], r"not an integer"),
    (["--memory-budget", "0"], r"memory-budget.*from 0.01"),
    (["--out", "{tmp}/x.jpg"], r"PNG"),
    (["--out", "{tmp}/missing/x.png"], r"no such folder"),
    (["--out", "{tmp}/d.png"], r"is a folder"),
    (["--out", "{engine}/x.png"], r"inside the engine folder"),
    (["--prompt", "   "], r"empty prompt"),
]


@pytest.mark.parametrize("extra,match", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_both_clis_refuse_the_same_bad_arguments(tmp_path, capsys, cpp, extra, match):
    folder = copy_engine(tmp_path / "engine")
    (tmp_path / "d.png").mkdir()
    extra = [a.format(tmp=tmp_path, engine=folder) for a in extra]
    base = ["--prompt", "a red circle", "--out", tmp_path / "x.png"]
    refused(capsys, ["run", folder, *base, *extra], match, root=tmp_path)
    cpp_refused(cpp, [folder, *base, *extra], match, root=tmp_path)


def test_cpp_num_images_in_chunks_of_the_memory_budget(tmp_path, cpp, ov_folder):
    """--memory-budget 0.01 GiB holds one tiny image per chunk (runtime/budget.py's estimate, mirrored in
    C++): two chunks, the same pixels as Python's one batch of 2 (image k's noise from seed + k alone)."""
    from pixart_export import runtime

    pipe = runtime.load(ov_folder, memory_budget=int(0.01 * 2**30))
    assert pipe.max_batch == 1  # the budget that splits both runtimes' batches
    python = np.stack([np.asarray(im, dtype=np.int16) for im in runtime.load(ov_folder)("a red circle", 7, 2)])
    argv = [ov_folder, "--prompt", "a red circle", "--seed", "7", "--num-images", "2", "--memory-budget", "0.01"]
    proc = subprocess.run([str(cpp / "pixart_run"), *map(str, argv), "--out", str(tmp_path / "c.png")], timeout=300)
    assert proc.returncode == 0
    cpp_images = [np.asarray(Image.open(tmp_path / n).convert("RGB"), dtype=np.int16) for n in ("c.png", "c_1.png")]
    assert int(np.abs(np.stack(cpp_images) - python).max()) <= 1


def test_cpp_usage_line(cpp):
    line = cpp_refused(cpp, [], r"ENGINE_DIR and --prompt are required")
    assert "usage: pixart_run ENGINE_DIR --prompt" in line


# -- 2 and 5. integrity and tampered manifests, refused at read time by both loaders ---------------------
def _set(path: str, value):
    """An edit that sets the dotted `path` of the manifest (list indices as numbers)."""

    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(last) if isinstance(node, list) else last] = value

    return change


TAMPERED = [
    ("resolutions empty", _set("resolutions", []), r"resolutions: empty"),
    ("a 2147483640-pixel bucket", _set("resolutions", [[2147483640, 8]]), r"resolutions holds 2147483640x8"),
    ("a bucket with no graphs", _set("resolutions", [[128, 128], [64, 64]]), r"no \w+ graph for the bucket 64x64"),
    ("patch_size 0", _set("model.configs.transformer.patch_size", 0), r"model.configs.transformer.patch_size: 0"),
    (
        "num_attention_heads a string",
        _set("model.configs.transformer.num_attention_heads", "2"),
        r"num_attention_heads",
    ),
    ("vae widths empty", _set("model.configs.vae.block_out_channels", []), r"vae.block_out_channels"),
    ("steps beyond 32 bits", _set("steps", 4294967300), r"steps 4294967300 is not 1 to 8"),
    ("latent_channels beyond 32 bits", _set("latent_channels", 2**32 + 4), r"latent_channels 4294967300"),
    ("max_length beyond 32 bits", _set("tokenizer.max_length", 2**32 + 120), r"tokenizer.max_length"),
    ("a file size below 0", lambda d: next(iter(d["files"].values())).update(bytes=-1), r"bytes -1"),
    ("an integer beyond 64 bits", _set("build.note", 2**70), r"1180591620717411303424|64-bit|64 bits"),
    ("relabelled, parity null", lambda d: d.update(parity=None, target="ort-cuda"), r"sealed_for"),
    ("seal removed", lambda d: d["build"].pop("sealed_for"), r"sealed_for"),
    ("a cache folder for onnxruntime", _set("graphs.0.runtime", {"config": {"CACHE_DIR": "/tmp"}}), r"runtime.config"),
]


@pytest.mark.parametrize("name,edit,match", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_tampered_manifest_refused_by_both(tmp_path, capsys, cpp, name, edit, match):
    folder = copy_engine(tmp_path / "engine")
    edit_manifest(folder, edit)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), match, root=tmp_path)
    cpp_refused(cpp, ["validate", folder], match, root=tmp_path, tool="pixart_tool")


def _raw_manifest(folder: Path, text: bytes) -> None:
    (folder / MANIFEST).write_bytes(text)


@pytest.mark.parametrize(
    "name,make,match",
    [
        ("100000-deep array", lambda m: m[:-1] + b', "deep": ' + b"[" * 100000 + b"]" * 100000 + b"}", r"nested"),
        ("65 deep", lambda m: m[:-1] + b', "deep": ' + b"[" * 65 + b"]" * 65 + b"}", r"nested deeper than 64"),
        # the boundary, the same in both: 64 levels pass the depth check (and the schema then names the field)
        ("64 deep", lambda m: m[:-1] + b', "deep": ' + b"[" * 64 + b"]" * 64 + b"}", r"unknown field\(s\) deep"),
        ("invalid UTF-8", lambda m: m.replace(b'"ort-cpu"', b'"ort-\xff-cpu"', 1), r"UTF-8|utf-8|not readable JSON"),
        ("a lone surrogate", lambda m: m.replace(b'"ort-cpu"', b'"ort-\\ud800"', 1), r"UTF-8|surrogate"),
        ("over 16 MiB", lambda m: m[:-1] + b', "pad": "' + b"x" * (16 * 2**20) + b'"}', r"more than the 16777216"),
    ],
)
def test_unbounded_or_undecodable_manifest_refused_by_both(tmp_path, capsys, cpp, name, make, match):
    folder = copy_engine(tmp_path / "engine")
    text = json.dumps(json.loads((folder / MANIFEST).read_text())).encode()
    _raw_manifest(folder, make(text))
    refused(capsys, run_argv(folder, tmp_path / "x.png"), match, root=tmp_path)
    cpp_refused(cpp, ["validate", folder], match, root=tmp_path, tool="pixart_tool")


def test_manifest_that_is_a_device_or_fifo_is_refused_by_both(tmp_path, capsys, cpp):
    folder = copy_engine(tmp_path / "engine")
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).symlink_to("/dev/zero")
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"not a regular file \(a character device\)", root=tmp_path)
    cpp_refused(
        cpp, ["validate", folder], r"not a regular file \(a character device\)", root=tmp_path, tool="pixart_tool"
    )
    (folder / MANIFEST).unlink()
    os.mkfifo(folder / MANIFEST)
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"not a regular file \(a FIFO\)", root=tmp_path)
    cpp_refused(cpp, ["validate", folder], r"not a regular file \(a FIFO\)", root=tmp_path, tool="pixart_tool")


def test_hard_link_to_a_file_outside_is_refused_by_both(tmp_path, capsys, cpp, ov_folder):
    for folder in (copy_engine(tmp_path / "engine"), shutil.copytree(ov_folder, tmp_path / "ov")):
        name = graph_file(folder, "vae_decoder")
        outside = tmp_path / f"outside-{folder.name}"
        os.link(folder / name, outside)  # the same bytes: the hash matches, the link count does not
        refused(capsys, run_argv(folder, tmp_path / "x.png"), r"has 2 hard links", root=tmp_path)
        if folder.name == "ov":
            cpp_refused(cpp, ["validate", folder], r"has 2 hard links", root=tmp_path, tool="pixart_tool")


@pytest.mark.parametrize(
    "config,match",
    [
        ({"INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": "{tmp}/cache"}, r"config.CACHE_DIR: not a property"),
        ({"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"}, r"PERFORMANCE_HINT: 'THROUGHPUT'"),
        ({"INFERENCE_PRECISION_HINT": 32}, r"INFERENCE_PRECISION_HINT: '?32'? is not one of"),
    ],
)
def test_openvino_runtime_config_is_an_allow_list_in_both(tmp_path, capsys, cpp, ov_folder, config, match):
    """A manifest cannot make OpenVINO write compiled blobs outside the folder (and then import them in
    place of the checked graphs): every compile property is allow-listed, with its values."""
    folder = shutil.copytree(ov_folder, tmp_path / "ov")
    config = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in config.items()}
    edit_manifest(folder, _set("graphs.0.runtime", {"config": config}))
    refused(capsys, run_argv(folder, tmp_path / "x.png"), match, root=tmp_path)
    cpp_refused(cpp, ["validate", folder], match, root=tmp_path, tool="pixart_tool")
    assert not (tmp_path / "cache").exists()


def test_what_runs_is_what_was_hashed(tmp_path):
    """The graph files are held open from the check on: a folder replaced after `load` does not feed the
    running pipeline other files, and a file rewritten in place is refused when it is read."""
    from pixart_export import runtime
    from pixart_export.manifest import EngineError

    folder = copy_engine(tmp_path / "engine")
    pipe = runtime.load(folder)
    name = graph_file(folder, "vae_decoder")
    folder.rename(tmp_path / "moved")
    swapped = copy_engine(tmp_path / "engine")
    data = (swapped / name).read_bytes()
    (swapped / name).write_bytes(data[: len(data) // 3])  # what a later open of the path would load
    rehash(swapped, name)
    expected = runtime.load(tmp_path / "moved")("a red circle", seed=1, output="np")
    np.testing.assert_array_equal(pipe("a red circle", seed=1, output="np"), expected)

    pipe = runtime.load(tmp_path / "moved")
    path = tmp_path / "moved" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # the same inode, rewritten in place after the check
    with pytest.raises(EngineError, match=rf"{name}: changed after the folder was checked"):
        pipe("a red circle", seed=1)


def test_openvino_weights_are_mapped_and_a_rewrite_is_refused(tmp_path, ov_folder):
    """OpenVINO's weights are mapped from the held files (not read again and hashed): the image equals a
    load by path, and a weights file rewritten in place after the compile, with the same bytes, is
    refused before the next run."""
    import time

    from pixart_export import runtime
    from pixart_export.manifest import EngineError

    folder = shutil.copytree(ov_folder, tmp_path / "ov")
    pipe = runtime.load(folder)
    image = pipe("a red circle", seed=1, output="np")
    assert pipe.runner._weights, "no weights were mapped"
    np.testing.assert_array_equal(image, runtime.load(ov_folder)("a red circle", seed=1, output="np"))
    name = graph_file(folder, "vae_decoder").removesuffix(".xml") + ".bin"
    time.sleep(0.05)  # past the file system's timestamp tick
    (folder / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(EngineError, match=rf"{name}: changed after the folder was checked"):
        pipe("a red circle", seed=1)


def test_cpp_wraps_openvino_load_errors_in_one_line(tmp_path, cpp, ov_folder):
    folder = shutil.copytree(ov_folder, tmp_path / "ov")
    xml = graph_file(folder, "text_encoder")
    data = (folder / xml).read_bytes()
    (folder / xml).write_bytes(data[: len(data) // 2])
    rehash(folder, xml)
    cpp_refused(
        cpp, [folder, "--prompt", "a red circle", "--out", tmp_path / "x.png"], rf"{xml}: not loadable by OpenVINO"
    )
    assert not (tmp_path / "x.png").exists()


# -- 4. bounded reads of control images ------------------------------------------------------------------
def test_control_image_that_is_a_fifo_or_device_is_refused_by_both(tmp_path, capsys, cpp):
    folder = tiny_engine()[0]
    os.mkfifo(tmp_path / "c.ppm")
    (tmp_path / "z.ppm").symlink_to("/dev/zero")
    for path, kind in ((tmp_path / "c.ppm", "a FIFO"), (tmp_path / "z.ppm", "a character device")):
        argv = ["--prompt", "a red circle", "--out", tmp_path / "x.png", "--control-image", path]
        refused(capsys, ["run", folder, *argv], rf"not a regular file \({kind}\)", root=tmp_path)
        cpp_refused(cpp, [folder, *argv], rf"not a regular file \({kind}\)", root=tmp_path)


def test_huge_image_header_refused_before_allocation_by_both(tmp_path, capsys, cpp):
    """A 100000x100000 PPM header (30 GB of pixels) on a few bytes: refused from the header."""
    folder = tiny_engine()[0]
    (tmp_path / "c.ppm").write_bytes(b"P6\n100000 100000\n255\n" + bytes(64))
    argv = ["--prompt", "a red circle", "--out", tmp_path / "x.png", "--control-image", tmp_path / "c.ppm"]
    refused(capsys, ["run", folder, *argv], r"too large", root=tmp_path)
    cpp_refused(cpp, [folder, *argv], r"too large", root=tmp_path)
    (tmp_path / "t.ppm").write_bytes(b"P6\n4000 4000\n255\n" + bytes(64))  # within the limit, but truncated
    argv[-1] = tmp_path / "t.ppm"
    refused(capsys, ["run", folder, *argv], r"not a readable image|truncated", root=tmp_path)
    cpp_refused(cpp, [folder, *argv], r"truncated PPM", root=tmp_path)


# -- 7. one rule for control images of more than 8 bits a sample ----------------------------------------
def test_16_bit_control_images_are_refused_by_both(tmp_path, capsys, cpp):
    folder = tiny_engine()[0]
    gray16 = tmp_path / "g16.png"
    Image.fromarray((np.arange(128 * 128).reshape(128, 128) * 3).astype(np.uint16)).save(gray16)
    ppm16 = tmp_path / "c16.ppm"
    ppm16.write_bytes(b"P6\n128 128\n65535\n" + (np.arange(128 * 128 * 3, dtype=">u2")).tobytes())
    for path in (gray16, ppm16):
        argv = ["--prompt", "a red circle", "--out", tmp_path / "x.png", "--control-image", path]
        refused(capsys, ["run", folder, *argv], r"more than 8 bits|not 8 bits", root=tmp_path)
    argv = ["--prompt", "a red circle", "--out", tmp_path / "x.png", "--control-image", ppm16]
    cpp_refused(cpp, [folder, *argv], r"maxval 65535, not 8 bits", root=tmp_path)


# -- 6. environment errors: exit 2, one line, before the inference, nothing left -------------------------
def test_deleted_working_folder_with_a_relative_out(tmp_path, capsys, cpp, monkeypatch):
    folder = tiny_engine()[0]
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    refused(capsys, ["run", folder, "--prompt", "a red circle", "--out", "x.png"], r"working folder no longer exists")
    cpp_refused(cpp, [folder, "--prompt", "a red circle", "--out", "x.png"], r"working folder no longer exists")


def test_read_only_output_folder_is_refused_before_the_inference(tmp_path, capsys, monkeypatch):
    """EROFS (a read-only file system; root ignores permission bits, so it is simulated at os.open)."""
    import errno

    from pixart_export import runtime

    folder = tiny_engine()[0]
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(runtime, "load", lambda *a, **k: pytest.fail("the engine was loaded before the check"))
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"not writable \(Read-only file system\)", root=tmp_path)


def test_full_disk_is_refused_before_the_inference(tmp_path, capsys, monkeypatch):
    from pixart_export.runtime.pipeline import Pipeline

    folder = tiny_engine()[0]
    real = os.statvfs

    def full(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, *tuple(st)[5:]))

    monkeypatch.setattr(os, "statvfs", full)
    monkeypatch.setattr(Pipeline, "chunks", lambda *a, **k: pytest.fail("the inference ran before the check"))
    refused(capsys, run_argv(folder, tmp_path / "x.png"), r"0 bytes free.*need up to", root=tmp_path)


def test_disk_full_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno

    folder = tiny_engine()[0]

    def no_space(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")  # what a write cut short leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", no_space)
    refused(
        capsys, run_argv(folder, tmp_path / "x.png"), r"cannot be written \(No space left on device\)", root=tmp_path
    )
