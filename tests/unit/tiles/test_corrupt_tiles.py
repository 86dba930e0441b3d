"""pixels.corrupt_tiles: fail stops at the bad stored tile, skip leaves exactly its tiles out."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from mask_first.slides import SlideError, open_slide
from mask_first.synthetic import write_synthetic_slide
from mask_first.tiles.pixels import load_tile_pixels, write_tile_pixels


@pytest.fixture
def corrupt_slide(tmp_path):
    """1024 x 1024 slide whose level-0 stored tile (256, 256) is zeroed (256-px stored tiles)."""
    path = write_synthetic_slide(tmp_path / "corrupt.tiff", 1024, 1024, kind="tissue", seed=1)
    clean = tmp_path / "clean.tiff"
    clean.write_bytes(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        off, cnt = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]
    data = bytearray(path.read_bytes())
    data[off: off + cnt] = bytes(cnt)
    path.write_bytes(bytes(data))
    return path, clean


def _tiles():
    # 128-px tiles over the top-left 512 x 512: tiles at x, y in {256, 384} lie in the bad stored tile
    xs, ys = np.meshgrid(np.arange(0, 512, 128), np.arange(0, 512, 128))
    return {"tile_id": np.arange(16) + 100, "x": xs.ravel(), "y": ys.ravel()}


def test_fail_raises_the_readers_one_line_error(corrupt_slide, tmp_path):
    path, _ = corrupt_slide
    with pytest.raises(SlideError, match="corrupt image data in level 0 at stored tile"):
        write_tile_pixels(tmp_path / "px.parquet", path, _tiles(), level=0, tile_extent_x=128, tile_extent_y=128,
                          batch_size=8, row_group_tiles=8)
    assert not (tmp_path / "px.parquet").exists()


def test_skip_leaves_out_only_the_unreadable_tiles_and_names_them(corrupt_slide, tmp_path, caplog):
    path, clean = corrupt_slide
    tiles = _tiles()
    out = tmp_path / "px.parquet"
    with caplog.at_level(logging.INFO, logger="mask_first"):
        n = write_tile_pixels(out, path, tiles, level=0, tile_extent_x=128, tile_extent_y=128,
                              batch_size=8, row_group_tiles=8, corrupt_tiles="skip")
    bad = [(x, y) for x, y in zip(tiles["x"], tiles["y"]) if 256 <= x < 512 and 256 <= y < 512]
    assert len(bad) == 4 and n == 12
    rows = list(load_tile_pixels(out))
    assert [(r["x"], r["y"]) for r, _ in rows] == [(x, y) for x, y in zip(tiles["x"], tiles["y"]) if (x, y) not in bad]
    # every kept tile holds the pixels of the undamaged file (read independently)
    with open_slide(clean) as s:
        for r, arr in rows:
            assert r["tile_id"] == 100 + list(zip(tiles["x"], tiles["y"])).index((r["x"], r["y"]))
            np.testing.assert_array_equal(arr, s.read_region(0, r["x"], r["y"], 128, 128))
    stats = json.loads(pq.read_metadata(out).metadata[b"mask_first.stats"])
    assert stats["tiles_requested"] == 16 and stats["tiles_written"] == 12 and stats["tiles_skipped"] == 4
    assert sorted((t["x"], t["y"]) for t in stats["skipped"]) == sorted(bad)
    assert {t["tile_id"] for t in stats["skipped"]} == {110, 111, 114, 115}
    assert all("corrupt image data" in t["error"] for t in stats["skipped"])
    text = caplog.text
    assert "4 corrupt tile(s) skipped" in text and "tile 110 at x=256 y=256" in text
    assert "pixels: 12 / 16 tiles written" in text  # progress line


@pytest.mark.parametrize("corrupt_tiles", ["fail", "skip"])
def test_jpeg_passthrough_still_catches_the_damaged_stored_tile(corrupt_slide, tmp_path, corrupt_tiles):
    path, _ = corrupt_slide
    # 256-px tiles on the 256-px stored grid: all but the zeroed one keep their stored stream
    xs, ys = np.meshgrid(np.arange(0, 1024, 256), np.arange(0, 1024, 256))
    tiles = {"tile_id": np.arange(16), "x": xs.ravel(), "y": ys.ravel()}
    out = tmp_path / "px.parquet"
    if corrupt_tiles == "fail":
        with pytest.raises(SlideError, match="corrupt image data in level 0 at stored tile"):
            write_tile_pixels(out, path, tiles, level=0, tile_extent_x=256, tile_extent_y=256, encoding="jpeg")
        assert not out.exists()
        return
    n = write_tile_pixels(out, path, tiles, level=0, tile_extent_x=256, tile_extent_y=256, encoding="jpeg",
                          corrupt_tiles="skip", row_group_tiles=4)
    stats = json.loads(pq.read_metadata(out).metadata[b"mask_first.stats"])
    assert n == 15 and stats["tiles_passed_through"] == 15
    assert [(t["tile_id"], t["x"], t["y"]) for t in stats["skipped"]] == [(5, 256, 256)]
    assert [r["tile_id"] for r, _ in load_tile_pixels(out)] == [t for t in range(16) if t != 5]
