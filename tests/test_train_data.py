"""reference/train/data.py: the generated scenes are deterministic, captioned as drawn, and the
held-out evaluation pairs never reach training."""

from __future__ import annotations

import re

import numpy as np

from reference.train import data


def test_samples_are_deterministic_and_independent_of_count():
    images, captions, labels = data.dataset(seed=3, count=6, size=64)
    image, caption, lab = data.sample(3, 4, 64)
    assert np.array_equal(images[4], image) and captions[4] == caption and tuple(labels[4]) == lab.as_tuple()
    again, _, _ = data.dataset(seed=3, count=6, size=64)
    assert np.array_equal(images, again)
    other, _, _ = data.dataset(seed=4, count=6, size=64)
    assert not np.array_equal(images, other)


def _parse(caption: str) -> data.Labels:
    """Labels read back from a caption with a regex independent of `data.caption`."""
    thing = r"a (\w+) (\w+)"
    caption = caption.removesuffix(" on a white background")
    s, c = {n: i for i, n in enumerate(data.SHAPES)}, {n: i for i, n in enumerate(data.COLOUR_NAMES)}
    for pattern, layout, flip in (
        (rf"^{thing}$", 0, False),
        (rf"^{thing} above {thing}$", 1, False),
        (rf"^{thing} below {thing}$", 1, True),
        (rf"^{thing} to the left of {thing}$", 2, False),
        (rf"^{thing} to the right of {thing}$", 2, True),
    ):
        m = re.match(pattern, caption)
        if m:
            g = m.groups()
            if layout == 0:
                return data.Labels(0, s[g[1]], c[g[0]])
            a, b = (g[2:], g[:2]) if flip else (g[:2], g[2:])
            return data.Labels(layout, s[a[1]], c[a[0]], s[b[1]], c[b[0]])
    raise AssertionError(f"unparsable caption {caption!r}")


def test_captions_state_the_labels_and_use_every_phrasing():
    _, captions, labels = data.dataset(seed=0, count=300, size=32)
    for text, lab in zip(captions, labels):
        assert _parse(text).as_tuple() == tuple(lab), text
    joined = " | ".join(captions)
    for phrase in (" above ", " below ", " to the left of ", " to the right of ", "on a white background"):
        assert phrase in joined
    assert 0.18 < float(np.mean(labels[:, 0] == 0)) < 0.32  # P_SINGLE = 0.25: two-shape scenes the majority


def test_heldout_pairs_never_sampled_for_training():
    rng = np.random.default_rng(0)
    seen = {data.sample_labels(rng) for _ in range(5000)}
    assert not seen & data.HELDOUT
    assert len(data.HELDOUT) == 24
    evals = data.eval_captions()
    assert len(evals) == 36 and len({c for c, _ in evals}) == 36
    assert {lab for _, lab in evals if lab.layout} == data.HELDOUT
    for text, lab in evals:
        assert _parse(text) == lab


def test_render_places_colours_where_the_layout_says():
    lab = data.Labels(1, 1, data.COLOUR_NAMES.index("red"), 1, data.COLOUR_NAMES.index("blue"))  # red square above blue
    image = data.render(lab, 64, np.random.default_rng(0)).astype(int)
    red = np.all(np.abs(image - data.COLOURS["red"]) < 30, axis=-1)
    blue = np.all(np.abs(image - data.COLOURS["blue"]) < 30, axis=-1)
    assert red.sum() > 50 and blue.sum() > 50
    assert np.nonzero(red)[0].mean() < 32 < np.nonzero(blue)[0].mean()  # rows: red on top
    white = np.all(image == 255, axis=-1)
    assert white.mean() > 0.5


def test_eval_groups_separate_seen_from_heldout_pairs():
    groups = data.eval_groups()
    assert [len(v) for v in groups.values()] == [12, 24, 24]
    seen = {lab for _, lab in groups["seen pair"]}
    assert len(seen) == 24 and not seen & data.HELDOUT
    assert {lab for _, lab in groups["held-out pair"]} == data.HELDOUT
    train = set(data.training_captions())
    assert all(text in train for text, _ in groups["single"] + groups["seen pair"])
    assert not any(text in train for text, _ in groups["held-out pair"])
    assert set(data.captions(0, 400)) <= train  # the stream's captions are all indexed


def test_unknown_words():
    assert data.unknown_words("a red circle above a blue square") == []
    assert data.unknown_words("A purple star, above a Red circle.") == ["purple", "star"]


def test_word_roles_mark_each_objects_words_whatever_the_phrasing():
    captions = [
        "a red circle above a blue square",
        "a blue square below a red circle on a white background",
        "a green triangle on a white background",
        "a yellow circle to the right of a red square",
    ]
    roles = data.word_roles(captions, 64)
    assert roles.shape == (4, 64) and roles.dtype == np.int64

    def role_of(i, word):
        start = captions[i].index(word)
        span = roles[i, start : start + len(word)]
        assert (span == span[0]).all()
        return int(span[0])

    assert (role_of(0, "red"), role_of(0, "circle"), role_of(0, "blue"), role_of(0, "square")) == (1, 1, 2, 2)
    assert (role_of(1, "red"), role_of(1, "circle"), role_of(1, "blue"), role_of(1, "square")) == (1, 1, 2, 2)
    assert (role_of(2, "green"), role_of(2, "triangle"), role_of(2, "white")) == (1, 1, 0)  # background: no role
    assert (role_of(3, "red"), role_of(3, "yellow")) == (1, 2)  # "B to the right of A": A is the left object
    assert roles[0, captions[0].index("above")] == 0 and roles[0, len(captions[0]) :].sum() == 0
