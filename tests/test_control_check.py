"""pixart_export.control_check: the recorded control convention and the one-line warning for control images
that look inverted or filled, in `generate`, `run` and the engine folder `build` writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixart_export import control_check as cc
from pixart_export.cli import main
from reference.loading import TINY_DIR
from reference.train import control, data, layout


def _edge_maps() -> list[np.ndarray]:
    scenes = [data.sample(0, i)[0] for i in range(4)] + [layout.sample(0, i)[0] for i in range(4)]
    return [control.condition(s) for s in scenes]


def test_the_shipped_controlnet_records_its_convention():
    assert cc.read_convention(TINY_DIR / "controlnet") == cc.Convention("edge", "dark-on-light", 128)


def test_edge_maps_pass_and_their_inverse_warns_naming_the_fix():
    conv = cc.Convention()
    for edges in _edge_maps():
        assert cc.check(edges, conv) is None
        warning = cc.check(255 - edges, conv)
        assert warning is not None and "--invert-control" in warning and "looks inverted" in warning
        assert "\n" not in warning
        assert cc.check(cc.invert(Image.fromarray(255 - edges)), conv) is None


def test_light_on_dark_convention_is_the_mirror():
    conv = cc.Convention("edge", "light-on-dark", 128)
    for edges in _edge_maps():
        assert cc.check(255 - edges, conv) is None
        assert "looks inverted" in cc.check(edges, conv)


def test_filled_silhouettes_warn_for_an_edge_controlnet_only():
    scenes = [data.sample(0, i)[0] for i in range(4)]
    for scene in scenes:
        mask = control.condition(scene, "mask")
        assert "filled shapes" in cc.check(mask, cc.Convention("edge"))
        assert cc.check(mask, cc.Convention("mask")) is None


def test_blank_control_and_no_record_say_nothing(tmp_path):
    assert cc.check(np.full((128, 128, 3), 255, np.uint8), cc.Convention()) is None
    assert cc.read_convention(tmp_path) is None
    assert cc.check(np.zeros((128, 128, 3), np.uint8), None) is None
    cc.write_convention(tmp_path, cc.Convention("mask", "light-on-dark", 256))
    assert cc.read_convention(tmp_path) == cc.Convention("mask", "light-on-dark", 256)
    with pytest.raises(ValueError):
        cc.Convention("hed", "dark-on-light", 128)


def _warnings(capsys) -> list[str]:
    """The control-image warning lines on stderr (the CLI's log handler writes there, one line each)."""
    return [line for line in capsys.readouterr().err.splitlines() if "the control image looks" in line]


def test_generate_warns_once_for_an_inverted_control_and_not_with_invert_control(tmp_path, capsys):
    edges = _edge_maps()[0]
    Image.fromarray(255 - edges).save(tmp_path / "hed.png")
    argv = ["generate", "--model", "tiny", "--controlnet", "tiny", "--prompt", "a red circle"]
    argv += ["--control-image", str(tmp_path / "hed.png"), "--out", str(tmp_path / "a.png")]
    assert main(argv) == 0
    warned = _warnings(capsys)
    assert len(warned) == 1 and "--invert-control" in warned[0]
    assert main([*argv[:-1], str(tmp_path / "b.png"), "--invert-control"]) == 0
    assert _warnings(capsys) == []
    Image.fromarray(edges).save(tmp_path / "edges.png")
    assert main([*argv[:-4], "--control-image", str(tmp_path / "edges.png"), "--out", str(tmp_path / "c.png")]) == 0
    assert _warnings(capsys) == []
    # the inverted HED-style map with --invert-control draws what the black-on-white map draws
    assert (np.asarray(Image.open(tmp_path / "b.png")) == np.asarray(Image.open(tmp_path / "c.png"))).all()


def test_build_copies_the_convention_and_run_checks_against_it(tmp_path, capsys):
    from tests._tiny_engine import tiny_engine

    folder, manifest = tiny_engine()
    assert cc.read_convention(folder) == cc.read_convention(TINY_DIR / "controlnet")
    assert cc.CONVENTION_FILE in manifest.files  # hashed with the engine's other files
    Image.fromarray(255 - _edge_maps()[1]).save(tmp_path / "hed.png")
    argv = ["run", str(folder), "--prompt", "a red circle", "--control-image", str(tmp_path / "hed.png")]
    assert main([*argv, "--out", str(tmp_path / "a.png")]) == 0
    warned = _warnings(capsys)
    assert len(warned) == 1 and "--invert-control" in warned[0]
    assert main([*argv, "--out", str(tmp_path / "b.png"), "--invert-control"]) == 0
    assert _warnings(capsys) == []


@pytest.fixture(scope="module")
def cpp_tool():
    from tests.test_cpp import _build

    folder, why = _build()
    if folder is None:
        pytest.skip(why)
    return folder / "pixart_tool"


def _ppm(path, image: np.ndarray):
    path.write_bytes(b"P6\n%d %d\n255\n" % (image.shape[1], image.shape[0]) + image.astype(np.uint8).tobytes())
    return path


def test_cpp_gives_pythons_warning_on_the_same_images(tmp_path, cpp_tool):
    """One rule: pixart_tool check-control (cpp/src/control_check.cpp) prints check()'s line, or nothing."""
    import subprocess

    scene = data.sample(0, 1)[0]
    images = [*_edge_maps()[:3], 255 - _edge_maps()[3], control.condition(scene, "mask"), np.full((64, 96, 3), 255)]
    for conv in (cc.Convention(), cc.Convention("edge", "light-on-dark", 128), cc.Convention("mask")):
        cc.write_convention(tmp_path, conv)
        for k, image in enumerate(images):
            ppm = _ppm(tmp_path / f"c{k}.ppm", image)
            out = subprocess.run(
                [str(cpp_tool), "check-control", str(tmp_path), str(ppm)], capture_output=True, text=True
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.rstrip("\n") == (cc.check(image.astype(np.uint8), conv) or ""), (conv, k)
    (tmp_path / cc.CONVENTION_FILE).unlink()  # no record: no warning
    out = subprocess.run([str(cpp_tool), "check-control", str(tmp_path), str(tmp_path / "c3.ppm")], capture_output=True)
    assert out.stdout == b"\n"
