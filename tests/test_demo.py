"""The ControlNet panel of `python3 dev.py demo` (`pixart_export/demo.py`): the control image of the demo
prompt and the side-by-side picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixart_export import demo

PROMPT = "a red circle above a blue square"


def test_side_by_side_places_each_panel_under_its_label():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    panels = [(f"panel {i}", Image.new("RGB", (128, 128), c)) for i, c in enumerate(colours)]
    out = demo.side_by_side(panels, scale=2)
    gap, label = demo.GAP, demo.LABEL_HEIGHT
    assert out.size == (3 * 256 + 4 * gap, 256 + label + 2 * gap)
    arr = np.asarray(out)
    for i, colour in enumerate(colours):
        x = gap + i * (256 + gap)
        cell = arr[label + gap : label + gap + 256, x : x + 256]
        assert (cell == colour).all(), f"panel {i} is not where it should be"
        strip = arr[:label, x : x + 256]
        assert (strip < 128).any(), f"panel {i} has no label text"  # black text on the white strip
    assert (arr[label + gap :, :gap] == 255).all()  # white margin left of the first panel


def test_side_by_side_scales_panels_to_one_height():
    out = demo.side_by_side([("a", Image.new("RGB", (64, 64))), ("b", Image.new("RGB", (256, 128)))], scale=1)
    assert out.size == (128 + 256 + 3 * demo.GAP, 128 + demo.LABEL_HEIGHT + 2 * demo.GAP)
    with pytest.raises(ValueError, match="no panels"):
        demo.side_by_side([])


def test_control_image_is_the_edge_map_of_the_prompts_scene():
    from reference.train.control import FOREGROUND_LEVEL, edges, foreground

    scene = demo.scene_for(PROMPT)
    assert scene.shape == (128, 128, 3)
    fg = foreground(scene)
    top, bottom = fg[:64].sum(), fg[64:].sum()
    red = (scene[..., 0] > 180) & (scene[..., 2] < 100)
    blue = (scene[..., 2] > 180) & (scene[..., 0] < 100)
    assert top > 0 and bottom > 0 and red[:64].sum() > red[64:].sum() and blue[64:].sum() > blue[:64].sum()
    control = np.asarray(demo.control_image(PROMPT))
    assert control.shape == (128, 128, 3) and set(np.unique(control)) == {0, 255}  # black edges on white
    assert (control[..., 0] < FOREGROUND_LEVEL).sum() >= edges(scene).sum()
    with pytest.raises(ValueError, match="no scene of the miniature is captioned"):
        demo.scene_for("a cat on a mat")


def test_cli_writes_the_control_image_and_the_picture(tmp_path, capsys):
    control = tmp_path / "control.png"
    assert demo.main(["control-image", str(control), "--prompt", PROMPT]) == 0
    Image.new("RGB", (128, 128), (255, 255, 255)).save(tmp_path / "a.png")
    out = tmp_path / "demo.png"
    code = demo.main(["side-by-side", str(out), f"control image={control}", f"no control={tmp_path / 'a.png'}"])
    assert code == 0 and Image.open(out).size == (2 * 256 + 3 * demo.GAP, 256 + demo.LABEL_HEIGHT + 2 * demo.GAP)
    assert str(out) in capsys.readouterr().out
    assert demo.main(["control-image", str(control), "--prompt", "a cat"]) == 2
