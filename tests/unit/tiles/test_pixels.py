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
def test_tiles_match_openslide_read_region_on_white(shared_slides, name, jpeg_decoder):
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


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_generic-pyramid_jpeg.tif"])
def test_stored_tiles_decoded_in_place_equal_the_copied_path_and_openslide(shared_slides, name, monkeypatch):
    from mask_first import jpeg
    from mask_first.slides import open_slide

    if not jpeg.available():
        from conftest import skip_or_fail

        skip_or_fail("libturbojpeg not found (apt install libturbojpeg0)")
    path = shared_slides / name
    with open_slide(path, MPP_OVERRIDES.get(name), require_mpp=False) as s:
        seg = s.stored_tile_size(0)[0]
        w, h = s.level_dimensions[0]
    # requests of 2 x 2 stored tiles on the stored grid (the Aperio file: RGB-coded JPEG,
    # shared JPEGTables): every stored tile is decoded into its quadrant in place
    xs, ys = np.meshgrid(np.arange(0, w - 2 * seg + 1, 2 * seg), np.arange(0, h - 2 * seg + 1, 2 * seg))
    xs, ys = xs.ravel(), ys.ravel()
    in_place = read_slide_tiles(path, xs, ys, 2 * seg, 2 * seg, 0, mpp_override=MPP_OVERRIDES.get(name))
    monkeypatch.setattr(jpeg, "available", lambda: False)
    copied = read_slide_tiles(path, xs, ys, 2 * seg, 2 * seg, 0, mpp_override=MPP_OVERRIDES.get(name))
    np.testing.assert_array_equal(in_place, copied)
    osr = openslide.OpenSlide(str(path))
    for k in range(0, len(xs), 3):
        rgb = np.asarray(osr.read_region((int(xs[k]), int(ys[k])), 0, (2 * seg, 2 * seg)))[..., :3]
        assert np.abs(in_place[k].astype(int) - rgb).mean() < 0.5
    osr.close()


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
    assert n == 4 and sorted(p.name for p in tmp_path.iterdir()) == sorted([small_tiff.name, "px.parquet"])  # no temporary left
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [2, 2]  # row_group_tiles=2 each
    rows = list(load_tile_pixels(out))
    assert [r["x"] for r, _ in rows] == [0, 128, 256, 600] and rows[1][0]["tissue"] == 0.5
    np.testing.assert_array_equal(rows[2][1], textured_image[300:396, 256:384])
    assert (rows[3][1][:, 100:] == 255).all()  # past the right edge: white


@pytest.mark.parametrize("compression", ["none", "snappy", "lz4", "zstd"])
def test_every_pixel_codec_round_trips_exactly_across_many_row_groups(tmp_path, small_tiff, textured_image,
                                                                      compression):
    import pyarrow.parquet as pq

    # 9 tiles in row groups of 2: decoding alternates between two buffers while
    # the previous group is written in the background, so a write that read a
    # buffer after the next decode overwrote it would store the wrong tile
    xs, ys = np.meshgrid([0, 200, 400], [0, 150, 300])
    tiles = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel()})
    out = tmp_path / "px.parquet"
    assert write_tile_pixels(out, small_tiff, tiles, level=0, tile_extent_x=128, tile_extent_y=96,
                             row_group_tiles=2, compression=compression) == 9
    meta = pq.ParquetFile(out).metadata
    pixel_col = meta.schema.names.index("pixels")
    assert meta.num_row_groups == 5
    assert {meta.row_group(g).column(pixel_col).compression for g in range(5)} == {compression.upper().replace("NONE", "UNCOMPRESSED")}
    for (row, arr), x, y in zip(load_tile_pixels(out), tiles.x, tiles.y):
        assert (row["x"], row["y"]) == (x, y)
        np.testing.assert_array_equal(arr, textured_image[y : y + 96, x : x + 128])


