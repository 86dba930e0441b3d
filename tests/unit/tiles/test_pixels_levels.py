"""Tile reads at pyramid levels > 0, tile for tile, against tifffile's decode of that level's page.

A level's pixels are the page tifffile decodes for it, so the reference needs
no downsample and no level-0 origin: the region at (x, y) of level k is
``page[y : y + h, x : x + w]`` padded with white. On the real pyramids the
level downsamples are not integers (2.0003, 4.002, ...), so almost every tile
has a fractional level-0 origin; each of them is compared.
"""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from conftest import MPP_OVERRIDES, write_pyramid_tiff
from mask_first.slides import OpenSlideSlide, open_slide
from mask_first.tiles import grid_tiles, read_slide_tiles


def _level_pages(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        return [np.asarray(level.asarray()) for level in tf.series[0].levels]


def _region(page: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Region of a decoded page with white outside it."""
    out = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, page.shape[1]), min(y + h, page.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = page[y0:y1, x0:x1, :3]
    return out


@pytest.mark.parametrize("name", ["CMU-1-Small-Region_generic-pyramid_jpeg.tif", "tcga-cr-7395-01a-01-ts1.svs"])
def test_real_pyramid_levels_match_tifffile_page_decode_tile_for_tile(shared_slides, name):
    path = shared_slides / name
    pages = _level_pages(path)
    assert len(pages) > 1
    compared = fractional = 0
    with open_slide(path, MPP_OVERRIDES.get(name)) as slide:
        for level in range(1, slide.level_count):
            w, h = slide.level_dimensions[level]
            assert pages[level].shape[:2] == (h, w)
            ds = slide.levels[level].downsample_x, slide.levels[level].downsample_y
            tiles = grid_tiles((w, h), (96, 80), (70, 90), last="keep")  # strides off the stored tiles
            got = read_slide_tiles(slide, tiles[:, 0], tiles[:, 1], 96, 80, level, threads=2)
            for k, (x, y) in enumerate(tiles.tolist()):
                ref = _region(pages[level], x, y, 96, 80)
                assert np.abs(got[k].astype(np.int16) - ref).max() <= 2, (name, level, x, y)
                compared += 1
                fractional += not (float(x * ds[0]).is_integer() and float(y * ds[1]).is_integer())
    assert compared > 0 and fractional > 0, (compared, fractional)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_both_backends_read_upper_levels_exactly(tmp_path, textured_image, backend):
    """Lossless pyramid (zlib): level k reads equal the page, to the byte, for both backends."""
    path = write_pyramid_tiff(tmp_path / "p.tif", textured_image, compression="zlib", tile=64)
    pages = _level_pages(path)
    slide = open_slide(path) if backend == "tifffile" else OpenSlideSlide(path, openslide.OpenSlide(str(path)))
    compared = 0
    with slide:
        assert slide.level_dimensions == [(700, 600), (350, 300), (175, 150)]
        for level in (1, 2):
            w, h = slide.level_dimensions[level]
            tiles = grid_tiles((w, h), (48, 40), (37, 29), last="keep")
            got = read_slide_tiles(slide, tiles[:, 0], tiles[:, 1], 48, 40, level)
            for k, (x, y) in enumerate(tiles.tolist()):
                np.testing.assert_array_equal(got[k], _region(pages[level], x, y, 48, 40), err_msg=f"{level} {x} {y}")
                compared += 1
    assert compared > 0


def test_a_sorted_path_column_puts_each_slides_tiles_in_its_own_rows(tmp_path, textured_image):
    """Two slides in one column (contiguous runs), level 1: row k is slide k's region, by page decode."""
    a = write_pyramid_tiff(tmp_path / "a.tif", textured_image, compression="zlib")
    b = write_pyramid_tiff(tmp_path / "b.tif", 255 - textured_image, compression="zlib")
    paths = [str(a)] * 2 + [str(b)] * 3
    xs, ys = np.array([0, 40, 10, 200, 300]), np.array([0, 30, 5, 100, 250])
    got = read_slide_tiles(np.array(paths), xs, ys, 64, 48, 1)
    pages = {str(a): _level_pages(a)[1], str(b): _level_pages(b)[1]}
    assert got.shape == (5, 48, 64, 3)
    for k, (p, x, y) in enumerate(zip(paths, xs.tolist(), ys.tolist())):
        np.testing.assert_array_equal(got[k], _region(pages[p], x, y, 64, 48), err_msg=str(k))
