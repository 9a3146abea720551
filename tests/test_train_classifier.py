"""reference/train/classifier.py: the Frechet distance and adherence scoring are right on known
cases, and a few probe training steps already read colours back above chance."""

from __future__ import annotations

import numpy as np
import pytest

from reference.train import classifier, data


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 2))
    assert classifier.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a * np.array([2.0, 1.0]) + np.array([1.0, 0.0])  # N([1,0], diag(4,1)) vs N(0, I)
    # |mu|^2 + tr(S_a + S_b - 2 sqrt(S_a S_b)) = 1 + (1 + 4 - 2*2) + 0 = 2, up to sampling error
    assert classifier.frechet_distance(a, b) == pytest.approx(2.0, abs=0.1)


def test_adherence_counts_every_named_attribute():
    want = np.array([[0, 1, 2, -1, -1], [1, 0, 0, 2, 3], [2, 1, 1, 1, 1]])
    pred = np.array([[0, 1, 2, -1, -1], [1, 0, 0, 2, 0], [2, 1, 1, 1, 1]])
    got = classifier.adherence(pred, want)
    assert got["all"] == pytest.approx(2 / 3) and got["pair_all"] == 0.5 and got["single_all"] == 1.0
    assert got["colour"] == pytest.approx(4 / 5) and got["shape"] == 1.0 and got["layout"] == 1.0


def test_probe_learns_colours_in_a_few_steps():
    model = classifier.train_classifier(seed=7, num_images=256, steps=30, batch_size=32, size=64)
    images, _, labels = data.dataset(8, 128, 64, heldout=True)
    got = classifier.adherence(model.predict(classifier.to_tensor(images)), labels)
    assert got["colour"] > 0.5 and got["layout"] > 0.8, got  # chance: 0.25 and 0.33
    assert classifier.SceneClassifier().embed(classifier.to_tensor(images[:4])).shape == (4, classifier.FEATURES)
