"""Diversity scores by hand."""

from __future__ import annotations

import numpy as np
import pytest

from rewards.diversity import CandidateDiversity, footprint_diversity, pairwise_diversity
from simulation.protocols import CandidateMetric


def _straight(length: float, lateral: float = 0.0) -> np.ndarray:
    x = np.linspace(length / 8, length, 8)
    return np.stack([x, np.full(8, lateral)], -1)


def test_identical_candidates_have_zero_diversity() -> None:
    c = np.stack([_straight(20.0)] * 4)
    assert pairwise_diversity(c) == pytest.approx(0.0)
    assert footprint_diversity(c) == pytest.approx(0.0)


def test_pairwise_diversity_hand_computed() -> None:
    # Two candidates, waypoints at (x, +1) and (x, -1): pairwise distance 2, mean norm sqrt(x^2 + 1).
    a, b = _straight(8.0, 1.0), _straight(8.0, -1.0)
    x = np.linspace(1.0, 8.0, 8)
    expected = np.minimum(1.0, 2.0 / np.sqrt(x**2 + 1)).mean()
    assert pairwise_diversity(np.stack([a, b])) == pytest.approx(expected, rel=1e-6)
    # Batched over scenes.
    out = pairwise_diversity(np.stack([np.stack([a, b]), np.stack([a, a])]))
    np.testing.assert_allclose(out, [expected, 0.0], rtol=1e-6)


def test_footprint_diversity_grows_with_spread() -> None:
    close = np.stack([_straight(30.0, 0.0), _straight(30.0, 0.5)])
    far = np.stack([_straight(30.0, 0.0), _straight(30.0, 10.0)])
    d_close, d_far = footprint_diversity(close), footprint_diversity(far)
    assert 0.0 < d_close < d_far
    # Disjoint footprints of equal size: each covers half of the union -> 1 - 0.5.
    assert d_far == pytest.approx(0.5, abs=0.05)


def test_candidate_diversity_is_pairwise_diversity_of_one_scene() -> None:
    a, b = _straight(20.0, 1.0), _straight(20.0, -1.0)
    metric = CandidateDiversity()
    assert isinstance(metric, CandidateMetric)
    value = metric(np.stack([a, b]))
    assert isinstance(value, float) and value == pytest.approx(float(pairwise_diversity(np.stack([a, b]))))
    poses = np.concatenate([np.stack([a, b]), np.zeros((2, 8, 1))], -1)  # (K, 8, 3): the heading is ignored
    assert metric(poses) == value
    assert metric(a[None]) is None and metric(a) is None  # one candidate; not (K, N, 2+)
