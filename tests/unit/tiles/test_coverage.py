"""Exact tile/mask coverage against brute-force supersampled counting."""

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from mask_first.tiles.coverage import overlap_fractions, summed_area_table


def _supersampled_coverage(mask, mask_mpp, x0, y0, w, h, slide_mpp, ss=16, inside=None):
    """Brute force: sample the ROI on a fine grid and look up the mask pixel of every sample."""
    u = (np.arange(int(w * ss)) + 0.5) / ss
    v = (np.arange(int(h * ss)) + 0.5) / ss
    gx, gy = np.meshgrid(u, v)
    keep = np.ones(gx.shape, bool) if inside is None else inside(gx, gy)
    col = np.floor((x0 + gx) * slide_mpp / mask_mpp).astype(int)
    row = np.floor((y0 + gy) * slide_mpp / mask_mpp).astype(int)
    ok = (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
    vals = np.where(ok, mask[np.clip(row, 0, mask.shape[0] - 1), np.clip(col, 0, mask.shape[1] - 1)], 0)
    return {v_: float(((vals == v_) & keep).sum()) / keep.size for v_ in np.unique(np.append(mask, 0))}


def test_summed_area_table_matches_cumulative_sums():
    a = np.arange(12).reshape(3, 4)
    sat = summed_area_table(a)
    assert sat.shape == (4, 5) and sat[3, 4] == a.sum() and sat[2, 3] == a[:2, :3].sum()


def test_hand_worked_half_pixel_example():
    # 2x2 mask at 2 µm/px, tissue only in the top-left pixel; slide at 1 µm/px.
    # A 2x2 tile at (1, 1) covers a quarter of each mask pixel -> 1/4 tissue.
    mask = np.array([[255, 0], [0, 0]], np.uint8)
    r = overlap_fractions(mask, 2.0, (0, 0, 2, 2), [1, 0, 3], [1, 0, 3], 1.0, 1.0)
    np.testing.assert_allclose(r["255"], [0.25, 1.0, 0.0])
    np.testing.assert_allclose(r["0"], [0.75, 0.0, 1.0])


def test_area_outside_the_overlay_counts_as_zero():
    mask = np.full((4, 4), 255, np.uint8)
    r = overlap_fractions(mask, 1.0, (0, 0, 4, 4), [-2, 2, 10], [0, 2, 10], 1.0, 1.0)
    np.testing.assert_allclose(r["255"], [0.5, 0.25, 0.0])
    np.testing.assert_allclose(r["0"], [0.5, 0.75, 1.0])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ratio=st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 7.3]),
    roi=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(1, 24), st.integers(1, 24)),
)
def test_rectangle_overlap_matches_supersampled_brute_force(seed, ratio, roi):
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.array([0, 128, 255], np.uint8), size=(9, 11))
    xs = rng.integers(-20, 60, 12)
    ys = rng.integers(-20, 50, 12)
    got = overlap_fractions(mask, ratio, roi, xs, ys, 1.0, 1.0)
    rx, ry, rw, rh = roi
    for k in range(len(xs)):
        ref = _supersampled_coverage(mask, ratio, xs[k] + rx, ys[k] + ry, rw, rh, 1.0, ss=8)
        for v, frac in ref.items():
            # supersampling at 8 per slide pixel is exact whenever the mask edges land on
            # multiples of 1/8 slide pixel; otherwise it is within one sample row
            tol = 0 if (ratio * 8).is_integer() else 1.5 / (8 * min(rw, rh))
            assert got[str(v)][k] == pytest.approx(frac, abs=tol + 1e-9)


def test_fractions_of_each_tile_sum_to_one_for_rectangles():
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 1, 2, 7], np.uint8), size=(50, 40))
    xs, ys = rng.uniform(-100, 500, 1000), rng.uniform(-100, 500, 1000)
    r = overlap_fractions(mask, 8.0, (0, 0, 256, 256), xs, ys, 0.7, 0.9)
    np.testing.assert_allclose(sum(r.values()), 1.0, atol=1e-12)
    assert set(r) == {"0", "1", "2", "7"}


