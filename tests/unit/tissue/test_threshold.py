"""Multi-class Otsu (:mod:`mask_first.tissue.threshold`) against brute force and its optimality criterion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask_first.tissue.threshold import multi_otsu_thresholds


def _criterion(hist: np.ndarray, thresholds) -> float:
    """Between-class variance up to constants: sum over classes of S_k^2 / P_k."""
    edges = [-1, *thresholds, len(hist) - 1]
    v = 0.0
    for k in range(len(edges) - 1):
        idx = np.arange(edges[k] + 1, edges[k + 1] + 1)
        w = hist[idx].sum()
        if w > 0:
            v += (hist[idx] * idx).sum() ** 2 / w
    return v


def _brute_force(hist: np.ndarray, classes: int) -> tuple[int, ...]:
    return max(itertools.combinations(range(len(hist) - 1), classes - 1), key=lambda t: _criterion(hist, t))


def test_multi_otsu_equals_brute_force_on_random_histograms():
    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(4, 24))
        hist = rng.random(n) * 1000  # continuous counts: no ties
        for classes in (2, 3):
            got = multi_otsu_thresholds(hist, classes)
            assert got == _brute_force(hist, classes)


def test_multi_otsu_all_pairs_64_bins():
    """3 classes on a 64-bin bimodal-plus-tail histogram: exhaustive search over all 1953 pairs."""
    x = np.arange(64)
    hist = 500 * np.exp(-((x - 12) ** 2) / 18) + 300 * np.exp(-((x - 35) ** 2) / 30) + 900 * np.exp(-((x - 58) ** 2) / 4)
    hist = np.round(hist) + 1
    best = max(((a, b) for a in range(63) for b in range(a + 1, 63)), key=lambda t: _criterion(hist, t))
    assert multi_otsu_thresholds(hist, 3) == best
    assert 12 < best[0] < 35 < best[1] < 58


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=4, max_size=14), st.integers(2, 3))
def test_multi_otsu_criterion_is_optimal(counts, classes):
    """Integer histograms (ties, empty bins): the result reaches the brute-force optimum."""
    hist = np.asarray(counts, float)
    if np.count_nonzero(hist) == 0:
        return
    got = multi_otsu_thresholds(hist, classes)
    assert len(got) == classes - 1 and list(got) == sorted(set(got))
    assert _criterion(hist, got) == pytest.approx(_criterion(hist, _brute_force(hist, classes)), rel=1e-12)


def test_multi_otsu_threshold_in_middle_of_empty_gap():
    hist = np.zeros(256)
    hist[100:110] = 5
    hist[200:210] = 5
    # any threshold in 109..199 separates the two blocks; the canonical one is the middle
    assert multi_otsu_thresholds(hist, 2) == (154,)


def test_multi_otsu_rejects_bad_input():
    with pytest.raises(ValueError):
        multi_otsu_thresholds(np.ones(10), 1)
    with pytest.raises(ValueError):
        multi_otsu_thresholds(np.ones(10), 4)
    with pytest.raises(ValueError):
        multi_otsu_thresholds(np.ones(2), 3)
    with pytest.raises(ValueError):
        multi_otsu_thresholds(-np.ones(10), 2)
