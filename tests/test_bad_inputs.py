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
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
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
    stale = tmp_path / f".engine.building-{dead.pid}-abc"
    live = tmp_path / f".engine.building-{os.getpid()}-abc"
    theirs = tmp_path / ".engine.mine"
    for p in (stale, live, theirs):
        p.mkdir()
        (p / "f").write_text("x")
    from pixart_export.engine_folder import clean_leftovers

    assert clean_leftovers(out) == [stale]
    assert live.exists() and theirs.exists() and not stale.exists()


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
