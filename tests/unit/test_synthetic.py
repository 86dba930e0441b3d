"""Tests for the deterministic synthetic whole-slide generator."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from mask_first.synthetic import (
    GENERATOR,
    demo_cohort_specs,
    render_synthetic_region,
    synthetic_level_dimensions,
    synthetic_pen_mask,
    synthetic_tissue_mask,
    write_demo_cohort,
    write_synthetic_slide,
)

W, H, MPP, SEED = 2048, 1536, 0.5, 101
SAT_THRESHOLD = 0.08  # glass is < 0.04, the palest tissue ~0.19


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return (mx - mn) / np.maximum(mx, 1.0)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


def _read_level(path: Path, level: int) -> np.ndarray:
    with openslide.OpenSlide(path) as slide:
        size = slide.level_dimensions[level]
        return np.asarray(slide.read_region((0, 0), level, size).convert("RGB"))


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "he.tiff"
    return write_synthetic_slide(out, W, H, mpp=MPP, seed=SEED, pen_mark=True)


def test_level_dimensions_rule() -> None:
    assert synthetic_level_dimensions(2048, 1536) == [(2048, 1536), (1024, 768), (512, 384), (256, 192)]
    assert synthetic_level_dimensions(1000, 300, tile_size=256) == [(1000, 300), (500, 150), (250, 75)]
    assert synthetic_level_dimensions(100, 100) == [(100, 100)]
    assert synthetic_level_dimensions(100, 100, n_levels=3) == [(100, 100), (50, 50), (25, 25)]


def test_openslide_reads_pyramid_and_mpp(he_slide: Path) -> None:
    with openslide.OpenSlide(he_slide) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_count == 4
        assert slide.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0, 8.0))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(MPP)
        assert slide.properties["openslide.level[0].tile-width"] == "256"
        assert GENERATOR in slide.properties[openslide.PROPERTY_NAME_COMMENT]
        assert f"seed={SEED}" in slide.properties[openslide.PROPERTY_NAME_COMMENT]


@pytest.mark.parametrize("level", [0, 2])
def test_read_region_matches_rendered_pixels(he_slide: Path, level: int) -> None:
    d = 2**level
    x, y, w, h = 100, 80, 300, 250  # level pixels, straddles tile borders
    with openslide.OpenSlide(he_slide) as slide:
        got = np.asarray(slide.read_region((x * d, y * d), level, (w, h)).convert("RGB")).astype(np.float64)
    want = render_synthetic_region(W, H, x=x, y=y, w=w, h=h, downsample=d, mpp=MPP, seed=SEED, pen_mark=True)
    err = got - want
    psnr = 10 * np.log10(255.0**2 / np.mean(err**2))
    # JPEG q85 4:2:0 loss only; level 2 (2 µm/px) is dense nuclear texture.
    assert np.abs(err).mean() < 6.0
    assert psnr > 27.0


def test_tile_pixels_are_exactly_the_jpeg_of_the_rendering(he_slide: Path) -> None:
    """A tile read back equals the rendering after one JPEG round trip, i.e. the
    only difference between written and analytic pixels is the codec."""
    level, tx, ty, t = 1, 1, 1, 256
    d = 2**level
    with openslide.OpenSlide(he_slide) as slide:
        got = np.asarray(slide.read_region((tx * t * d, ty * t * d), level, (t, t)).convert("RGB"))
    want = render_synthetic_region(W, H, x=tx * t, y=ty * t, w=t, h=t, downsample=d, mpp=MPP, seed=SEED, pen_mark=True)
    assert _saturation(want).mean() > 0.05  # the tile holds tissue, not just glass
    roundtrip = imagecodecs.jpeg8_decode(
        imagecodecs.jpeg8_encode(want, level=85, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))
    )
    np.testing.assert_allclose(got, roundtrip, atol=2)


def test_tifffile_reads_levels_tags_and_resolution(he_slide: Path) -> None:
    with tifffile.TiffFile(he_slide) as tif:
        assert len(tif.pages) == 4
        assert len(tif.series) == 1 and len(tif.series[0].levels) == 4
        for level, page in enumerate(tif.pages):
            d = 2**level
            assert page.shape == (H // d, W // d, 3)
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
            assert page.tags["YCbCrSubSampling"].value == (2, 2)
            assert page.subfiletype == (tifffile.FILETYPE.REDUCEDIMAGE if level else 0)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            xres, yres = page.tags["XResolution"].value, page.tags["YResolution"].value
            assert xres[0] / xres[1] == pytest.approx(1e4 / (MPP * d))
            assert yres[0] / yres[1] == pytest.approx(1e4 / (MPP * d))
            assert "DateTime" not in page.tags  # determinism: no timestamps
        assert GENERATOR in tif.pages[0].description
        # tifffile and OpenSlide decode the same pixels (both via libjpeg).
        low = tif.pages[3].asarray()
    np.testing.assert_allclose(low, _read_level(he_slide, 3), atol=2)


def test_deterministic_bytes(tmp_path: Path) -> None:
    kwargs = dict(mpp=0.25, seed=7, tile_size=256)
    a = write_synthetic_slide(tmp_path / "a.tiff", 1500, 1100, workers=1, **kwargs)
    b = write_synthetic_slide(tmp_path / "b.tiff", 1500, 1100, workers=3, **kwargs)
    c = write_synthetic_slide(tmp_path / "c.tiff", 1500, 1100, workers=1, **{**kwargs, "seed": 8})
    assert _sha256(a) == _sha256(b)
    assert _sha256(a) != _sha256(c)
    assert not list(tmp_path.glob("*.part"))


def test_rendered_tissue_matches_ground_truth(he_slide: Path) -> None:
    level = 2
    rgb = _read_level(he_slide, level)
    truth = synthetic_tissue_mask(W, H, downsample=2**level, seed=SEED)
    pen = synthetic_pen_mask(W, H, downsample=2**level, seed=SEED, pen_mark=True)
    assert truth.shape == rgb.shape[:2]
    assert 0.1 < truth.mean() < 0.7
    assert pen.any() and (pen & truth).any() and (pen & ~truth).any()  # crosses tissue and glass
    # Ink is saturated too: compare away from the stroke (dilated by 2 px).
    near_pen = _dilate(pen, 2)
    predicted = _saturation(rgb) > SAT_THRESHOLD
    agreement = (predicted == truth)[~near_pen].mean()
    assert agreement > 0.97, agreement
    # Holes are glass-coloured, not tissue (inner part: JPEG 4:2:0 chroma
    # bleeds ~2 px across edges).
    holes = synthetic_tissue_mask(W, H, downsample=2**level, seed=SEED, holes=False) & ~truth
    hole_core = holes & ~_dilate(~holes, 2) & ~near_pen
    assert hole_core.sum() > 50
    assert (_saturation(rgb)[hole_core] < SAT_THRESHOLD).mean() > 0.97


def test_pen_mark_is_blue_or_green(he_slide: Path) -> None:
    level = 2
    rgb = _read_level(he_slide, level).astype(np.int32)
    pen = synthetic_pen_mask(W, H, downsample=2**level, seed=SEED, pen_mark=True)
    tissue = synthetic_tissue_mask(W, H, downsample=2**level, seed=SEED)
    # Stroke core (eroded by 1 px) on glass.
    core = pen & ~_dilate(~pen, 1) & ~_dilate(tissue, 1)
    ink = rgb[core]
    assert len(ink) > 100
    r, g, b = ink[:, 0], ink[:, 1], ink[:, 2]
    blue_or_green = (np.maximum(g, b) - r > 40) & (np.maximum(g, b) > r)
    assert blue_or_green.mean() > 0.95
    # No ink anywhere by default for kind="blank"/"tissue", nor with pen_mark=False.
    assert not synthetic_pen_mask(W, H, downsample=8, seed=SEED, pen_mark=False).any()
    assert not synthetic_pen_mask(W, H, downsample=8, seed=SEED, kind="blank").any()


def test_blank_and_all_tissue_kinds(tmp_path: Path) -> None:
    blank = write_synthetic_slide(tmp_path / "blank.tiff", 1024, 1024, seed=3, kind="blank")
    assert not synthetic_tissue_mask(1024, 1024, downsample=1, seed=3, kind="blank").any()
    for level in (0, 2):
        rgb = _read_level(blank, level)
        assert (_saturation(rgb) < SAT_THRESHOLD).all()
        assert abs(float(rgb.mean()) - 240.0) < 2.0
    full = write_synthetic_slide(tmp_path / "tissue.tiff", 1024, 768, seed=3, kind="tissue")
    assert synthetic_tissue_mask(1024, 768, downsample=4, seed=3, kind="tissue").all()
    assert (_saturation(_read_level(full, 2)) > SAT_THRESHOLD).mean() > 0.99


def test_bigtiff_and_odd_sizes(tmp_path: Path) -> None:
    path = write_synthetic_slide(tmp_path / "odd.tif", 999, 517, tile_size=128, bigtiff=True, seed=1, quality=70)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
        assert [p.shape[:2] for p in tif.pages] == [(517, 999), (258, 499), (129, 249), (64, 124)]
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions == ((999, 517), (499, 258), (249, 129), (124, 64))
    mask = synthetic_tissue_mask(999, 517, downsample=2, seed=1)
    assert mask.shape == (258, 499)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_synthetic_slide(tmp_path / "x.tiff", 512, 512, tile_size=100)
    with pytest.raises(ValueError):
        write_synthetic_slide(tmp_path / "x.tiff", 512, 512, kind="ihc")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        synthetic_tissue_mask(512, 512, downsample=0)


@settings(max_examples=15, deadline=None)
@given(
    x=st.integers(0, 300),
    y=st.integers(0, 300),
    w=st.integers(1, 120),
    h=st.integers(1, 120),
    level=st.integers(0, 2),
)
def test_pixels_do_not_depend_on_region_grid(x: int, y: int, w: int, h: int, level: int) -> None:
    """A pixel's value is a function of its position only, not of the tile or
    region it is rendered in (the writer relies on this at tile borders)."""
    common = dict(downsample=2**level, seed=SEED, pen_mark=True, tile_size=128)
    big = render_synthetic_region(W, H, x=0, y=0, w=440, h=440, **common)
    small = render_synthetic_region(W, H, x=x, y=y, w=w, h=h, **common)
    diff = np.abs(big[y : y + h, x : x + w].astype(int) - small)
    assert diff.max() <= 1


def test_streaming_writer_memory_is_bounded(tmp_path: Path) -> None:
    size = 8192
    full_level_bytes = size * size * 3  # 201 MB
    tracemalloc.start()
    try:
        write_synthetic_slide(tmp_path / "big.tiff", size, size, seed=4, tissue_fraction=0.15, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < full_level_bytes / 8, peak  # measured ~14 MB of 201 MB
    with openslide.OpenSlide(tmp_path / "big.tiff") as slide:
        assert slide.level_dimensions[0] == (size, size)
        assert slide.level_count == 6


def test_demo_cohort(tmp_path: Path) -> None:
    paths = write_demo_cohort(tmp_path / "demo", large_size=2048)
    specs = demo_cohort_specs(large_size=2048)
    assert 3 <= len(paths) <= 4
    assert len({p.stem for p in paths}) == len(paths)
    assert [p.stem for p in paths] == [s["slide_id"] for s in specs]
    for path, spec in zip(paths, specs, strict=True):
        with openslide.OpenSlide(path) as slide:
            assert slide.level_dimensions[0] == (spec["width"], spec["height"])
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(spec["mpp"])
    assert max(s["width"] for s in demo_cohort_specs()) >= 20000