def test_unknown_pixel_codec_is_refused_before_anything_is_written(tmp_path, small_tiff):
    out = tmp_path / "px.parquet"
    with pytest.raises(ValueError, match="compression must be one of"):
        write_tile_pixels(out, small_tiff, pd.DataFrame({"x": [0], "y": [0]}), level=0,
                          tile_extent_x=8, tile_extent_y=8, compression="brotli")
    assert not out.exists()


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


# ---------------------------------------------------------------------------
# the seed's argument forms: a tile table spanning several slides
# ---------------------------------------------------------------------------

THREE = ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_generic-pyramid_jpeg.tif", "tcga-cr-7395-01a-01-ts1.svs"]


def _openslide_tile(osr, x, y, ex, ey, level, _levels={}):
    """OpenSlide's pixels of a tile of ``level``, composited on white.

    Cropped from one read of the whole level: read_region takes level-0
    coordinates, and with a non-integer downsample (2.0005) x * downsample is
    no integer, so OpenSlide would resample at a sub-pixel offset.
    """
    key = (osr, level)
    if key not in _levels:
        rgba = np.asarray(osr.read_region((0, 0), level, osr.level_dimensions[level])).astype(np.float64)
        a = rgba[..., 3:] / 255
        _levels[key] = rgba[..., :3] * a + 255 * (1 - a)
    full = _levels[key]
    ref = np.full((ey, ex, 3), 255.0)
    sub = full[y : y + ey, x : x + ex]
    ref[: sub.shape[0], : sub.shape[1]] = sub
    return ref


def _mixed_table(shared_slides, extents):
    rng = np.random.default_rng(4)
    rows = []
    for name in THREE:
        osr = openslide.OpenSlide(str(shared_slides / name))
        for level in range(min(osr.level_count, 3)):
            w, h = osr.level_dimensions[level]
            for _ in range(6):
                ex, ey = extents(rng)
                rows.append({"path": str(shared_slides / name), "tile_x": int(rng.integers(0, max(1, w - 50))),
                             "tile_y": int(rng.integers(0, max(1, h - 50))), "tile_extent_x": ex,
                             "tile_extent_y": ey, "level": level})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_columns_over_three_slides_with_per_row_levels_and_extents_match_openslide(shared_slides):
    # tcga has no mpp in the file and gets no override: pixel reads need none
    tiles = _mixed_table(shared_slides, lambda rng: (int(rng.integers(60, 200)), int(rng.integers(60, 200))))
    got = read_slide_tiles(tiles["path"], tiles["tile_x"], tiles["tile_y"], tiles["tile_extent_x"],
                           tiles["tile_extent_y"], tiles["level"])
    assert got.dtype == object and len(got) == len(tiles)  # extents differ: one array per tile
    handles = {p: openslide.OpenSlide(p) for p in tiles["path"].unique()}
    for k, r in enumerate(tiles.itertuples()):
        assert got[k].shape == (r.tile_extent_y, r.tile_extent_x, 3) and got[k].dtype == np.uint8
        if r.path.endswith("generic-pyramid_jpeg.tif") and r.level > 0:
            # OpenSlide decodes the 4:2:0 JPEG of this pyramid's reduced levels with other
            # chroma upsampling (2-4 grey levels apart); libvips' own decode is the reference
            import pyvips

            img = pyvips.Image.tiffload(r.path, page=r.level)
            w, h = min(r.tile_extent_x, img.width - r.tile_x), min(r.tile_extent_y, img.height - r.tile_y)
            ref = np.full((r.tile_extent_y, r.tile_extent_x, 3), 255, np.uint8)
            ref[:h, :w] = img.crop(r.tile_x, r.tile_y, w, h).numpy()[..., :3]
            np.testing.assert_array_equal(got[k], ref)
        else:
            ref = _openslide_tile(handles[r.path], r.tile_x, r.tile_y, r.tile_extent_x, r.tile_extent_y, r.level)
            assert np.abs(got[k] - ref).mean() < 1.0, (r.path, r.level, r.tile_x, r.tile_y)
        # and exactly the per-slide scalar call
        one = read_slide_tiles(r.path, [r.tile_x], [r.tile_y], r.tile_extent_x, r.tile_extent_y, r.level)
        np.testing.assert_array_equal(got[k], one[0])


