"""reference.train.layout: free-layout scenes (held-out cells kept out of training) and the placement
metric, which must pass the renderer's own scenes and fail images that put the objects elsewhere."""

from __future__ import annotations

import numpy as np

from reference.train import data, layout


def test_scenes_are_deterministic_spread_and_keep_the_heldout_cells_out():
    scenes = [layout.scene(0, i) for i in range(300)]
    assert scenes[:5] == [layout.scene(0, i) for i in range(5)]
    things = [t for s in scenes for t in s]
    assert {len(s) for s in scenes} == {1, 2, 3}
    assert not any(t.cell() in layout.HELDOUT_CELLS for t in things)
    xs, ys = np.array([t.cx for t in things]), np.array([t.cy for t in things])
    assert xs.min() < 0.25 and xs.max() > 0.75 and ys.min() < 0.25 and ys.max() > 0.75  # the whole frame
    assert all(layout.MARGIN + t.r <= min(t.cx, t.cy, 1 - t.cx, 1 - t.cy) + 1e-9 for t in things)
    held = [t for i in range(50) for t in layout.scene(7, i, heldout=True)]
    assert all(t.cell() in layout.HELDOUT_CELLS for t in held)


def test_captions_name_every_object_and_sometimes_the_relation():
    captions = [layout.sample(0, i)[1] for i in range(200)]
    relations = [c for c in captions if " above " in c or " to the left of " in c or " below " in c or " right " in c]
    assert 0 < len(relations) < len(captions) // 2
    for i in range(50):
        _, text, things = layout.sample(0, i)
        for t in things:
            assert f"{data.COLOUR_NAMES[t.colour]} {data.SHAPES[t.shape]}" in text
        assert set(text.replace(",", "").split()) <= data.VOCABULARY | {"and"}


def test_placement_passes_the_renderers_own_scenes():
    scores = [layout.placed(*layout.sample(0, i)[::2]).mean() for i in range(30)]
    assert np.mean(scores) >= 0.98  # two touching squares of one colour can merge into one region


def test_placement_fails_objects_moved_recoloured_or_resized():
    for i in range(10):
        _, _, things = layout.sample(3, i)
        moved = [layout.Thing(t.shape, t.colour, 1 - t.cx, 1 - t.cy, t.r) for t in things]
        far = [t for t, m in zip(things, moved) if np.hypot(t.cx - m.cx, t.cy - m.cy) > 2 * t.r]
        assert not layout.placed(layout.render(moved), far).any()
        recoloured = [layout.Thing(t.shape, (t.colour + 1) % len(data.COLOURS), t.cx, t.cy, t.r) for t in things]
        if len({t.colour for t in things}) == 1:
            assert not layout.placed(layout.render(recoloured), things).any()
        small = [layout.Thing(t.shape, t.colour, t.cx, t.cy, t.r * 0.6) for t in things]
        assert not layout.placed(layout.render(small), things).any()  # under half the area
    assert layout.placement(np.full((1, 128, 128, 3), 255, np.uint8), [things]).tolist() == [0.0]


def test_the_issue_probe_fails_a_centred_circle_and_passes_a_placed_one():
    centred = layout.render([layout.Thing(0, 0, 0.5, 0.5, 0.14)])
    probes = layout.offcentre_circles()
    assert [bool(layout.placed(centred, p)[0]) for p in probes] == [False] * 4
    assert all(layout.placed(layout.render(p), p)[0] for p in probes)
