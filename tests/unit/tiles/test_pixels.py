"""Retained-tile reads against OpenSlide's read_region, and the pixel Parquet round trip."""

import numpy as np
import openslide
import pandas as pd
import pytest

from conftest import MPP_OVERRIDES
from mask_first.tiles import (
    grid_tiles,
    iter_slide_tiles,
    load_tile_pixels,
    read_slide_tiles,
    tile_pixel_std,
    write_tile_pixels,
)


@pytest.mark.parametrize(
    "name",
    [
        "CMU-1-Small-Region.svs",
        "CMU-1-Small-Region_generic-pyramid_jpeg.tif",
        "tcga-cr-7395-01a-01-ts1.svs",
        "wsi2dcm_bone_jpeg.dcm",
        "wsi2dcm_bone_jpeg2000.dcm",
    ],
)
def test_tiles_match_openslide_read_region_on_white(shared_slides, name):
    path = shared_slides / name
    osr = openslide.OpenSlide(str(path))
    w, h = osr.level_dimensions[0]
    # a stride that is not a multiple of the stored tile size, tiles past the edge kept
    tiles = grid_tiles((w, h), 300, 211, last="keep")[::7]
    got = read_slide_tiles(path, tiles[:, 0], tiles[:, 1], 300, 300, 0, threads=2,
                           mpp_override=MPP_OVERRIDES.get(name))
    assert got.shape == (len(tiles), 300, 300, 3) and got.dtype == np.uint8
    for k, (x, y) in enumerate(tiles):
        rgba = np.asarray(osr.read_region((int(x), int(y)), 0, (300, 300))).astype(np.float64)
        a = rgba[..., 3:] / 255
        ref = rgba[..., :3] * a + 255 * (1 - a)
        assert np.abs(got[k] - ref).mean() < 1.0, (name, x, y)


def test_iterator_batches_equal_the_full_read(small_tiff):
    xs, ys = np.array([0, 100, 650, -30, 200]), np.array([0, 50, 550, 10, 599])
    full = read_slide_tiles(small_tiff, xs, ys, 64, 48, 1)
    got = np.concatenate([b.copy() for _, b in iter_slide_tiles(small_tiff, xs, ys, 64, 48, 1, batch_size=2)])
    np.testing.assert_array_equal(full, got)
    assert (full[2] == 255).all()  # (650, 550) lies outside level 1 (350 x 300)


def test_tile_pixel_std_matches_numpy():
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (5, 8, 9, 3), dtype=np.uint8)
    tiles[0] = 240
    ref = [t.astype(np.float64).mean(axis=2).std() for t in tiles]
    np.testing.assert_allclose(tile_pixel_std(tiles), ref, rtol=1e-5)
    assert tile_pixel_std(tiles)[0] == 0


def test_pixel_parquet_round_trip_is_lossless_and_streams_row_groups(tmp_path, small_tiff, textured_image):
    import pyarrow.parquet as pq

    tiles = pd.DataFrame({"slide_id": "s1", "x": [0, 128, 256, 600], "y": [0, 128, 300, 500], "tissue": [1.0, 0.5, 0.7, 0.9]})
    out = tmp_path / "px.parquet"
    n = write_tile_pixels(out, small_tiff, tiles, level=0, tile_extent_x=128, tile_extent_y=96, row_group_tiles=2)
    assert n == 4 and not (tmp_path / "px.parquet.tmp").exists()
    assert pq.ParquetFile(out).num_row_groups == 2
    rows = list(load_tile_pixels(out))
    assert [r["x"] for r, _ in rows] == [0, 128, 256, 600] and rows[1][0]["tissue"] == 0.5
    np.testing.assert_array_equal(rows[2][1], textured_image[300:396, 256:384])
    assert (rows[3][1][:, 100:] == 255).all()  # past the right edge: white


def test_pixel_parquet_jpeg_option_is_close(tmp_path, small_tiff, textured_image):
    tiles = pd.DataFrame({"x": [128], "y": [64]})
    out = tmp_path / "px.parquet"
    write_tile_pixels(out, small_tiff, tiles, level=0, tile_extent_x=128, tile_extent_y=128, encoding="jpeg")
    (_, arr), = list(load_tile_pixels(out))
    assert np.abs(arr.astype(float) - textured_image[64:192, 128:256]).mean() < 3


def test_failed_pixel_write_leaves_no_file(tmp_path, small_tiff):
    out = tmp_path / "px.parquet"
    with pytest.raises(ValueError, match="encoding"):
        write_tile_pixels(out, small_tiff, pd.DataFrame({"x": [0], "y": [0]}), level=0,
                          tile_extent_x=8, tile_extent_y=8, encoding="webp")
    assert list(tmp_path.iterdir()) == [small_tiff]
