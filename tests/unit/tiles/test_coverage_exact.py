"""Tile/mask coverage against exact rational interval arithmetic, with every axis anisotropic.

The reference below shares no code with :mod:`mask_first.tiles.coverage`: it
intersects the tile's ROI with each mask pixel as two 1-D intervals of
level-0 micrometres in :class:`fractions.Fraction` (exact for any float input)
and sums ``overlap_x * overlap_y`` over the pixels of a label. Every draw has
``mpp_x != mpp_y`` for the slide level and for the mask, a ROI with
``width != height`` and a non-zero offset, so a y that borrows an x scale
anywhere changes the answer.
"""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np
import pytest
import shapely

from mask_first.tiles.coverage import overlap_fractions, retain


def _overlaps_1d(a: F, b: F, n: int, step: F) -> list[F]:
    """Length of [a, b) inside each of the n cells [k*step, (k+1)*step)."""
    return [max(F(0), min(b, (k + 1) * step) - max(a, k * step)) for k in range(n)]


def exact_fractions(mask, mask_mpp, roi, x, y, mpp):
    """{label: Fraction} of the rectangle ``roi`` of the tile at (x, y), by interval arithmetic in µm."""
    (mmx, mmy), (mx, my) = (F(mask_mpp[0]), F(mask_mpp[1])), (F(mpp[0]), F(mpp[1]))
    rx, ry, rw, rh = (F(v) for v in roi)
    x0, y0 = (F(x) + rx) * mx, (F(y) + ry) * my  # µm
    ox = _overlaps_1d(x0, x0 + rw * mx, mask.shape[1], mmx)
    oy = _overlaps_1d(y0, y0 + rh * my, mask.shape[0], mmy)
    total = rw * mx * rh * my
    out = {}
    for v in np.unique(mask).tolist():
        rows, cols = np.nonzero(mask == v)
        out[v] = sum((oy[i] * ox[j] for i, j in zip(rows.tolist(), cols.tolist())), F(0)) / total
    out[0] = 1 - sum((f for v, f in out.items() if v != 0), F(0))  # outside the mask is label 0
    return out


ANISOTROPIC = [
    # (mask mpp (x, y), slide-level mpp (x, y), roi (x, y, w, h))
    ((8.0, 2.0), (1.0, 0.25), (0, 0, 32, 64)),
    ((2.0, 8.0), (0.25, 1.0), (3, 5, 40, 24)),
    ((4.0, 6.0), (0.5, 1.5), (2, 1, 17, 9)),
    ((3.3, 1.7), (0.7, 0.9), (5, 2, 21, 11)),
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mask_mpp, mpp, roi", ANISOTROPIC)
def test_rectangle_coverage_equals_exact_interval_arithmetic(seed, mask_mpp, mpp, roi):
    rng = np.random.default_rng(seed)  # fixed seeds: the same draws on every run
    mask = rng.choice(np.array([0, 128, 255], np.uint8), size=(11, 9))
    ext_x, ext_y = 9 * mask_mpp[0] / mpp[0], 11 * mask_mpp[1] / mpp[1]  # mask extent in level pixels
    xs = np.concatenate([rng.integers(-20, int(ext_x), 10), rng.uniform(-5, ext_x, 5)])
    ys = np.concatenate([rng.integers(-20, int(ext_y), 10), rng.uniform(-5, ext_y, 5)])
    got = overlap_fractions(mask, mask_mpp, roi, xs, ys, *mpp)
    for k, (x, y) in enumerate(zip(xs, ys)):
        ref = exact_fractions(mask, mask_mpp, roi, x, y, mpp)
        for v, frac in ref.items():
            assert got[str(v)][k] == pytest.approx(float(frac), abs=1e-12), (v, x, y)


def test_swapping_the_mask_axes_changes_the_answer():
    """The reference itself can tell x from y for these draws (so the tests above can fail)."""
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 255], np.uint8), size=(11, 9))
    a = exact_fractions(mask, (8.0, 2.0), (0, 0, 32, 64), 10, 20, (1.0, 0.25))[255]
    b = exact_fractions(mask, (2.0, 8.0), (0, 0, 32, 64), 10, 20, (1.0, 0.25))[255]
    c = exact_fractions(mask, (8.0, 2.0), (0, 0, 32, 64), 10, 20, (1.0, 1.0))[255]
    assert len({a, b, c}) == 3


def _l_shape(ax, ay, aw, ah, bw, bh):
    """An L: box A plus box B under it, left-aligned (B narrower), as one polygon."""
    return shapely.Polygon([(ax, ay), (ax + aw, ay), (ax + aw, ay + ah), (ax + bw, ay + ah),
                            (ax + bw, ay + ah + bh), (ax, ay + ah + bh)])


