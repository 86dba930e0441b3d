"""Scenes for the tissue tests: an in-memory slide, box pyramids, the rectangle scene and its exact truth, pen strokes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_pyramid_tiff
from mask_first.slides import Level, Slide


GLASS = (240, 240, 240)


TISSUE_RGB = (200, 120, 175)  # pink/purple H&E-like


class ArraySlide(Slide):
    """In-memory pyramid; records every read as (level, x, y, width, height)."""

    def __init__(self, levels: list[np.ndarray], mpp: float | tuple[float, float], name: str = "array-slide"):
        self.path = Path(name)
        self.vendor = "test"
        self._arrays = levels
        h0, w0 = levels[0].shape[:2]
        self.levels = [Level(a.shape[1], a.shape[0], w0 / a.shape[1], h0 / a.shape[0]) for a in levels]
        self.mpp_x, self.mpp_y = (mpp, mpp) if np.ndim(mpp) == 0 else mpp
        self.reads: list[tuple[int, int, int, int, int]] = []

    def read_regions_into(self, level, xs, ys, width, height, out) -> None:
        a = self._arrays[level]
        for k, (x, y) in enumerate(zip(np.asarray(xs).tolist(), np.asarray(ys).tolist())):
            self.reads.append((level, x, y, width, height))
            out[k] = 255
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + width, a.shape[1]), min(y + height, a.shape[0])
            if x0 < x1 and y0 < y1:
                out[k, y0 - y : y1 - y, x0 - x : x1 - x] = a[y0:y1, x0:x1]


def box_pyramid(img: np.ndarray, n_levels: int) -> list[np.ndarray]:
    levels = [img]
    for _ in range(n_levels - 1):
        a = levels[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        levels.append(a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    return levels


# rectangles (x0, y0, x1, y1) in µm on a 1600 x 1200 µm slide; the last one is a hole
RECTS_UM = [(100, 150, 700, 500), (900, 200, 1450, 900), (300, 700, 650, 1100)]


HOLE_UM = (1050, 400, 1250, 560)


def rect_scene(mpp0: float = 1.0, seed: int = 0) -> np.ndarray:
    """Level-0 RGB of the rectangle scene at ``mpp0`` µm/px (textured tissue, noisy glass)."""
    w, h = round(1600 / mpp0), round(1200 / mpp0)
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[...] = GLASS
    tissue = truth_fraction(w, h, mpp0) >= 0.5
    texture = rng.normal(0, 12, (h, w, 1)).astype(np.float32)
    img[tissue] = np.asarray(TISSUE_RGB, np.float32) + texture[tissue]
    img += rng.normal(0, 2, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _coverage_1d(n: int, px: float, lo: float, hi: float) -> np.ndarray:
    """Fraction of each pixel [j px, (j+1) px) inside [lo, hi) (µm)."""
    j = np.arange(n)
    return np.clip(np.minimum((j + 1) * px, hi) - np.maximum(j * px, lo), 0, None) / px


def truth_fraction(width: int, height: int, mpp: float) -> np.ndarray:
    """Exact tissue area fraction of every pixel of a ``mpp`` grid (rectangles minus the hole)."""
    frac = np.zeros((height, width))
    for x0, y0, x1, y1 in RECTS_UM:
        frac += np.outer(_coverage_1d(height, mpp, y0, y1), _coverage_1d(width, mpp, x0, x1))
    x0, y0, x1, y1 = HOLE_UM
    frac -= np.outer(_coverage_1d(height, mpp, y0, y1), _coverage_1d(width, mpp, x0, x1))
    return frac


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@pytest.fixture(scope="module")
def rect_tiff(tmp_path_factory) -> Path:
    """Tiled pyramidal JPEG TIFF of the rectangle scene: 1600 x 1200 px at 1 µm/px, 3 levels (1, 2, 4 µm/px)."""
    path = tmp_path_factory.mktemp("rect") / "rects.tif"
    return write_pyramid_tiff(path, rect_scene(1.0), mpp=1.0, tile=128, levels=3, compression="jpeg")


def pen_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1 µm/px scene: tissue block, blue/green/black strokes on glass. Returns (rgb, tissue, pen) at 1 µm/px."""
    rng = np.random.default_rng(2)
    h, w = 800, 1200
    img = np.empty((h, w, 3), np.float32)
    img[...] = GLASS
    tissue = np.zeros((h, w), bool)
    tissue[96:496, 96:600] = True  # edges on the 8 µm grid
    img[tissue] = np.asarray(TISSUE_RGB, np.float32) + rng.normal(0, 12, (np.count_nonzero(tissue), 1))
    pen = np.zeros((h, w), bool)
    for (y0, y1), rgb in zip([(560, 620), (660, 720), (740, 780)], [(45, 85, 185), (50, 150, 95), (30, 30, 35)]):
        pen[y0:y1, 80:1150] = True
        img[y0:y1, 80:1150] = rgb
    pen[100:700, 800:860] = True  # a vertical blue stroke
    img[100:700, 800:860] = (60, 90, 190)
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8), tissue, pen