@pytest.mark.parametrize("form", ["pyarrow", "numpy"])
def test_uniform_extent_columns_give_one_array_in_input_order(shared_slides, form):
    import pyarrow as pa

    tiles = _mixed_table(shared_slides, lambda rng: (96, 80))
    conv = pa.array if form == "pyarrow" else (lambda s: s.to_numpy())
    got = read_slide_tiles(*(conv(tiles[c]) for c in ("path", "tile_x", "tile_y", "tile_extent_x",
                                                      "tile_extent_y", "level")), threads=2)
    assert got.shape == (len(tiles), 80, 96, 3) and got.dtype == np.uint8
    for (path, level), g in tiles.groupby(["path", "level"]):
        ref = read_slide_tiles(path, g["tile_x"].to_numpy(), g["tile_y"].to_numpy(), 96, 80, int(level))
        np.testing.assert_array_equal(got[g.index.to_numpy()], ref)


def test_slide_without_mpp_reads_pixels_without_an_override(shared_slides):
    path = shared_slides / "tcga-cr-7395-01a-01-ts1.svs"
    xs, ys = np.array([0, 1000, 4400]), np.array([0, 700, 3500])
    plain = read_slide_tiles(path, xs, ys, 256, 256, 0)
    np.testing.assert_array_equal(plain, read_slide_tiles(path, xs, ys, 256, 256, 0, mpp_override=0.25))
    osr = openslide.OpenSlide(str(path))
    for k in range(3):
        assert np.abs(plain[k] - _openslide_tile(osr, xs[k], ys[k], 256, 256, 0)).mean() < 1.0
    from mask_first.slides import SlideError, open_slide

    with pytest.raises(SlideError, match="no microns-per-pixel"):
        open_slide(path)  # everything that needs mpp still asks for it


# ---------------------------------------------------------------------------
# geometries of the batch reader, against tifffile's decode of the level page
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_pyramid(tmp_path_factory):
    """A 3-level JPEG pyramid stored in 64-px tiles, with its levels decoded by tifffile."""
    import tifffile

    from conftest import write_pyramid_tiff

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:700, 0:900]
    img = np.stack([(x * 0.3) % 256, (y * 0.4) % 256, ((x + y) * 0.2) % 256], axis=-1)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    path = write_pyramid_tiff(tmp_path_factory.mktemp("pyr") / "pyr.tif", img, tile=64, levels=3)
    with tifffile.TiffFile(path) as tf:
        levels = [lv.asarray() for lv in tf.series[0].levels]
    return path, levels