@pytest.mark.parametrize("mask_mpp, mpp", [((8.0, 2.0), (1.0, 0.25)), ((2.0, 6.0), (0.75, 0.5)), ((3.3, 1.7), (0.7, 0.9))])
@pytest.mark.parametrize("seed", range(3))
def test_polygon_path_equals_the_rectangle_path_on_an_l_shape(seed, mask_mpp, mpp):
    """Area is additive: the polygon path on an L equals the rectangle path on its two boxes."""
    rng = np.random.default_rng(100 + seed)
    mask = rng.choice(np.array([0, 255], np.uint8), size=(14, 12))
    a, b = (3.0, 2.0, 30.0, 12.0), (3.0, 14.0, 10.0, 20.0)  # (x, y, w, h); B sits under A
    poly = _l_shape(3.0, 2.0, 30.0, 12.0, 10.0, 20.0)
    assert not poly.equals(poly.envelope)  # so overlap_fractions takes its polygon path
    xs = np.concatenate([rng.integers(-10, 60, 8), rng.uniform(-10, 60, 4)])
    ys = np.concatenate([rng.integers(-10, 80, 8), rng.uniform(-10, 80, 4)])
    got = overlap_fractions(mask, mask_mpp, poly, xs, ys, *mpp)
    ra = overlap_fractions(mask, mask_mpp, a, xs, ys, *mpp)
    rb = overlap_fractions(mask, mask_mpp, b, xs, ys, *mpp)
    bbox = 30.0 * 32.0
    expected = (ra["255"] * a[2] * a[3] + rb["255"] * b[2] * b[3]) / bbox
    np.testing.assert_allclose(got["255"], expected, atol=1e-9)
    np.testing.assert_allclose(got["0"], poly.area / bbox - expected, atol=1e-9)
    assert (expected > 0).any() and (expected < poly.area / bbox).any()


def test_polygon_path_on_a_box_equals_the_rectangle_path():
    """The polygon path (called directly: overlap_fractions sends any box to the rectangle path) on a box."""
    from mask_first.tiles import coverage

    rng = np.random.default_rng(3)
    mask = rng.choice(np.array([0, 255], np.uint8), size=(30, 30))
    xs, ys = rng.integers(0, 200, 50), rng.integers(0, 200, 50)
    rect = overlap_fractions(mask, (3.3, 2.1), (4, 2, 20, 10), xs, ys, 1.0, 0.6)
    sx, sy = 1.0 / 3.3, 0.6 / 2.1
    poly = coverage._polygon_fractions(mask, [255], shapely.box(4, 2, 24, 12), np.asarray(xs, float),
                                       np.asarray(ys, float), sx, sy)
    np.testing.assert_allclose(poly[255], rect["255"], atol=1e-12)
    assert 0 < rect["255"].mean() < 1


@pytest.mark.parametrize("mask_mpp, mpp", [((8.0, 2.0), (1.0, 0.25)), ((2.0, 4.0), (0.5, 0.25))])
def test_anisotropic_triangle_matches_supersampled_brute_force(mask_mpp, mpp):
    rng = np.random.default_rng(7)
    mask = rng.choice(np.array([0, 255], np.uint8), size=(12, 12))
    tri = shapely.Polygon([(0, 0), (16, 3), (6, 24)])  # bbox 16 x 24 level pixels
    xs, ys = rng.integers(-4, 40, 8), rng.integers(-4, 60, 8)
    got = overlap_fractions(mask, mask_mpp, tri, xs, ys, *mpp)
    ss = 32
    u = (np.arange(16 * ss) + 0.5) / ss
    v = (np.arange(24 * ss) + 0.5) / ss
    gx, gy = np.meshgrid(u, v)
    inside = shapely.contains_xy(tri, gx, gy)
    for k in range(len(xs)):
        col = np.floor((xs[k] + gx) * mpp[0] / mask_mpp[0]).astype(int)
        row = np.floor((ys[k] + gy) * mpp[1] / mask_mpp[1]).astype(int)
        ok = (col >= 0) & (col < 12) & (row >= 0) & (row < 12)
        vals = np.where(ok, mask[np.clip(row, 0, 11), np.clip(col, 0, 11)], 0)
        ref = ((vals == 255) & inside).sum() / inside.size
        assert got["255"][k] == pytest.approx(ref, abs=0.01), k


def test_keep_rule_retains_a_tile_exactly_at_the_threshold():
    # 2 x 2 mask at 1 µm/px, left column tissue; 2 x 2 px tiles at 1 µm/px
    mask = np.array([[255, 0], [255, 0]], np.uint8)
    fr = overlap_fractions(mask, 1.0, (0, 0, 2, 2), [0, -1, 1, -2], [0, 0, 0, 0], 1.0, 1.0)
    np.testing.assert_array_equal(fr["255"], [0.5, 0.5, 0.0, 0.0])  # hand-worked: exact halves
    np.testing.assert_array_equal(retain(fr, 255, 0.5), [True, True, False, False])
    np.testing.assert_array_equal(retain(fr, 255, 0.25), [True, True, False, False])
    np.testing.assert_array_equal(retain(fr, 255, 0.75), [False] * 4)
    np.testing.assert_array_equal(retain(fr, 128, 0.0), [False] * 4)  # label absent: nothing kept
    np.testing.assert_array_equal(retain(fr, 0, 1.0), [False, False, True, True])


def test_keep_rule_forgives_float_rounding_at_the_threshold_only():
    # an area ratio that is exactly 1/2 on paper can come out one ulp short in float64
    short = np.nextafter(0.5, 0.0)
    fr = {"0": 1 - np.array([short, 0.5 - 1e-6, 0.5]), "255": np.array([short, 0.5 - 1e-6, 0.5])}
    np.testing.assert_array_equal(retain(fr, 255, 0.5), [True, False, True])
