"""Slide metadata, level choice and pixel reads against OpenSlide and the written pixels."""

import numpy as np
import openslide
import pytest

from conftest import MPP_OVERRIDES, write_pyramid_tiff
from mask_first.slides import SlideError, TiffSlide, choose_level, open_slide, read_slides

REAL = [
    "CMU-1-Small-Region.svs",
    "CMU-1-Small-Region_generic-pyramid_jpeg.tif",
    "CMU-1-Small-Region.ome.tif",
    "tcga-cr-7395-01a-01-ts1.svs",
    "kidney-48-5.tif",
    "wsi2dcm_bone_jpeg.dcm",
    "wsi2dcm_bone_jpeg2000.dcm",
]


def _openslide_on_white(osr, level, x0, y0, w, h):
    rgba = np.asarray(osr.read_region((x0, y0), level, (w, h))).astype(np.float64)
    a = rgba[..., 3:] / 255.0
    return rgba[..., :3] * a + 255.0 * (1 - a)


def test_choose_level_is_coarsest_not_coarser_than_target():
    mpps = [(0.25, 0.25), (0.5, 0.5), (1.0, 1.0), (4.0, 4.0)]
    assert choose_level(mpps, 0.25) == 0
    assert choose_level(mpps, 0.9) == 1
    assert choose_level(mpps, 1.0) == 2
    assert choose_level(mpps, 1.05) == 2  # within tolerance, never the 4.0 level
    assert choose_level(mpps, 100) == 3
    assert choose_level(mpps, 0.1) == 0  # nothing fine enough: level 0


def test_small_tiff_levels_mpp_and_pixels(small_tiff, textured_image):
    with open_slide(small_tiff) as s:
        assert isinstance(s, TiffSlide)
        assert s.level_dimensions == [(700, 600), (350, 300), (175, 150)]
        assert s.mpp_x == pytest.approx(0.5) and s.level_mpp(2) == pytest.approx((2.0, 2.0))
        # lossless zlib tiles: exact pixels, white beyond the edges
        region = s.read_region(0, -5, 590, 40, 30)
        assert (region[:, :5] == 255).all() and (region[10:] == 255).all()
        np.testing.assert_array_equal(region[:10, 5:], textured_image[590:600, 0:35])
        np.testing.assert_array_equal(s.read_region(0, 129, 127, 300, 200), textured_image[127:327, 129:429])


