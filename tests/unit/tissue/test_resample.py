"""A level onto the mask grid (:mod:`mask_first.tissue.resample`): area means, alignment, banded reads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mask_first.slides import open_slide
from mask_first.tissue import resample
from mask_first.tissue.detection import mask_shape
from tissue_scenes import ArraySlide, rect_tiff  # noqa: F401 (rect_tiff: a fixture)


@pytest.mark.parametrize("f", [1.0, 0.93, 1.0025, 1.3, 1.5, 2.0, 2.5, 3.125, 5.0, 0.6])
@pytest.mark.parametrize("axis", [0, 1])
def test_resampling_is_area_average_and_aligned(f, axis):
    """A ramp of 4 grey levels per level pixel: the mask grey is the area average over [j f, (j+1) f).

    The mean error is the alignment (a half-pixel shift would be 2 f grey levels).
    """
    n = 60
    ramp = (4 * np.arange(n) + 10).astype(np.uint8)  # 10 .. 246
    line = ramp[:, None] if axis == 0 else ramp[None, :]
    img = np.broadcast_to(line, (n, n) if axis == 0 else (n, n)).astype(np.uint8)
    img = np.repeat(img[..., None], 3, axis=2)  # grey: luma == value
    slide = ArraySlide([img], mpp=1.0)
    mpp = f * 1.0
    out_h, out_w = mask_shape(slide, mpp)
    grey = resample.level_on_mask_grid(slide, 0, (out_h, out_w), (f, f))[:, :, 0]
    assert grey.shape == (out_h, out_w) == (math.ceil(n / f - 1e-6),) * 2
    # exact area average, 1000 samples per level pixel, white (255) past the slide
    sub = 1000
    fine = np.concatenate([np.repeat(ramp.astype(float), sub), np.full(4 * sub, 255.0)])
    j = np.arange(grey.shape[axis])
    want = np.array([fine[round(a * sub) : round(b * sub)].mean() for a, b in zip(j * f, (j + 1) * f)])
    got = grey[:, 0] if axis == 0 else grey[0, :]
    inner = slice(1, -2)  # interior pixels (the ends mix in white / the slide edge)
    err = got[inner].astype(float) - want[inner]
    assert abs(err.mean()) < 0.8, err.mean()  # < 0.2 level px (values are rounded per step)
    assert np.abs(err).max() < 2.6, np.abs(err).max()


@pytest.mark.parametrize("f", [1.3, 1.5, 1.7, 2.5, 3.125, 5.0])
@pytest.mark.parametrize("axis", [0, 1])
def test_resampling_mixes_a_step_edge_by_area(f, axis):
    """A step from 40 to 240 grey at level pixel 23: the mask pixel across it is the area-weighted mix.

    A linear ramp cannot tell an area average from bilinear interpolation (both give the ramp's value at
    the centre); a step can: bilinear at the centre of a pixel that straddles the edge weighs the two
    sides by distance, not by area.
    """
    n, edge, lo, hi = 60, 23, 40.0, 240.0
    line = np.where(np.arange(n) < edge, lo, hi).astype(np.uint8)
    img = np.broadcast_to(line[:, None] if axis == 0 else line[None, :], (n, n))
    img = np.repeat(img[..., None], 3, axis=2)
    slide = ArraySlide([np.ascontiguousarray(img)], mpp=1.0)
    grey = resample.level_on_mask_grid(slide, 0, mask_shape(slide, f), (f, f))[:, :, 0].astype(float)
    got = grey[:, 0] if axis == 0 else grey[0, :]
    j = np.arange(math.floor(n / f + 1e-9))  # pixels wholly on the slide: (j + 1) f <= n
    a, b = j * f, (j + 1) * f
    share_lo = np.clip((edge - a) / f, 0, 1)  # fraction of the pixel's area left of the edge
    want = share_lo * lo + (1 - share_lo) * hi
    assert ((a < edge) & (b > edge)).any()  # a pixel lies across the edge, where the two resamplers differ
    assert np.abs(got[j] - want).max() < 2.6, (np.abs(got[j] - want).max(), f)


def test_level_read_in_bands_on_two_threads_equals_one_read(rect_tiff):
    """The band-split read gives the pixels of one ``read_region``, for any rows, white past the right edge."""
    with open_slide(rect_tiff) as s:
        for level in range(s.level_count):
            lw, lh = s.level_dimensions[level]
            np.testing.assert_array_equal(resample._read_level(s, level), s.read_level(level))
            for y0, y1 in [(0, 1), (3, lh), (lh // 3, lh // 3 + 7), (1, lh - 1)]:
                got = resample._read_rows(s, level, y0, y1, lw + 5)
                np.testing.assert_array_equal(got, s.read_region(level, 0, y0, lw + 5, y1 - y0))
