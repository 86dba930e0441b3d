"""Level choice and tile rescaling: boundary, tolerance-deciding and anisotropic cases, hand-worked."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from mask_first.slides import choose_level, open_slide, slide_row


def test_a_level_exactly_at_the_target_is_chosen():
    # 1.5 = 1.0 * (1 + 0.5) exactly in binary floating point: the boundary itself is "not coarser"
    assert choose_level([(0.5, 0.5), (1.5, 1.5), (3.0, 3.0)], 1.0, tolerance=0.5) == 1
    assert choose_level([(0.5, 0.5), (1.0, 1.0), (2.0, 2.0)], 1.0, tolerance=0.0) == 1
    assert choose_level([(0.5, 0.5), (1.0, 1.0), (2.0, 2.0)], 0.75, tolerance=0.0) == 0


def test_the_tolerance_decides():
    mpps = [(0.25, 0.25), (0.5, 0.5), (1.0, 1.0), (4.0, 4.0)]
    # 1.0 <= 0.95 * 1.1 = 1.045: within the default 10 %, so level 2 ...
    assert choose_level(mpps, 0.95) == 2
    # ... and without tolerance 1.0 > 0.95: level 1
    assert choose_level(mpps, 0.95, tolerance=0.0) == 1
    # a 0.2527 µm/px scan serves a 0.25 µm/px target, a 0.28 one does not
    assert choose_level([(0.2527, 0.2527), (0.5054, 0.5054)], 0.25) == 0
    assert choose_level([(0.1, 0.1), (0.28, 0.28)], 0.25) == 0
    assert choose_level([(0.1, 0.1), (0.27, 0.27)], 0.25) == 1


def test_anisotropic_levels_are_judged_by_their_coarser_axis():
    # level 1 is fine enough in x (1.0) but too coarse in y (2.0) for a 1.0 µm/px target
    assert choose_level([(0.5, 0.5), (1.0, 2.0)], 1.0) == 0
    assert choose_level([(0.5, 0.5), (2.0, 1.0)], 1.0) == 0
    assert choose_level([(0.5, 0.5), (1.0, 2.0)], 2.0) == 1


@pytest.fixture
def anisotropic_tiff(tmp_path):
    """Level 0: 700 x 600 px at 0.5 x 0.25 µm/px; level 1 halves x and quarters y (1.0 x 1.0 µm/px);
    level 2 halves both again (2.0 x 2.0)."""
    y, x = np.mgrid[0:600, 0:700]
    img = np.stack([(x * 0.3) % 256, (y * 0.4) % 256, ((x + y) * 0.2) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "aniso.ome.tif"
    levels = [img, img[::4, ::2], img[::8, ::4]]
    # OME SubIFDs: tifffile groups pages of another aspect ratio into one pyramid only this way
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(levels[0], tile=(64, 64), subifds=2, compression="zlib", photometric="rgb",
                 metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25})
        for arr in levels[1:]:
            tw.write(arr, tile=(64, 64), subfiletype=1, compression="zlib", photometric="rgb", metadata=None)
    return path, levels


def test_anisotropic_pyramid_level_mpp_and_choice(anisotropic_tiff):
    path, levels = anisotropic_tiff
    with open_slide(path) as s:
        assert s.level_dimensions == [(700, 600), (350, 150), (175, 75)]
        assert (s.mpp_x, s.mpp_y) == pytest.approx((0.5, 0.25))
        # per-axis downsamples 700/350 = 2 and 600/150 = 4
        assert s.level_mpp(1) == pytest.approx((1.0, 1.0)) and s.level_mpp(2) == pytest.approx((2.0, 2.0))
        assert s.best_level_for_mpp(1.0) == 1 and s.best_level_for_mpp(0.9) == 0
        np.testing.assert_array_equal(s.read_region(1, 10, 20, 30, 40), levels[1][20:60, 10:40])


def test_slide_row_rescales_each_axis_by_its_own_mpp(anisotropic_tiff):
    path, _ = anisotropic_tiff
    # target 0.5 µm/px: level 0 (its coarser axis is 0.5); a 100 px tile at 0.5 µm/px is 50 µm,
    # which is 50 / 0.5 = 100 px in x but 50 / 0.25 = 200 px in y
    row = slide_row(path, mpp=0.5, tile_extent=100, stride=(60, 30))
    assert (row["level"], row["tile_extent_x"], row["tile_extent_y"]) == (0, 100, 200)
    assert (row["stride_x"], row["stride_y"]) == (60, 60)
    assert (row["mpp_x"], row["mpp_y"]) == pytest.approx((0.5, 0.25))
    row = slide_row(path, mpp=1.5, tile_extent=(100, 80), stride=100)
    assert (row["level"], row["tile_extent_x"], row["tile_extent_y"], row["stride_y"]) == (1, 150, 120, 150)
    assert row["downsample"] == pytest.approx(np.sqrt(2 * 4))


def test_real_pyramid_level_mpp_uses_each_axis_downsample(shared_slides):
    import openslide

    path = shared_slides / "CMU-1-Small-Region_generic-pyramid_jpeg.tif"
    osr = openslide.OpenSlide(str(path))
    (w0, h0) = osr.level_dimensions[0]
    with open_slide(path) as s:
        for k, (w, h) in enumerate(osr.level_dimensions):
            assert s.level_mpp(k) == pytest.approx((s.mpp_x * w0 / w, s.mpp_y * h0 / h), rel=1e-12)
        assert s.level_mpp(4)[0] != pytest.approx(s.level_mpp(4)[1], rel=1e-4)  # 2220/138 vs 2967/185