@pytest.mark.parametrize("name", [n for n in REAL if n != "kidney-48-5.tif"])
def test_real_slide_regions_match_openslide_read_region(shared_slides, name):
    path = shared_slides / name
    with open_slide(path, MPP_OVERRIDES.get(name)) as s:
        osr = openslide.OpenSlide(str(path))
        w, h = s.levels[0].width, s.levels[0].height
        for x, y in [(-17, -9), (w // 3, h // 4), (w - 120, h - 70)]:
            ours = s.read_region(0, x, y, 256, 200).astype(np.float64)
            ref = _openslide_on_white(osr, 0, x, y, 256, 200)
            assert np.abs(ours - ref).mean() < 1.0, (name, x, y)


def test_generic_pyramid_upper_levels_match_openslide(shared_slides):
    path = shared_slides / "CMU-1-Small-Region_generic-pyramid_jpeg.tif"
    osr = openslide.OpenSlide(str(path))
    with open_slide(path) as s:
        assert s.level_count == osr.level_count
        assert s.level_dimensions == list(osr.level_dimensions)
        for level in range(1, s.level_count):
            w, h = s.level_dimensions[level]
            ours = s.read_region(level, 0, 0, w, h).astype(np.float64)
            ref = _openslide_on_white(osr, level, 0, 0, w, h)
            assert np.abs(ours - ref).mean() < 1.0, level


def test_ome_subifd_pyramid_levels_are_read(shared_slides):
    # OpenSlide sees one level here; tifffile reads the SubIFD pyramid
    with open_slide(shared_slides / "CMU-1-Small-Region.ome.tif") as s:
        assert s.vendor == "ome"
        assert s.level_dimensions == [(2220, 2967), (1110, 1483), (555, 741), (277, 370)]
        assert s.mpp_x == pytest.approx(0.499)
        with open_slide(shared_slides / "CMU-1-Small-Region_generic-pyramid_jpeg.tif") as g:
            a = s.read_level(2).astype(float)
            b = g.read_level(2).astype(float)
            assert np.abs(a - b).mean() < 3  # same scan, independently re-encoded


def test_missing_mpp_is_a_clear_error_naming_the_file(shared_slides):
    with pytest.raises(SlideError, match=r"tcga-cr-7395-01a-01-ts1\.svs: no microns-per-pixel") as err:
        open_slide(shared_slides / "tcga-cr-7395-01a-01-ts1.svs")
    assert "\n" not in str(err.value)
    with open_slide(shared_slides / "tcga-cr-7395-01a-01-ts1.svs", mpp_override=0.25) as s:
        assert s.level_mpp(1)[0] == pytest.approx(0.25 * 4443 / 2221)


def test_strip_tiff_without_openslide_support_reads_with_override(shared_slides):
    import tifffile

    path = shared_slides / "kidney-48-5.tif"
    with open_slide(path, mpp_override=0.5) as s:
        np.testing.assert_array_equal(s.read_level(0), tifffile.imread(path))


@pytest.mark.parametrize(
    "content, cause",
    [(b"", "file is empty"), (b"this is not a slide\n" * 10, "not a readable slide")],
)
def test_bad_files_raise_one_line_errors(tmp_path, content, cause):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(content)
    with pytest.raises(SlideError, match=cause) as err:
        open_slide(bad)
    assert str(err.value).startswith("bad.svs") and "\n" not in str(err.value)


def test_missing_and_truncated_files(tmp_path, small_tiff):
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs")
    data = small_tiff.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="cut.tif"):
        open_slide(cut)


def test_read_slides_table_rescales_tiles_to_the_chosen_level(small_tiff, tmp_path, textured_image):
    other = write_pyramid_tiff(tmp_path / "other.tif", textured_image, mpp=0.25, levels=4)
    df = read_slides([small_tiff, other], mpp=1.0, tile_extent=128, stride=64)
    a, b = df.iloc[0], df.iloc[1]
    assert (a.level, a.extent_x, a.extent_y, a.mpp_x) == (1, 350, 300, pytest.approx(1.0))
    assert (a.tile_extent_x, a.stride_x) == (128, 64)
    assert (b.level, b.mpp_x) == (2, pytest.approx(1.0))
    # a level exactly at the target is preferred; tile extents follow the level
    df2 = read_slides([small_tiff], mpp=0.75, tile_extent=128, stride=128)
    assert df2.level[0] == 0 and df2.tile_extent_x[0] == 192
    # stable ids: same inputs, same ids; other tiling, other id
    again = read_slides([small_tiff, other], mpp=1.0, tile_extent=128, stride=64)
    assert list(df.id) == list(again.id) and df.id.nunique() == 2
    assert read_slides([small_tiff], mpp=1.0, tile_extent=256, stride=64).id[0] != df.id[0]


def test_read_slides_requires_exactly_one_of_mpp_and_level(small_tiff):
    with pytest.raises(ValueError, match="exactly one"):
        read_slides([small_tiff], tile_extent=128, stride=128)
    with pytest.raises(ValueError, match="exactly one"):
        read_slides([small_tiff], mpp=1, level=0, tile_extent=128, stride=128)
    df = read_slides([small_tiff], level=2, tile_extent=64, stride=32)
    assert (df.level[0], df.extent_x[0], df.tile_extent_x[0]) == (2, 175, 64)


def test_every_real_slide_works_or_fails_clearly(shared_slides):
    for name in REAL:
        try:
            df = read_slides([shared_slides / name], mpp=2.0, tile_extent=256, stride=256)
        except SlideError as err:
            assert name in str(err) and name in MPP_OVERRIDES, err
            df = read_slides([shared_slides / name], mpp=2.0, tile_extent=256, stride=256,
                             mpp_override=MPP_OVERRIDES[name])
        row = df.iloc[0]
        assert (row.mpp_x <= 2.0 * 1.1 or row.level == 0) and row.extent_x > 0 and row.tile_extent_x > 0


def test_corrupt_tile_data_is_a_one_line_error_naming_file_and_place(tmp_path):
    import tifffile

    from mask_first.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "corrupt.tiff", 1024, 1024, kind="tissue", seed=1)
    with tifffile.TiffFile(path) as tf:
        off, cnt = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]  # stored tile (256, 256)
    data = bytearray(path.read_bytes())
    data[off : off + cnt] = bytes(cnt)
    path.write_bytes(bytes(data))
    with open_slide(path) as s:
        s.read_region(0, 0, 0, 256, 256)  # other tiles still read
        for x, y, w, h in [(256, 256, 256, 256), (250, 250, 20, 20)]:  # direct and assembled paths
            with pytest.raises(SlideError, match=r"corrupt.tiff: corrupt image data in level 0 at stored tile \(x=256, y=256\)") as err:
                s.read_region(0, x, y, w, h)
            assert "\n" not in str(err.value)


