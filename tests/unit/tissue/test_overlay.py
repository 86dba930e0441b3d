"""Mask overlays: pyramid format, OpenSlide/tifffile round trips, atomic writes, alignment checks."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

import mask_first.tissue.overlay as overlay_mod
from conftest import write_pyramid_tiff
from mask_first.tissue.overlay import (
    build_pyramid,
    check_mask_alignment,
    mode_downsample_2x2,
    read_mask_overlay,
    write_mask_overlay,
)
from mask_first.tissue.detection import tissue_mask_with_info
from mask_first.slides import open_slide


def _brute_mode(a: np.ndarray) -> np.ndarray:
    """2x2 block mode with Counter; ties -> largest value; odd edges use the existing pixels."""
    h, w = a.shape
    out = np.zeros(((h + 1) // 2, (w + 1) // 2), np.uint8)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            c = Counter(a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel().tolist())
            top = max(c.values())
            out[i, j] = max(v for v, n in c.items() if n == top)
    return out


def _mask(h: int = 700, w: int = 901, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    m[50:400, 100:600] = 255
    m[450:680, 650:880] = 255
    m[rng.random((h, w)) < 0.02] ^= 255  # salt and pepper: plenty of 2-2 ties
    return m


# ---------------------------------------------------------------------------
# mode downsampling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (1, 1), (1, 6), (5, 1), (33, 64)])
@pytest.mark.parametrize("labels", [(0, 255), (0, 1, 2, 3), (0, 7, 200, 255, 13)])
def test_mode_downsample_matches_brute_force(shape, labels):
    rng = np.random.default_rng(sum(shape) + len(labels))
    a = rng.choice(np.array(labels, np.uint8), size=shape)
    np.testing.assert_array_equal(mode_downsample_2x2(a), _brute_mode(a))


def test_mode_downsample_ties_and_edges():
    a = np.array([[0, 255, 3, 3, 9], [255, 0, 3, 5, 1]], np.uint8)
    # 2-2 tie -> 255; 3 of 4 -> 3; odd column (9 above 1) -> 1-1 tie -> 9
    np.testing.assert_array_equal(mode_downsample_2x2(a), [[255, 3, 9]])
    with pytest.raises(ValueError):
        mode_downsample_2x2(np.zeros((4, 4), np.uint16))


# ---------------------------------------------------------------------------
# round trip: tifffile and OpenSlide
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [8.0, 0.499, 7.3])
def test_round_trip_tifffile_and_openslide(tmp_path, mpp):
    mask = _mask()
    prov = {"generator": "test", "mpp": mpp, "slide": "x.svs", "params": {"a": [1, 2]}}
    path = write_mask_overlay(tmp_path / "m.tiff", mask, mpp, provenance=prov, tile_size=128)
    levels = build_pyramid(mask, 128)
    assert [lv.shape for lv in levels] == [(700, 901), (350, 451), (175, 226), (88, 113)]

    # reader of the package
    got, mx, my, got_prov = read_mask_overlay(path)
    np.testing.assert_array_equal(got, mask)
    assert mx == pytest.approx(mpp, rel=1e-9) and my == pytest.approx(mpp, rel=1e-9)
    assert got_prov == prov

    # tifffile: one IFD per level, reduced-image bit, tiles, deflate, resolution on every page
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == len(levels)
        for k, (page, want) in enumerate(zip(tif.pages, levels)):
            assert page.shape == want.shape and page.dtype == np.uint8
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (128, 128)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
            assert int(page.tags["NewSubfileType"].value if "NewSubfileType" in page.tags else 0) == (1 if k else 0)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            for tag in ("XResolution", "YResolution"):
                num, den = page.tags[tag].value
                assert 1e4 * den / num == pytest.approx(mpp * 2**k, rel=1e-9)
            np.testing.assert_array_equal(page.asarray(), want)
            assert set(np.unique(page.asarray())) <= {0, 255}  # levels hold labels only
            assert "DateTime" not in page.tags and "Software" not in page.tags
        assert json.loads(tif.pages[0].description) == prov

    # OpenSlide 4 generic-tiff
    osr = openslide.OpenSlide(str(path))
    try:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.level_count == len(levels)
        assert osr.level_dimensions == tuple((lv.shape[1], lv.shape[0]) for lv in levels)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-9)
        assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(mpp, rel=1e-9)
        assert json.loads(osr.properties["openslide.comment"]) == prov
        for k in (0, 1, len(levels) - 1):
            w, h = osr.level_dimensions[k]
            rgba = np.asarray(osr.read_region((0, 0), k, (w, h)))
            assert (rgba[..., 3] == 255).all()
            for c in range(3):  # grey comes back as R = G = B
                np.testing.assert_array_equal(rgba[..., c], levels[k])
    finally:
        osr.close()


def test_pyramid_levels_are_brute_force_modes(tmp_path):
    mask = (np.random.default_rng(3).random((301, 257)) < 0.5).astype(np.uint8) * 255
    path = write_mask_overlay(tmp_path / "m.tiff", mask, 2.0, tile_size=64)
    with tifffile.TiffFile(path) as tif:
        pages = [p.asarray() for p in tif.pages]
    assert max(pages[-1].shape) <= 64
    for prev, cur in zip(pages, pages[1:]):
        np.testing.assert_array_equal(cur, _brute_mode(prev))


def test_bytes_are_deterministic(tmp_path):
    mask = _mask(300, 200)
    prov = {"b": 1, "a": "µm"}  # key order and non-ASCII must not matter
    a = write_mask_overlay(tmp_path / "a.tiff", mask, 8.0, provenance=prov)
    b = write_mask_overlay(tmp_path / "b.tiff", mask, 8.0, provenance=dict(reversed(list(prov.items()))))
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert read_mask_overlay(a)[3] == prov


def test_small_mask_single_level_and_other_codecs(tmp_path):
    mask = np.array([[0, 255, 7]], np.uint8)
    for comp in ("zlib", "lzw", "none"):
        path = write_mask_overlay(tmp_path / f"{comp}.tiff", mask, (2.0, 3.0), compression=comp)
        got, mx, my, prov = read_mask_overlay(path)
        np.testing.assert_array_equal(got, mask)
        assert (mx, my, prov) == (pytest.approx(2.0), pytest.approx(3.0), {})
        osr = openslide.OpenSlide(str(path))
        assert osr.level_count == 1 and osr.level_dimensions == ((3, 1),)
        osr.close()


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="2-D uint8"):
        write_mask_overlay(tmp_path / "x.tiff", np.zeros((4, 4, 3), np.uint8), 8.0)
    with pytest.raises(ValueError, match="2-D uint8"):
        write_mask_overlay(tmp_path / "x.tiff", np.zeros((4, 4), bool), 8.0)
    with pytest.raises(ValueError, match="mpp"):
        write_mask_overlay(tmp_path / "x.tiff", np.zeros((4, 4), np.uint8), 0.0)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# atomic write
# ---------------------------------------------------------------------------


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out" / "mask.tiff"
    calls = {"n": 0}
    real_write = tifffile.TiffWriter.write

    def failing_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # level 0 is on disk, level 1 fails
            raise OSError("disk full (simulated)")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        write_mask_overlay(path, _mask(), 8.0, tile_size=128)
    assert calls["n"] == 2
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # the temporary file is gone too


def test_failed_rewrite_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_mask_overlay(tmp_path / "mask.tiff", _mask(), 8.0)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("killed (simulated)")

    monkeypatch.setattr(overlay_mod, "build_pyramid", lambda mask, tile: [mask, boom()])
    with pytest.raises(RuntimeError):
        write_mask_overlay(path, np.zeros((10, 10), np.uint8), 4.0)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mask.tiff"]


def test_temporary_name_is_hidden_and_in_the_same_directory(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        assert Path(src).exists() and not Path(dst).exists()
        return real_replace(src, dst)

    monkeypatch.setattr(overlay_mod.os, "replace", spy)
    path = write_mask_overlay(tmp_path / "m.tiff", _mask(50, 60), 8.0)
    (src, dst), = seen
    assert dst == path and src.parent == path.parent
    assert src.name.startswith(".m.tiff.tmp") and src.name != path.name


# ---------------------------------------------------------------------------
# reading foreign / invalid files
# ---------------------------------------------------------------------------


def test_read_rejects_invalid_files(tmp_path):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((8, 8, 3), np.uint8), resolution=(1250, 1250), resolutionunit="CENTIMETER")
    noreso = tmp_path / "noreso.tif"
    tifffile.imwrite(noreso, np.zeros((8, 8), np.uint8))
    wide = tmp_path / "u16.tif"
    tifffile.imwrite(wide, np.zeros((8, 8), np.uint16), resolution=(1250, 1250), resolutionunit="CENTIMETER")
    notiff = tmp_path / "mask.png"
    notiff.write_bytes(b"\x89PNG not really")
    for path, what in [
        (rgb, "2-D uint8"),
        (noreso, "resolution|ResolutionUnit"),
        (wide, "2-D uint8"),
        (notiff, "not a readable mask overlay"),
        (tmp_path / "missing.tiff", "not found"),
    ]:
        with pytest.raises(ValueError, match=what) as err:
            read_mask_overlay(path)
        msg = str(err.value)
        assert path.name in msg and "\n" not in msg


def test_read_user_mask_without_provenance(tmp_path):
    path = tmp_path / "user.tif"
    mask = _mask(40, 30)
    tifffile.imwrite(path, mask, resolution=(2.54e4 / 16, 2.54e4 / 16), resolutionunit="INCH", metadata=None)
    got, mx, my, prov = read_mask_overlay(path)
    np.testing.assert_array_equal(got, mask)
    assert (mx, my) == (pytest.approx(16.0), pytest.approx(16.0))
    assert prov == {}
    tifffile.imwrite(path, mask, resolution=(625, 625), resolutionunit="CENTIMETER", description="made by hand")
    assert read_mask_overlay(path)[3] == {"description": "made by hand"}


# ---------------------------------------------------------------------------
# alignment with the slide (bring your own mask)
# ---------------------------------------------------------------------------


@pytest.fixture
def slide_path(tmp_path) -> Path:
    img = np.full((1000, 1300, 3), 240, np.uint8)  # 1300 x 1000 µm at 1 µm/px
    img[96:600, 200:904] = (200, 120, 175)  # edges on the 8 µm grid
    return write_pyramid_tiff(tmp_path / "slide.tif", img, mpp=1.0, tile=128, levels=3, compression="zlib")


def test_check_mask_alignment(slide_path):
    with open_slide(slide_path) as slide:
        assert check_mask_alignment((125, 163), 8.0, slide) == (125, 163)  # ceil(1000/8), ceil(1300/8)
        check_mask_alignment((125, 162), (8.0, 8.0), slide)  # floor: within one mask pixel
        check_mask_alignment((250, 325), 4.0, slide)
        with pytest.raises(ValueError, match="slide.tif") as err:
            check_mask_alignment((127, 163), 8.0, slide, mask_name="user.tif")
        msg = str(err.value)
        assert msg.startswith("user.tif") and "163 x 125 px" in msg and "\n" not in msg
        with pytest.raises(ValueError, match="expected a mask of 325 x 250"):
            check_mask_alignment((125, 163), 4.0, slide)  # right shape, wrong mpp
    assert check_mask_alignment((125, 163), 8.0, str(slide_path)) == (125, 163)


def test_generated_mask_round_trip_aligns_with_its_slide(slide_path, tmp_path):
    res = tissue_mask_with_info(slide_path, 8.0, "otsu")
    path = write_mask_overlay(tmp_path / "mask.tiff", res.mask, res.mpp, provenance=res.provenance())
    mask, mx, my, prov = read_mask_overlay(path)
    np.testing.assert_array_equal(mask, res.mask)
    assert prov["level"] == 2 and prov["method"] == "otsu"
    with open_slide(slide_path) as slide:
        check_mask_alignment(mask.shape, (mx, my), slide)
    # the tissue block (x 200..904, y 96..600 µm) sits exactly where it should in the overlay
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (96 // 8, 600 // 8, 200 // 8, 904 // 8)
