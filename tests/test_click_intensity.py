"""What the clicks say about intensities (lib/transforms/click_intensity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.transforms.click_intensity import FIT_FLOOR, intensity_evidence, reweigh_probability, seed_components


def test_a_background_click_turns_the_voxels_that_look_like_it_against_the_object():
    """Two tissues (0 and 1, noisy) and a third (2): with foreground seeds on tissue 1 and a
    background click on tissue 2, tissue-2 voxels get negative evidence and tissue-1 voxels
    positive; a probability the network gave 0.9 everywhere falls below 0.5 on (nearly all of)
    tissue 2 and nowhere else."""
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40), int)
    labels[10:30, 10:30] = 1
    labels[10:30, 25:30] = 2  # a leak of another intensity inside the network's mask
    image = labels.astype(np.float32) + rng.normal(0, 0.05, labels.shape).astype(np.float32)
    evidence = intensity_evidence(image, np.array([[12, 12], [27, 12]]), np.array([[20, 27]]))
    assert evidence.shape == image.shape and evidence.dtype == np.float32
    assert np.all(evidence[labels == 2] < 0) and evidence[labels == 2].mean() < -3
    assert np.all(evidence[labels == 1] > 0) and evidence[labels == 1].mean() > 3
    assert np.abs(evidence).max() <= np.log((1 + FIT_FLOOR) / FIT_FLOOR) + 1e-5
    prob = reweigh_probability(np.full(image.shape, 0.9, np.float32), evidence, 1.0)
    assert np.mean(prob[labels == 2] < 0.5) > 0.9 and np.all(prob[labels == 1] >= 0.9)


def test_seeds_of_one_intensity_change_little_and_unseen_intensities_nothing():
    """Both kinds of seed on one tissue: its voxels get little evidence either way (the noise
    of two 27-voxel fits), and a tissue neither kind's seeds have seen gets none at all; a
    kind without seeds gives no evidence."""
    rng = np.random.default_rng(1)
    labels = np.zeros((30, 30, 10), int)
    labels[5:25, 5:25] = 1
    image = (labels + rng.normal(0, 0.05, labels.shape)).astype(np.float32)
    evidence = intensity_evidence(image, np.array([[8, 8, 5]]), np.array([[20, 20, 5]]))
    assert np.abs(evidence[labels == 1]).mean() < 0.3
    assert np.abs(evidence[labels == 0]).max() < 0.01, "no seed saw tissue 0"
    assert intensity_evidence(image, np.array([[5, 5, 4]]), np.zeros((0, 3), int)) is None
    p = np.random.default_rng(2).random(image.shape).astype(np.float32)
    np.testing.assert_array_equal(reweigh_probability(p, None, 1.0), p)
    np.testing.assert_array_equal(reweigh_probability(p, evidence, 0.0), p)
    with pytest.raises(ValueError, match="does not match"):
        reweigh_probability(p, evidence[:5], 1.0)


def test_a_seed_component_is_its_neighbourhood_with_a_floor_on_the_deviation():
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    mean, std = seed_components(image, np.array([[2, 2]]), 0.0)[0]
    assert mean == pytest.approx(12.0) and std == pytest.approx(np.std([6, 7, 8, 11, 12, 13, 16, 17, 18]))
    corner = seed_components(np.zeros((5, 5)), np.array([[0, 0]]), 0.5)[0]
    assert corner.tolist() == [0.0, 0.5]
