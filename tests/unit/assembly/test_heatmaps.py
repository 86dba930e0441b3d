"""Heatmap assembly from per-tile predictions, against a hand-worked average."""

import numpy as np
import pandas as pd
import pytest

from mask_first.assembly.heatmaps import build_heatmap, colourise, read_heatmap_tiff, write_heatmap_tiff
from mask_first.tiles import grid_tiles


def _info(**kw):
    base = dict(extent_x=1000, extent_y=700, tile_extent_x=256, tile_extent_y=256, stride_x=128, stride_y=128,
                mpp_x=0.5, mpp_y=0.5)
    return pd.Series(base | kw)


def test_overlapping_tiles_average_per_cell_like_a_brute_force_paint():
    info = _info()
    xy = grid_tiles((1000, 700), 256, 128)
    values = np.random.default_rng(0).random(len(xy))
    heat, mpp = build_heatmap(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "p": values}), info, ["p"])
    assert mpp == (64.0, 64.0)  # one 128-px stride cell at 0.5 µm/px
    total = np.zeros(heat.shape[1:])
    count = np.zeros(heat.shape[1:])
    for (x, y), v in zip(xy, values):  # each 256-px tile covers 2 x 2 cells of 128 px
        total[y // 128 : y // 128 + 2, x // 128 : x // 128 + 2] += v
        count[y // 128 : y // 128 + 2, x // 128 : x // 128 + 2] += 1
    np.testing.assert_allclose(heat[0], total / count, rtol=1e-6)


def test_cells_without_a_tile_are_nan_and_max_aggregation_keeps_negatives():
    info = _info(stride_x=256, stride_y=256)
    df = pd.DataFrame({"x": [0, 256], "y": [0, 0], "p": [-3.0, -1.0]})
    heat, _ = build_heatmap(df, info, ["p"], aggregation="max")
    assert heat[0, 0, 0] == -3.0 and heat[0, 0, 1] == -1.0 and np.isnan(heat[0, 1, 0])


def test_shifted_edge_tiles_are_placed_exactly():
    info = _info(stride_x=256, stride_y=256)
    xy = grid_tiles((1000, 700), 256, 256, last="shift")
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "p": np.ones(len(xy))})
    heat, (mx, my) = build_heatmap(df, info, ["p"])
    assert (mx, my) == (0.5 * 8, 0.5 * 4)  # gcd of 256 and the shifted positions 744 (x) and 444 (y)
    assert np.nanmin(heat) == 1.0 and not np.isnan(heat[0, : 700 // 4, : 1000 // 8]).any()


def test_missing_prediction_column_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks column"):
        build_heatmap(pd.DataFrame({"x": [0], "y": [0]}), _info(), ["score"])


def test_tiff_round_trip_keeps_values_mpp_and_builds_a_pyramid(tmp_path):
    heat = np.random.default_rng(1).random((2, 300, 520)).astype(np.float32)
    heat[0, 5, 7] = np.nan
    path = tmp_path / "h.tiff"
    write_heatmap_tiff(path, heat, (64.0, 32.0), description={"k": 1})
    back, mpp, desc = read_heatmap_tiff(path)
    np.testing.assert_array_equal(back, heat)
    assert mpp == pytest.approx((64.0, 32.0)) and desc == {"k": 1}
    single = tmp_path / "s.tiff"
    write_heatmap_tiff(single, heat[:1], (64.0, 64.0))
    import tifffile

    with tifffile.TiffFile(single) as tf:
        assert [p.shape for p in tf.pages] == [(300, 520), (150, 260), (75, 130)]


def test_colourise_maps_ends_of_the_ramp_and_nan_to_white():
    rgb = colourise(np.array([[0.0, 1.0, np.nan]]))
    assert rgb[0, 0].tolist() == [68, 1, 84] and rgb[0, 1].tolist() == [253, 231, 37]
    assert rgb[0, 2].tolist() == [255, 255, 255]