def test_read_slides_takes_a_directory_and_path_columns_like_the_seed(shared_slides, tmp_path):
    import pandas as pd
    import pyarrow as pa

    from mask_first.slides import read_slides

    names = ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_generic-pyramid_jpeg.tif", "tcga-cr-7395-01a-01-ts1.svs"]
    for n in names:
        (tmp_path / n).symlink_to(shared_slides / n)
    (tmp_path / "notes.txt").write_text("not a slide")
    kw = dict(mpp=0.5, tile_extent=256, stride=256)
    # reference: one call per slide, in name order
    ref = pd.concat([read_slides(str(tmp_path / n), mpp_override=0.25 if n.startswith("tcga") else None, **kw)
                     for n in sorted(names)], ignore_index=True)
    overrides = [0.25 if n.startswith("tcga") else None for n in sorted(names)]
    got_dir = read_slides(tmp_path, mpp_override=overrides, **kw)
    pd.testing.assert_frame_equal(got_dir, ref)
    paths = pd.Series([str(tmp_path / n) for n in sorted(names)])
    pd.testing.assert_frame_equal(read_slides(paths, mpp_override=pd.Series(overrides, dtype=float), **kw), ref)
    pd.testing.assert_frame_equal(read_slides(pa.array(paths), mpp_override=overrides, **kw), ref)
    assert ref.loc[2, "level0_mpp_x"] == 0.25 and ref.loc[0, "level0_mpp_x"] == pytest.approx(0.499)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region_generic-pyramid_jpeg.tif", "CMU-1-Small-Region.svs",
                                  "tcga-cr-7395-01a-01-ts1.svs", "CMU-1-Small-Region.ome.tif"])
def test_batch_geometries_equal_tifffile_page_decode_on_every_level(shared_slides, name):
    """Exact, multi-tile aligned, misaligned and overlapping requests in one batch, all levels."""
    import tifffile

    path = shared_slides / name
    compared = upper = 0
    with tifffile.TiffFile(path) as tf, open_slide(path, mpp_override=MPP_OVERRIDES.get(name)) as s:
        for level, lv in enumerate(tf.series[0].levels):
            page = np.asarray(lv.asarray())[..., :3]
            sw, sh = s.stored_tile_size(level)
            h, w = page.shape[:2]
            xs = np.array([0, sw, 37, sw // 2, sw // 2, w - sw // 2, -5])
            ys = np.array([0, 0, 11, sh // 2, sh, h - sh // 3, h - 3])
            for ew, eh in [(sw, sh), (2 * sw, 2 * sh), (sw + 13, sh - 7)]:
                out = np.empty((len(xs), eh, ew, 3), np.uint8)
                s.read_regions_into(level, xs, ys, ew, eh, out, threads=2)
                for k, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
                    ref = np.full((eh, ew, 3), 255, np.uint8)
                    x0, y0 = max(x, 0), max(y, 0)
                    part = page[y0 : y + eh, x0 : x + ew]
                    ref[y0 - y : y0 - y + part.shape[0], x0 - x : x0 - x + part.shape[1]] = part
                    np.testing.assert_array_equal(out[k], ref, err_msg=f"{name} level {level} ({x}, {y}) {ew}x{eh}")
                    compared += 1
                    upper += level > 0
    assert compared > 0
    if len(tf.series[0].levels) > 1:
        assert upper > 0
