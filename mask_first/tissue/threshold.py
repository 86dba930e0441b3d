"""Histogram thresholds of the ``otsu`` and ``saturation`` methods: multi-class Otsu and the trust tests."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np


def _hist(img: np.ndarray) -> np.ndarray:
    """256-bin histogram of a uint8 image (OpenCV's is much faster than np.bincount here)."""
    return cv2.calcHist([np.ascontiguousarray(img)], [0], None, [256], [0, 256]).ravel().astype(np.int64)


def multi_otsu_thresholds(hist: np.ndarray, classes: int = 3) -> tuple[int, ...]:
    """Otsu thresholds of a 256-bin histogram for 2 or 3 classes.

    Class ``k`` is the bins ``(t_{k-1}, t_k]``; the thresholds maximise the
    between-class variance. OpenCV has the 2-class case only (``THRESH_OTSU``),
    so both are computed here from cumulative sums (all pairs at once for 3).
    """
    h = np.asarray(hist, np.float64)
    if classes not in (2, 3):
        raise ValueError(f"classes must be 2 or 3, got {classes}")
    if h.ndim != 1 or h.size < classes or (h < 0).any():
        raise ValueError(f"need a 1-D non-negative histogram of at least {classes} bins")
    w = np.cumsum(h)
    s = np.cumsum(h * np.arange(h.size))
    total_w, total_s = w[-1], s[-1]
    if total_w <= 0:
        return (0,) * (classes - 1)

    def term(sw: np.ndarray, ss: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sw > 0, ss * ss / np.where(sw > 0, sw, 1), 0.0)

    def middle_of_best(score: np.ndarray) -> int:
        # ties (an empty gap between classes): the middle one, not the first
        ties = np.flatnonzero(score >= score.max() * (1 - 1e-12))
        return int(ties[len(ties) // 2])

    if classes == 2:
        return (middle_of_best(term(w, s)[:-1] + term(total_w - w, total_s - s)[:-1]),)
    t1, t2 = np.triu_indices(h.size - 1, 1)  # t1 < t2 <= last bin - 1
    score = term(w[t1], s[t1]) + term(w[t2] - w[t1], s[t2] - s[t1]) + term(total_w - w[t2], total_s - s[t2])
    best = middle_of_best(score)
    return int(t1[best]), int(t2[best])


def _class_stats(hist: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    """(weight, mean bin) of the histogram bins lo..hi inclusive."""
    h = hist[lo : hi + 1].astype(np.float64)
    n = h.sum()
    return float(n), float((h * np.arange(lo, hi + 1)).sum() / n) if n else float("nan")


def _grey_threshold(hist: np.ndarray, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Upper Otsu threshold of the grey histogram, or ``fallback_grey`` when the split is not trusted."""
    ts = multi_otsu_thresholds(hist, int(p["classes"]))
    t = ts[-1]
    _, bg_mean = _class_stats(hist, t + 1, 255)
    _, fg_mean = _class_stats(hist, 0, t)
    trusted = (
        math.isfinite(bg_mean) and math.isfinite(fg_mean) and bg_mean >= float(p["min_background_grey"])
        and bg_mean - fg_mean >= float(p["min_contrast"])
    )  # fmt: skip
    used = t if trusted else int(p["fallback_grey"])
    return used, {"otsu_thresholds": list(ts), "threshold": used, "fallback": not trusted}


def _saturation_threshold(hist: np.ndarray, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Otsu threshold of the saturation histogram (0..255), floored at ``min_saturation``."""
    (t,) = multi_otsu_thresholds(hist, 2)
    _, lo_mean = _class_stats(hist, 0, t)
    _, hi_mean = _class_stats(hist, t + 1, 255)
    floor = int(round(255 * float(p["min_saturation"])))
    trusted = (
        math.isfinite(lo_mean) and math.isfinite(hi_mean)
        and lo_mean <= 255 * float(p["max_background_saturation"])
        and hi_mean - lo_mean >= 255 * float(p["min_contrast"])
    )  # fmt: skip
    used = max(t, floor) if trusted else floor
    return used, {"otsu_threshold": t, "threshold": used, "fallback": not trusted}