@pytest.mark.parametrize("mask_mpp", [0.37, 1.0, 2.7, 8.0, 16.0])
def test_inscribed_circle_over_all_tissue_gives_pi_over_4(mask_mpp):
    circle = shapely.Point(128, 128).buffer(128, quad_segs=512)
    mask = np.full((400, 400), 255, np.uint8)
    xs = np.arange(5) * 67  # every circle inside the mask at every mpp ratio
    r = overlap_fractions(mask, mask_mpp * 0.5, circle, xs, xs // 2, 0.5 * 0.25, 0.5 * 0.25)
    np.testing.assert_allclose(r["255"], np.pi / 4, rtol=1e-5)
    np.testing.assert_allclose(r["0"], 0, atol=1e-9)


def test_axis_aligned_shapely_box_takes_the_rectangle_path_with_the_tuple_answer():
    # the polygon path on the same box is compared with this in test_coverage_exact.py
    rng = np.random.default_rng(3)
    mask = rng.choice(np.array([0, 255], np.uint8), size=(30, 30))
    xs, ys = rng.integers(0, 200, 50), rng.integers(0, 200, 50)
    a = overlap_fractions(mask, 3.3, (4, 2, 20, 10), xs, ys, 1.0, 1.0)
    b = overlap_fractions(mask, 3.3, shapely.box(4, 2, 24, 12), xs, ys, 1.0, 1.0)
    np.testing.assert_allclose(a["255"], b["255"], atol=1e-12)
    np.testing.assert_allclose(a["0"] + a["255"], 1.0)  # rectangles sum to 1


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), ratio=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
def test_polygon_overlap_matches_supersampled_brute_force(seed, ratio):
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.array([0, 255], np.uint8), size=(12, 12))
    tri = shapely.Polygon([(0, 0), (16, 3), (6, 16)])
    xs, ys = rng.integers(-4, 30, 6), rng.integers(-4, 30, 6)
    got = overlap_fractions(mask, ratio, tri, xs, ys, 1.0, 1.0)
    inside = lambda gx, gy: shapely.contains_xy(tri, gx, gy)  # noqa: E731
    for k in range(len(xs)):
        ref = _supersampled_coverage(mask, ratio, xs[k], ys[k], 16, 16, 1.0, ss=16, inside=inside)
        # the reference counts samples of the ROI's bounding box, like the definition
        assert got["255"][k] == pytest.approx(ref.get(255, 0.0), abs=0.01)


def test_bad_roi_arguments_raise():
    mask = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError):
        overlap_fractions(mask, 1.0, (0, 0, 0, 4), [0], [0], 1.0, 1.0)
    with pytest.raises(TypeError):
        overlap_fractions(mask, 1.0, "whole tile", [0], [0], 1.0, 1.0)
    with pytest.raises(ValueError):
        overlap_fractions(mask[None], 1.0, (0, 0, 1, 1), [0], [0], 1.0, 1.0)


# ---------------------------------------------------------------------------
# the seed's argument forms: per-tile columns over a table of several overlays
# ---------------------------------------------------------------------------


def _three_overlays(tmp_path):
    """Three overlays with different sizes, labels and mpp (independently random)."""
    from mask_first.tissue.overlay import write_mask_overlay

    rng = np.random.default_rng(11)
    specs = [((40, 52), (0, 255), 8.0), ((33, 29), (0, 128, 255), 4.0), ((20, 20), (0, 255), (16.0, 12.0))]
    out = []
    for k, (shape, labels, mpp) in enumerate(specs):
        mask = rng.choice(np.array(labels, np.uint8), size=shape)
        path = write_mask_overlay(tmp_path / f"m{k}.tiff", mask, mpp)
        out.append((str(path), mask, mpp))
    return out


def _shuffled_table(overlays, n_per=300, seed=5):
    rng = np.random.default_rng(seed)
    rows = []
    for k, (path, mask, _) in enumerate(overlays):
        xs = rng.integers(-50, 900, n_per)
        ys = rng.integers(-50, 700, n_per)
        mpp = rng.choice([0.25, 0.5, 1.0], n_per)  # level mpp varies from row to row
        rows += [(path, x, y, m, 1.5 * m) for x, y, m in zip(xs, ys, mpp)]
    order = rng.permutation(len(rows))
    cols = list(zip(*[rows[i] for i in order]))
    return [np.asarray(c) for c in cols]


@pytest.mark.parametrize("form", ["numpy", "pandas", "pyarrow", "list", "sorted-pandas"])
def test_columns_over_three_overlays_equal_per_overlay_scalar_calls(tmp_path, form):
    import pandas as pd
    import pyarrow as pa

    from mask_first.tiles.coverage import tile_overlay_overlap

    overlays = _three_overlays(tmp_path)
    paths, xs, ys, mx, my = _shuffled_table(overlays)
    if form == "sorted-pandas":
        order = np.argsort(paths, kind="stable")
        paths, xs, ys, mx, my = (a[order] for a in (paths, xs, ys, mx, my))
    conv = {
        "numpy": lambda a: a,
        "pandas": pd.Series,
        "sorted-pandas": pd.Series,
        "pyarrow": pa.array,
        "list": lambda a: a.tolist(),
    }[form]
    roi = shapely.box(0, 0, 64, 48)
    got = tile_overlay_overlap(roi, conv(paths), conv(xs), conv(ys), conv(mx), conv(my))
    assert list(got) == ["0", "128", "255"]
    # independent reference: one scalar call per (overlay, mpp) with the overlay's own array
    for path, mask, mpp in overlays:
        for m in (0.25, 0.5, 1.0):
            sel = (paths == path) & (mx == m)
            ref = overlap_fractions(mask, mpp, (0, 0, 64, 48), xs[sel], ys[sel], m, 1.5 * m)
            for label in got:
                np.testing.assert_allclose(got[label][sel], ref.get(label, 0.0), atol=1e-12)


