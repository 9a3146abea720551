"""reference/train/binding_proxy.py: the cell targets put object a in the top (left) half, object b in the
other, a single shape everywhere; the painter maps text tokens to per-cell colour and shape logits."""

from __future__ import annotations

import torch

from reference.train import binding_proxy, data


def test_cell_targets_follow_the_layout():
    vertical = data.Labels(1, 0, 2, 1, 3)  # a blue circle above a yellow square
    horizontal = data.Labels(2, 2, 0, 0, 1)  # a red triangle to the left of a green circle
    single = data.Labels(0, 1, 1)
    colour, shape = binding_proxy.cell_targets([vertical, horizontal, single])
    grid_c, grid_s = colour.view(3, 4, 4), shape.view(3, 4, 4)
    assert (grid_c[0, :2] == 2).all() and (grid_c[0, 2:] == 3).all()
    assert (grid_s[0, :2] == 0).all() and (grid_s[0, 2:] == 1).all()
    assert (grid_c[1, :, :2] == 0).all() and (grid_c[1, :, 2:] == 1).all()
    assert (grid_s[1, :, :2] == 2).all() and (grid_s[1, :, 2:] == 0).all()
    assert (grid_c[2] == 1).all() and (grid_s[2] == 1).all()


def test_painter_shapes_and_padding_is_ignored():
    torch.manual_seed(0)
    painter = binding_proxy.Painter(64, blocks=2).eval()
    text = torch.randn(2, 10, 64)
    mask = torch.tensor([[1] * 6 + [0] * 4] * 2)
    colour, shape = painter(text, mask)
    assert colour.shape == (2, 16, 4) and shape.shape == (2, 16, 3)
    changed = text.clone()
    changed[:, 6:] = 100.0  # padded tokens do not matter
    torch.testing.assert_close(painter(changed, mask)[0], colour)
