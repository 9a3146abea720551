"""reference/train/control.py: the conditions are computed from the scene, and the control IoU reads
pixels only (a scene scores 1 against itself, a blank image 0, a shifted copy in between)."""

from __future__ import annotations

import numpy as np
import pytest

from reference.train import control, data


@pytest.fixture(scope="module")
def scenes():
    return control.control_set(3, 6, "edge")


def test_edge_condition_outlines_the_shapes(scenes):
    controls, images, _, _ = scenes
    assert controls.dtype == np.uint8 and controls.shape == images.shape
    lines = controls[..., 0] == 0  # black on white
    fg = control.foreground(images)
    for line, mask in zip(lines, fg):
        assert 0.01 < line.mean() < 0.2  # outlines, not fills or nothing
        # every outline pixel is within a pixel or two of the shape's boundary, inside or out
        boundary = control._dilate(mask) & control._dilate(~mask)
        assert (line & ~control._dilate(control._dilate(boundary))).sum() == 0
        assert (control.condition(images[0], "edge") == controls[0]).all()


def test_mask_condition_is_the_silhouette(scenes):
    _, images, _, _ = scenes
    for image in images:
        silhouette = control.condition(image, "mask")[..., 0] == 0
        assert (silhouette == control.foreground(image)).all()
    with pytest.raises(ValueError, match="unknown condition"):
        control.condition(images[0], "depth")


def test_control_set_matches_the_training_data():
    controls, images, captions, labels = control.control_set(7, 3, "mask", start=5)
    ref_images, ref_captions, ref_labels = data.dataset(7, 3, start=5)
    assert (images == ref_images).all() and captions == ref_captions and (labels == ref_labels).all()
    assert len(controls) == 3


def test_control_iou_reads_pixels(scenes):
    _, images, _, _ = scenes
    assert np.allclose(control.control_iou(images, images), 1.0)
    blank = np.full_like(images, 255)
    assert np.allclose(control.control_iou(blank, images), 0.0)
    shifted = np.roll(images, 6, axis=2)
    iou = control.control_iou(shifted, images)
    assert ((iou > 0.05) & (iou < 0.95)).all(), iou


def test_mask_iou_of_empty_masks_is_one():
    empty = np.zeros((2, 4, 4), dtype=bool)
    assert control.mask_iou(empty, empty).tolist() == [1.0, 1.0]
    one = empty.copy()
    one[0, 0, 0] = True
    assert control.mask_iou(one, empty).tolist() == [0.0, 1.0]


def test_to_uint8_rounds_like_the_pipeline():
    x = np.array([0.0, 0.5, 1.0, 0.2]).reshape(1, 1, 2, 2).repeat(3, axis=1)
    out = control.to_uint8(x)
    assert out.shape == (1, 2, 2, 3) and out[0, 0, 1, 0] == 128 and out[0, 1, 0, 0] == 255