def test_rows_give_the_seeds_per_tile_dicts_and_its_filter_line_works(tmp_path):
    from mask_first.tiles.coverage import tile_overlay_overlap

    overlays = _three_overlays(tmp_path)
    paths, xs, ys, mx, my = _shuffled_table(overlays, n_per=50)
    got = tile_overlay_overlap((0, 0, 64, 48), paths, xs, ys, mx, my)
    rows = got.rows()
    assert len(rows) == len(paths) == got.n_tiles
    for k in (0, 7, 100):
        assert rows[k] == {label: got[label][k] for label in got if got[label][k] > 0}
    seed_filter = np.array([row.get("255", 0.0) >= 0.5 for row in rows])
    np.testing.assert_array_equal(seed_filter, got.get("255", 0.0) >= 0.5)
    assert 0 < seed_filter.sum() < len(rows)


def test_circle_inscribed_in_the_tile_gives_pi_over_4_with_per_tile_mpp_columns(tmp_path):
    import pandas as pd

    from mask_first.tiles.coverage import tile_overlay_overlap
    from mask_first.tissue.overlay import write_mask_overlay

    tissue = [write_mask_overlay(tmp_path / f"t{k}.tiff", np.full((300, 300), 255, np.uint8), mpp)
              for k, mpp in enumerate([8.0, 2.5])]
    circle = shapely.Point(256, 256).buffer(256, quad_segs=512)
    rng = np.random.default_rng(2)
    n = 40
    table = pd.DataFrame({
        "mask_path": [str(tissue[k % 2]) for k in range(n)],
        "tile_x": rng.integers(0, 200, n), "tile_y": rng.integers(0, 200, n),
        "mpp_x": rng.choice([0.25, 0.5, 1.0], n), "mpp_y": rng.choice([0.25, 0.5, 1.0], n),
    })
    got = tile_overlay_overlap(circle, table["mask_path"], table["tile_x"], table["tile_y"],
                               table["mpp_x"], table["mpp_y"])
    # polygonal circle with 2048 vertices: its area is pi r^2 (1 - O(1e-6))
    np.testing.assert_allclose(got["255"], np.pi / 4, rtol=1e-5)
    # fractions are of the ROI's bounding box: the corners outside the circle count for no label
    np.testing.assert_allclose(got["0"], 0.0, atol=1e-9)


def test_column_length_mismatch_names_the_arguments(tmp_path):
    from mask_first.tiles.coverage import tile_overlay_overlap

    with pytest.raises(ValueError, match="tile_x has 3.*mpp_x has 2"):
        tile_overlay_overlap((0, 0, 4, 4), "m.tiff", [0, 1, 2], [0, 1, 2], [0.5, 0.5], 0.5)


def test_opencv_and_numpy_paths_give_identical_tables_and_fractions(monkeypatch):
    import mask_first.tiles.coverage as cov

    rng = np.random.default_rng(8)
    mask = rng.choice(np.array([0, 64, 255], np.uint8), size=(70, 90))
    xs, ys = rng.uniform(-50, 800, 500), rng.uniform(-50, 600, 500)
    monkeypatch.setattr(cov, "_OPENCV_MIN_PIXELS", 1 << 40)
    monkeypatch.delitem(__import__("sys").modules, "cv2", raising=False)
    numpy_sat = cov.summed_area_table(mask == 255)
    numpy_frac = overlap_fractions(mask, 8.0, (0, 0, 256, 256), xs, ys, 0.5, 0.5)
    monkeypatch.setattr(cov, "_OPENCV_MIN_PIXELS", 1)
    cv_sat = cov.summed_area_table(mask == 255)
    assert cv_sat.dtype == np.int32 and numpy_sat.dtype == np.float64
    np.testing.assert_array_equal(cv_sat, numpy_sat)
    cv_frac = overlap_fractions(mask, 8.0, (0, 0, 256, 256), xs, ys, 0.5, 0.5)
    assert list(cv_frac) == list(numpy_frac) == ["0", "64", "255"]
    for k in cv_frac:
        np.testing.assert_array_equal(cv_frac[k], numpy_frac[k])
