"""Tissue masks through the entry points: grid geometry, level choice, guards, parameters, real slides."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import MPP_OVERRIDES, write_pyramid_tiff
from mask_first.slides import SlideError, TiffSlide, open_slide
from mask_first.tissue.detection import default_params, mask_shape, tissue_mask, tissue_mask_with_info
from tissue_scenes import GLASS, TISSUE_RGB, ArraySlide, box_pyramid, iou, pen_scene, rect_scene, rect_tiff, truth_fraction  # noqa: F401 (rect_tiff: a fixture)


@pytest.mark.parametrize("mpp", [4.0, 8.0, 5.0, 12.5, 3.0, 20.0])
@pytest.mark.parametrize("method", ["otsu", "saturation"])
def test_rectangles_match_known_geometry(rect_tiff, mpp, method):
    res = tissue_mask_with_info(rect_tiff, mpp, method)
    want_h, want_w = math.ceil(1200 / mpp), math.ceil(1600 / mpp)
    assert res.mask.shape == (want_h, want_w)
    assert res.mask.dtype == np.uint8 and set(np.unique(res.mask)) <= {0, 255}
    truth = truth_fraction(want_w, want_h, mpp) >= 0.5
    # at 20 µm/px a fifth of the tissue pixels are boundary pixels, and the
    # saturation of a tissue/glass mix is below the mix of the saturations
    assert iou(res.mask == 255, truth) > (0.95 if mpp <= 12.5 else 0.92), (mpp, method, iou(res.mask == 255, truth))
    # the level read: the coarsest of 1, 2, 4 µm/px not coarser than the mask (10 % slack)
    assert res.level == max(k for k, m in enumerate([1.0, 2.0, 4.0]) if m <= mpp * 1.1)


def test_anisotropic_pixels_give_square_mask_pixels():
    img = np.full((200, 300, 3), 240, np.uint8)
    img[50:150, 100:200] = TISSUE_RGB  # 100 x 100 px = 50 µm wide, 100 µm high
    slide = ArraySlide([img], mpp=(0.5, 1.0))
    mask = tissue_mask(slide, 5.0, closing_um=0, opening_um=0)
    assert mask.shape == (40, 30)  # 200 µm high, 150 µm wide at 5 µm/px
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 29, 10, 19)


@pytest.mark.parametrize(("mpp", "level"), [(32.0, 2), (40.0, 2), (16.0, 1), (8.5, 1), (4.0, 0), (1.5, 0)])
def test_reads_only_the_level_nearest_not_coarser(mpp, level):
    img = rect_scene(2.0)[:576, :768]  # 2 µm/px
    levels = [img, img[::4, ::4].copy(), img[::16, ::16].copy()]  # 2, 8, 32 µm/px
    slide = ArraySlide(levels, mpp=2.0)
    res = tissue_mask_with_info(slide, mpp)
    assert res.level == level
    assert slide.reads and {r[0] for r in slide.reads} == {level}


def test_real_tiff_never_reads_level_0_when_a_coarser_level_fits(rect_tiff, monkeypatch):
    calls = []
    orig = TiffSlide.read_regions_into

    def spy(self, level, *args, **kwargs):
        calls.append(level)
        return orig(self, level, *args, **kwargs)

    monkeypatch.setattr(TiffSlide, "read_regions_into", spy)
    for method in ("otsu", "saturation"):
        tissue_mask(rect_tiff, 8.0, method)
    assert calls and set(calls) == {2}


@pytest.mark.parametrize("method", ["otsu", "saturation"])
@pytest.mark.parametrize("noise", [0.0, 3.0, 8.0])
def test_blank_glass_gives_empty_mask(method, noise):
    rng = np.random.default_rng(5)
    img = np.clip(rng.normal(238, noise, (400, 500, 1)) + rng.normal(0, noise / 3, (400, 500, 3)), 0, 255)
    slide = ArraySlide([img.astype(np.uint8)], mpp=1.0)
    res = tissue_mask_with_info(slide, 8.0, method)
    assert res.mask.shape == (50, 63)
    assert not res.mask.any(), res.stats
    assert res.stats["fallback"]


@pytest.mark.parametrize("method", ["otsu", "saturation"])
def test_synthetic_blank_and_all_tissue_slides(tmp_path, method):
    from mask_first.synthetic import write_synthetic_slide

    blank = write_synthetic_slide(tmp_path / "blank.tiff", 1024, 768, mpp=1.0, kind="blank", seed=3)
    full = write_synthetic_slide(tmp_path / "tissue.tiff", 1024, 768, mpp=1.0, kind="tissue", seed=3)
    assert not tissue_mask(blank, 8.0, method).any()
    m = tissue_mask(full, 8.0, method)
    assert m.shape == (96, 128)
    assert np.count_nonzero(m) / m.size > 0.99


def test_pen_ink_rejected_by_saturation_not_by_otsu():
    img, tissue, pen = pen_scene()
    slide = ArraySlide(box_pyramid(img, 3), mpp=1.0)
    sat = tissue_mask_with_info(slide, 8.0, "saturation")
    otsu = tissue_mask(slide, 8.0, "otsu")
    t8 = tissue.reshape(100, 8, 150, 8).mean(axis=(1, 3)) >= 0.5
    p8 = pen.reshape(100, 8, 150, 8).mean(axis=(1, 3)) >= 0.5
    assert np.count_nonzero((sat.mask == 255) & p8) <= 0.02 * np.count_nonzero(p8)
    assert np.count_nonzero((otsu == 255) & p8) >= 0.9 * np.count_nonzero(p8)  # otsu sees ink as tissue
    assert iou(sat.mask == 255, t8) > 0.95
    assert sat.stats["pen_fraction"] > 0.05
    # without pen rejection the coloured strokes come back
    no_reject = tissue_mask(slide, 8.0, "saturation", reject_pen=False)
    assert np.count_nonzero((no_reject == 255) & p8) > 0.5 * np.count_nonzero(p8)


def test_synthetic_he_slide_with_pen(tmp_path):
    from mask_first.synthetic import synthetic_pen_mask, synthetic_tissue_mask, write_synthetic_slide

    w, h, seed = 2048, 1536, 3
    path = write_synthetic_slide(tmp_path / "he.tiff", w, h, mpp=1.0, seed=seed, kind="he", pen_mark=True, workers=2)
    truth = synthetic_tissue_mask(w, h, downsample=8, seed=seed)
    pen = synthetic_pen_mask(w, h, downsample=8, seed=seed, pen_mark=True)
    pen_on_glass = pen & ~truth
    assert np.count_nonzero(pen_on_glass) > 100
    sat = tissue_mask_with_info(path, 8.0, "saturation")
    otsu = tissue_mask_with_info(path, 8.0, "otsu")
    assert sat.mask.shape == otsu.mask.shape == truth.shape == (192, 256)
    assert sat.level == otsu.level == 3  # 8 µm/px
    assert np.count_nonzero((sat.mask == 255) & pen_on_glass) <= 0.05 * np.count_nonzero(pen_on_glass)
    assert np.count_nonzero((otsu.mask == 255) & pen_on_glass) >= 0.8 * np.count_nonzero(pen_on_glass)
    assert iou(sat.mask == 255, truth) > 0.93
    assert iou(otsu.mask == 255, truth | pen) > 0.9


def test_parameters_are_validated(rect_tiff):
    with pytest.raises(ValueError, match="unknown tissue mask method"):
        tissue_mask(rect_tiff, 8.0, "kmeans")
    with pytest.raises(TypeError, match="closing_radius"):
        tissue_mask(rect_tiff, 8.0, closing_radius=3)
    with pytest.raises(TypeError, match="reject_pen"):
        tissue_mask(rect_tiff, 8.0, "otsu", reject_pen=True)  # a saturation-only parameter
    with pytest.raises(ValueError, match="mpp"):
        tissue_mask(rect_tiff, 0.0)
    with pytest.raises(ValueError, match="pen_hue_deg"):
        tissue_mask(rect_tiff, 8.0, "saturation", pen_hue_deg=(0, 120))
    with pytest.raises(ValueError, match="closing_um"):
        tissue_mask(rect_tiff, 8.0, closing_um=-1)
    with open_slide(rect_tiff) as slide, pytest.raises(ValueError, match="mpp_override"):
        tissue_mask(slide, 8.0, mpp_override=0.5)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="ink_grid"):
            tissue_mask(rect_tiff, 8.0, ink_grid=bad)
    for bad in (0, -8.0, float("nan")):
        with pytest.raises(ValueError, match="ink_mpp"):
            tissue_mask(rect_tiff, 8.0, ink_mpp=bad)
    with pytest.raises(ValueError, match="ink_same_hue_min_ratio"):
        tissue_mask(rect_tiff, 8.0, ink_same_hue_min_ratio=-1)


def test_slide_or_path_and_provenance(rect_tiff):
    with open_slide(rect_tiff) as slide:
        a = tissue_mask_with_info(slide, 8.0, "saturation", opening_um=0)
    b = tissue_mask_with_info(str(rect_tiff), 8.0, "saturation", opening_um=0)
    np.testing.assert_array_equal(a.mask, b.mask)
    prov = json.loads(json.dumps(b.provenance()))
    assert prov["method"] == "saturation" and prov["mpp"] == 8.0 and prov["level"] == 2
    assert prov["params"] == {**default_params("saturation"), "opening_um": 0, "pen_hue_deg": [70.0, 235.0]}
    assert prov["level_mpp"] == [4.0, 4.0] and prov["slide_mpp"] == [1.0, 1.0]
    assert prov["mask_shape"] == [150, 200] and prov["slide"] == "rects.tif"
    assert prov["slide_path"] == str(rect_tiff)
    assert 0.2 < prov["tissue_fraction"] < 0.6 and "threshold" in prov["stats"]


def test_path_needs_mpp_override_when_metadata_lacks_it(tmp_path):
    p = write_pyramid_tiff(tmp_path / "nompp.tif", rect_scene(2.0), mpp=None, tile=64, levels=2, compression="zlib")
    with pytest.raises(SlideError, match="mpp"):
        tissue_mask(p, 8.0)
    assert tissue_mask(p, 8.0, mpp_override=2.0).shape == (150, 200)


def test_cmu_small_region_both_methods(shared_slides):
    path = shared_slides / "CMU-1-Small-Region.svs"
    otsu = tissue_mask_with_info(path, 8.0, "otsu")
    sat = tissue_mask_with_info(path, 8.0, "saturation")
    assert otsu.mask.shape == sat.mask.shape == (186, 139)  # 2967 x 2220 px at 0.499 µm/px
    for res in (otsu, sat):
        assert 0.2 < res.tissue_fraction < 0.6, res.tissue_fraction
        assert not res.stats["fallback"]
    assert np.mean(otsu.mask == sat.mask) > 0.9


def test_real_pyramids_read_their_coarse_level(shared_slides, monkeypatch):
    calls = []
    orig = TiffSlide.read_regions_into

    def spy(self, level, *args, **kwargs):
        calls.append((self.path.name, level))
        return orig(self, level, *args, **kwargs)

    monkeypatch.setattr(TiffSlide, "read_regions_into", spy)
    g = tissue_mask_with_info(shared_slides / "CMU-1-Small-Region_generic-pyramid_jpeg.tif", 8.0)
    o = tissue_mask_with_info(shared_slides / "CMU-1-Small-Region.ome.tif", 8.0)
    assert (g.level, o.level) == (4, 3)
    assert {lv for _, lv in calls} == {3, 4}
    assert g.mask.shape == o.mask.shape == (186, 139)
    assert np.mean(g.mask == o.mask) > 0.95


def test_real_slides_with_mpp_override(shared_slides):
    kidney = tissue_mask_with_info(
        shared_slides / "kidney-48-5.tif", 8.0, mpp_override=MPP_OVERRIDES["kidney-48-5.tif"]
    )
    assert kidney.mask.shape == (57, 94)
    assert 0 < kidney.tissue_fraction < 0.05  # one small fragment on an almost empty slide
    with pytest.raises(SlideError, match="mpp"):
        tissue_mask(shared_slides / "tcga-cr-7395-01a-01-ts1.svs", 8.0)
    tcga = tissue_mask_with_info(shared_slides / "tcga-cr-7395-01a-01-ts1.svs", 8.0, mpp_override=0.25)
    assert tcga.level == 1 and tcga.mask.shape == (112, 139)
    assert 0.3 < tcga.tissue_fraction < 0.9


def test_seed_form_takes_a_pyvips_image_at_the_mask_resolution():
    import pyvips

    img, _, _ = pen_scene()
    level = box_pyramid(img, 4)[3]  # 8 µm/px
    vimg = pyvips.Image.new_from_array(level)
    got = tissue_mask(slide=vimg, mpp=(8.0, 8.0))
    assert isinstance(got, pyvips.Image) and (got.width, got.height, got.bands) == (150, 100, 1)
    want = tissue_mask(ArraySlide([level], mpp=8.0), 8.0)
    np.testing.assert_array_equal(got.numpy(), want)
    otsu = tissue_mask(slide=vimg.bandjoin(255), mpp=(8.0, 8.0), method="otsu")  # RGBA accepted
    np.testing.assert_array_equal(otsu.numpy(), tissue_mask(ArraySlide([level], mpp=8.0), 8.0, "otsu"))


@pytest.mark.parametrize("level_mpp", [8.0864, 8.6, 16.78])  # copied in runs of columns; in runs; one by one
def test_level_coarser_than_the_mask_gives_each_mask_pixel_the_label_under_its_centre(level_mpp):
    """Mask at 8 µm/px of a slide whose only level is coarser: label of mask pixel (i, j) = that of the level
    pixel holding its centre, ``floor((i + 0.5) * 8 / level_mpp)``, glass past the level's edge."""
    rng = np.random.default_rng(7)
    level_tissue = rng.random((90, 130)) < 0.5
    img = np.where(level_tissue[:, :, None], np.array(TISSUE_RGB, np.uint8), np.array(GLASS, np.uint8))
    slide = ArraySlide([img], mpp=level_mpp)
    res = tissue_mask_with_info(slide, 8.0, "otsu", closing_um=0, opening_um=0)
    assert res.stats["classified_at_level_resolution"]
    h, w = mask_shape(slide, 8.0)
    rows = np.floor((np.arange(h) + 0.5) * 8.0 / level_mpp).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * 8.0 / level_mpp).astype(int)
    padded = np.zeros((rows.max() + 1, cols.max() + 1), bool)
    padded[:90, :130] = level_tissue
    np.testing.assert_array_equal(res.mask, np.where(padded[np.ix_(rows, cols)], 255, 0))
