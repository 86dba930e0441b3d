"""The keep rule through the filter step (files in, files out) against exact interval arithmetic.

Everything that could be confused with its other axis differs: tiles of
32 x 64 px (non-square) at 1.0 x 0.25 µm/px, a mask at 8 x 2 µm/px. All of
these are powers of two, so the step's float arithmetic is exact and a tile
whose exact tissue fraction equals the threshold must come out equal to it
and be retained.
"""

from __future__ import annotations

import json
from fractions import Fraction as F

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_pyramid_tiff
from mask_first.io import write_table
from mask_first.pipeline import STATS_KEY, filter_tiles
from mask_first.tissue.overlay import write_mask_overlay

MASK_MPP = (8.0, 2.0)
TILE_MPP = (1.0, 0.25)
TILE = (32, 64)  # px of the tiling level: 32 x 16 µm = 4 x 8 mask pixels


def _exact_fraction(mask, value, x, y) -> F:
    """Tissue fraction of the tile at (x, y) by 1-D interval overlaps in µm (Fractions)."""
    (mmx, mmy), (mx, my) = (F(v) for v in MASK_MPP), (F(v) for v in TILE_MPP)
    x0, x1 = F(int(x)) * mx, F(int(x) + TILE[0]) * mx
    y0, y1 = F(int(y)) * my, F(int(y) + TILE[1]) * my
    total = F(0)
    for i, j in zip(*np.nonzero(mask == value)):
        ox = max(F(0), min(x1, (int(j) + 1) * mmx) - max(x0, int(j) * mmx))
        oy = max(F(0), min(y1, (int(i) + 1) * mmy) - max(y0, int(i) * mmy))
        total += ox * oy
    return total / ((x1 - x0) * (y1 - y0))


@pytest.fixture
def scored(tmp_path, textured_image):
    rng = np.random.default_rng(15)
    mask = rng.choice(np.array([0, 128, 255], np.uint8), size=(20, 12), p=[0.4, 0.2, 0.4])
    # the tile at (0, 0) covers mask columns 0-3 and rows 0-7: left half tissue, right half not
    mask[0:8, 0:2] = 255
    mask[0:8, 2:4] = 0
    mask_path = write_mask_overlay(tmp_path / "mask.tiff", mask, MASK_MPP)
    slide = write_pyramid_tiff(tmp_path / "slide.tif", textured_image, mpp=0.5, compression="zlib")
    # a grid whose stride does not follow the mask grid (tile edges inside mask pixels),
    # plus tiles aligned to it, plus tiles half outside the mask
    gx, gy = np.meshgrid(np.arange(0, 96, 20), np.arange(0, 160, 36))
    xs = np.concatenate([gx.ravel(), [0, 32, 64, -16, 80]])
    ys = np.concatenate([gy.ravel(), [0, 64, 0, 0, 140]])
    n = len(xs)
    tiles = tmp_path / "tiles.parquet"
    write_table(tiles, {
        "slide_id": np.full(n, "s", object), "tile_id": np.arange(n, dtype=np.int64),
        "level": np.zeros(n, np.int32), "x": xs.astype(np.int64), "y": ys.astype(np.int64),
        "tile_extent_x": np.full(n, TILE[0], np.int32), "tile_extent_y": np.full(n, TILE[1], np.int32),
        "mpp_x": np.full(n, TILE_MPP[0]), "mpp_y": np.full(n, TILE_MPP[1]),
    })
    out, qc = tmp_path / "retained.parquet", tmp_path / "qc.png"
    kept = filter_tiles(str(tiles), str(slide), str(out), str(qc), method="mask", threshold=0.5,
                        mask=str(mask_path), value=255, qc_size=128)
    return mask, pq.read_table(out), kept


def test_fractions_equal_exact_interval_arithmetic_for_every_label(scored):
    mask, table, _ = scored
    rows = table.to_pydict()
    for k, (x, y) in enumerate(zip(rows["x"], rows["y"])):
        exact = {v: _exact_fraction(mask, v, x, y) for v in (128, 255)}
        assert rows["fraction_255"][k] == float(exact[255]), (x, y)  # dyadic: exact in float
        assert rows["fraction_128"][k] == float(exact[128]), (x, y)
        assert rows["fraction_0"][k] == pytest.approx(float(1 - exact[128] - exact[255]), abs=1e-15)


def test_retained_is_exactly_fraction_at_least_threshold_and_the_threshold_tile_is_kept(scored):
    mask, table, kept = scored
    rows = table.to_pydict()
    exact = [_exact_fraction(mask, 255, x, y) for x, y in zip(rows["x"], rows["y"])]
    assert rows["retained"] == [f >= F(1, 2) for f in exact]
    at_threshold = [k for k, f in enumerate(exact) if f == F(1, 2)]
    assert at_threshold and all(rows["retained"][k] for k in at_threshold)
    assert (rows["x"][0], rows["y"][0]) == (0, 0) and 0 in at_threshold  # the hand-made half tile
    assert 0 < kept == sum(rows["retained"]) < len(exact)


def test_stats_record_tile_counts_and_the_tissue_area_in_mm2(scored):
    mask, table, kept = scored
    stats = json.loads(table.schema.metadata[STATS_KEY])
    assert stats["tiles_total"] == table.num_rows and stats["tiles_retained"] == kept
    # one mask pixel is 8 x 2 µm = 16 µm² = 1.6e-5 mm²
    assert stats["tissue_area_mm2"] == pytest.approx(np.count_nonzero(mask == 255) * 16 / 1e6, rel=1e-12)