def _crop(level_img, x, y, w, h):
    out = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, level_img.shape[1]), min(y + h, level_img.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = level_img[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "geometry, size, stride, offset",
    [
        ("exact", 64, 64, 0),
        ("aligned 2x2", 128, 128, 0),
        ("misaligned", 128, 128, 37),
        ("overlapping stride", 128, 64, 0),
        ("misaligned overlapping, past the edge", 100, 70, -13),
    ],
)
def test_batch_reads_equal_tifffile_level_decode(jpeg_pyramid, geometry, size, stride, offset, threads, jpeg_decoder):
    path, levels = jpeg_pyramid
    compared = 0
    for level in range(3):
        h, w = levels[level].shape[:2]
        tiles = grid_tiles((w, h), size, stride, last="keep") + offset
        got = read_slide_tiles(path, tiles[:, 0], tiles[:, 1], size, size, level, threads=threads)
        for k, (x, y) in enumerate(tiles.tolist()):
            np.testing.assert_array_equal(got[k], _crop(levels[level], x, y, size, size), err_msg=f"{geometry} {level} {x} {y}")
            compared += 1
    assert compared > 0


def test_every_stored_tile_is_decoded_once_per_batch(jpeg_pyramid, monkeypatch):
    from mask_first.slides import _TiffLevelReader, open_slide

    path, _ = jpeg_pyramid
    decoded = []
    orig, orig_direct = _TiffLevelReader.decode, _TiffLevelReader.decode_direct

    def direct(self, i, dst, turbo):  # decoded in place (TurboJPEG) counts as well
        ok = orig_direct(self, i, dst, turbo)
        if ok and turbo is not None:
            decoded.append(i)
        return ok

    monkeypatch.setattr(_TiffLevelReader, "decode", lambda self, i, buf: decoded.append(i) or orig(self, i, buf))
    monkeypatch.setattr(_TiffLevelReader, "decode_direct", direct)
    tiles = grid_tiles((900, 700), 128, 64, last="drop") + 5  # each stored tile in up to 9 requests
    with open_slide(path) as s:
        read_slide_tiles(s, tiles[:, 0], tiles[:, 1], 128, 128, 0)
    assert len(decoded) == len(set(decoded))
    needed = {(y // 64) * 15 + x // 64 for x0, y0 in tiles.tolist()
              for y in range(y0, y0 + 128) for x in range(x0, x0 + 128)}
    assert set(decoded) == needed


# ---------------------------------------------------------------------------
# resampling to the target resolution
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("level, region, out", [(0, 128, 64), (1, 96, 48), (0, 150, 64), (0, 100, 77)])
def test_resampled_tiles_are_the_area_average_of_the_level(jpeg_pyramid, level, region, out):
    from conftest import area_average

    path, levels = jpeg_pyramid
    h, w = levels[level].shape[:2]
    tiles = grid_tiles((w, h), region, region, last="keep")
    got = read_slide_tiles(path, tiles[:, 0], tiles[:, 1], region, region, level, resample_to=(out, out))
    assert got.shape == (len(tiles), out, out, 3)
    compared = 0
    for k, (x, y) in enumerate(tiles.tolist()):
        native = _crop(levels[level], x, y, region, region)
        if region % out == 0:  # integer factor: the block mean
            f = region // out
            ref = native.reshape(out, f, out, f, 3).mean(axis=(1, 3))
        else:
            ref = area_average(native, out, out)
        diff = np.abs(got[k] - ref)
        assert diff.max() <= 1.0, (level, x, y, diff.max())
        compared += 1
    assert compared > 0


def test_iterator_resamples_like_the_full_read(jpeg_pyramid):
    path, _ = jpeg_pyramid
    xs, ys = np.array([0, 300, 850, -20]), np.array([0, 200, 650, 5])
    full = read_slide_tiles(path, xs, ys, 150, 150, 0, resample_to=(64, 64))
    got = np.concatenate([b.copy() for _, b in iter_slide_tiles(path, xs, ys, 150, 150, 0, batch_size=3,
                                                                 resample_to=(64, 64))])
    np.testing.assert_array_equal(full, got)


def test_pixel_table_records_the_delivered_size_and_mpp(tmp_path, jpeg_pyramid):
    import pyarrow.parquet as pq

    path, levels = jpeg_pyramid
    tiles = pd.DataFrame({"x": [0, 256], "y": [0, 128], "tile_extent_x": 256, "mpp_x": 0.5})
    out = tmp_path / "px.parquet"
    write_tile_pixels(out, path, tiles, level=0, tile_extent_x=256, tile_extent_y=256, resample_to=(128, 128))
    rows = list(load_tile_pixels(out))
    assert [r["x"] for r, _ in rows] == [0, 256]
    for (meta, px), (x, y) in zip(rows, [(0, 0), (256, 128)]):
        assert px.shape == (128, 128, 3)
        assert (meta["tile_extent_x"], meta["tile_extent_y"], meta["read_extent_x"]) == (128, 128, 256)
        assert (meta["mpp_x"], meta["mpp_y"]) == pytest.approx((1.0, 1.0))  # 0.5 µm/px level 0, halved
        ref = _crop(levels[0], x, y, 256, 256).reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
        assert np.abs(px - ref).max() <= 1.0
    assert pq.ParquetFile(out).schema_arrow.field("tile_extent_x").type == "int64"


@pytest.mark.parametrize("resample", [True, False])
def test_pixels_step_delivers_the_target_mpp_unless_resample_is_off(tmp_path, jpeg_pyramid, resample):
    """Level 0 at 0.5 µm/px, 64 px asked at 0.75 µm/px: 96-px regions (factor 1.5, no such level)."""
    from conftest import area_average
    from mask_first.io import write_table
    from mask_first.pipeline import write_retained_pixels

    path, levels = jpeg_pyramid
    xs, ys = np.array([0, 96, 480, 864]), np.array([0, 192, 288, 672])
    write_table(tmp_path / "ret.parquet", {
        "x": xs, "y": ys, "level": np.zeros(4, np.int32), "tile_extent_x": np.full(4, 96, np.int32),
        "tile_extent_y": np.full(4, 96, np.int32), "mpp_x": np.full(4, 0.5), "mpp_y": np.full(4, 0.5),
        "retained": np.array([True, True, False, True]),
    })
    out = tmp_path / "px.parquet"
    n = write_retained_pixels(str(tmp_path / "ret.parquet"), str(path), str(out), resample=resample, mpp=0.75,
                              tile_extent=64, row_group_tiles=2)
    rows = list(load_tile_pixels(out))
    assert n == 3 and [r["x"] for r, _ in rows] == [0, 96, 864]
    size = 64 if resample else 96
    for meta, px in rows:
        assert px.shape == (size, size, 3) and meta["tile_extent_x"] == size and meta["read_extent_x"] == 96
        assert meta["mpp_x"] == pytest.approx(0.5 * 96 / size)
        native = _crop(levels[0], meta["x"], meta["y"], 96, 96)
        ref = area_average(native, 64, 64) if resample else native
        assert np.abs(px - ref).max() <= 1.0


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_generic-pyramid_jpeg.tif"])
def test_jpeg_tiles_that_are_stored_tiles_keep_the_scanners_stream(shared_slides, tmp_path, name):
    import json

    import imagecodecs
    import pyarrow.parquet as pq
    import tifffile

    path = shared_slides / name
    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].keyframe
        seg, (h, w) = page.tilewidth, page.shape[:2]
        offsets, counts = page.dataoffsets, page.databytecounts
    # stored-grid tiles (passed through), one off the grid and one past the edge (encoded)
    xs = np.array([0, seg, 2 * seg, 7, (w // seg) * seg])
    ys = np.array([0, seg, 0, 5, 0])
    out = tmp_path / "px.parquet"
    n = write_tile_pixels(out, path, {"x": xs, "y": ys}, level=0, tile_extent_x=seg, tile_extent_y=seg,
                          encoding="jpeg", mpp_override=MPP_OVERRIDES.get(name), row_group_tiles=2)
    assert n == 5
    stats = json.loads(pq.read_metadata(out).metadata[b"mask_first.stats"])
    assert stats["tiles_passed_through"] == 3
    streams = pq.read_table(out).column("pixels").to_pylist()
    native = read_slide_tiles(path, xs, ys, seg, seg, 0, mpp_override=MPP_OVERRIDES.get(name))
    for k in range(3):
        index = (ys[k] // seg) * -(-w // seg) + xs[k] // seg
        with open(path, "rb") as f:
            f.seek(offsets[index])
            stored = f.read(counts[index])
        assert streams[k].endswith(stored[2:])  # the scanner's entropy-coded data, untouched
        # decoded by a plain JPEG decoder, no hints: exactly the slide's pixels
        np.testing.assert_array_equal(imagecodecs.jpeg8_decode(streams[k]), native[k])
    for k in (3, 4):  # re-encoded at jpeg_quality: close, not equal
        assert np.abs(imagecodecs.jpeg8_decode(streams[k]).astype(float) - native[k]).mean() < 3
    for (row, arr), k in zip(load_tile_pixels(out), range(5)):
        assert (row["x"], row["y"]) == (xs[k], ys[k]) and arr.shape == (seg, seg, 3)
