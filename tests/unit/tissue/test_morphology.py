"""Closing, opening, small objects and holes (:mod:`mask_first.tissue.morphology`) against references."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from mask_first.tissue import morphology
from mask_first.tissue.detection import tissue_mask
from tissue_scenes import TISSUE_RGB, ArraySlide


def _ref_dilate(m: np.ndarray, offsets) -> np.ndarray:
    h, w = m.shape
    out = np.zeros_like(m)
    for dy, dx in offsets:  # out(y, x) |= m(y + dy, x + dx), outside = False
        src = np.zeros_like(m)
        src[max(0, -dy) : min(h, h - dy), max(0, -dx) : min(w, w - dx)] = m[
            max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)
        ]
        out |= src
    return out


def _ref_disk(r: float):
    R = int(math.floor(r))
    return [(dy, dx) for dy in range(-R, R + 1) for dx in range(-R, R + 1) if dx * dx + dy * dy <= r * r + 1e-9]


@pytest.mark.parametrize("shape", [(37, 70), (64, 64), (50, 129), (1, 5)])
@pytest.mark.parametrize(("close_r", "open_r"), [(0, 0), (1, 0), (2, 1), (1.5, 2.5), (3, 1), (0, 4)])
def test_closing_opening_match_reference(shape, close_r, open_r):
    # a seed fixed by the parameters: hash() of a tuple is not specified across Python builds, crc32 is
    rng = np.random.default_rng(zlib.crc32(repr((shape, close_r, open_r)).encode()))
    m = rng.random(shape) > 0.55
    ref = m.copy()
    dc, do = _ref_disk(close_r), _ref_disk(open_r)
    if dc:  # outside adds nothing to a dilation and removes nothing in an erosion
        ref = ~_ref_dilate(~_ref_dilate(ref, dc), dc)
    if do:
        ref = _ref_dilate(~_ref_dilate(~ref, do), do)
    got = morphology._close_open(m, close_r, open_r)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("radius_um", "offsets"), [(8.0, 5), (16.0, 13), (24.0, 29)])
def test_disk_is_the_same_on_a_scanner_pixel_one_percent_larger(radius_um, offsets):
    """A radius in µm gives the same disk on an 8.09 µm/px level (the 32x level of a 0.2527 µm/px scanner) as on
    an 8 µm/px one: 8 µm is 0.99 px there, and without slack the disk lost its ring (1 px instead of the 3 x 3
    cross, 16 µm a 3 x 3 square instead of the 13-px disk). Hand-counted pixels; 10 % short is not rounded up."""
    round_disk = morphology._disk(radius_um / 8.0)
    assert int(round_disk.sum()) == offsets
    np.testing.assert_array_equal(morphology._disk(radius_um / 8.0864), round_disk)
    smaller = morphology._disk(0.9 * radius_um / 8.0)
    assert smaller is None if radius_um == 8.0 else int(smaller.sum()) < offsets


def test_small_objects_removed_and_enclosed_holes_filled():
    img = np.full((400, 400, 3), 240, np.uint8)
    img[40:360, 40:200] = TISSUE_RGB  # big block ...
    img[100:140, 100:140] = 240  # ... with a 40 x 40 µm hole (25 mask px)
    img[300:320, 300:320] = TISSUE_RGB  # a 20 x 20 µm speck (6.25 mask px)
    img[0:40, 250:400] = 240  # glass touching the border stays glass
    slide = ArraySlide([img], mpp=1.0)
    plain = tissue_mask(slide, 8.0, "otsu", opening_um=0, closing_um=0)
    assert plain[15, 15] == 0 and plain[38, 38] == 255  # hole and speck present
    cleaned = tissue_mask(slide, 8.0, "otsu", opening_um=0, closing_um=0, min_object_um2=1000, min_hole_um2=2000)
    assert cleaned[12:18, 12:18].all()  # hole (pixels 12.5 .. 17.5) filled
    assert not cleaned[36:41, 36:41].any()  # speck (pixels 37.5 .. 40) removed
    changed = np.argwhere(cleaned != plain)
    inside_hole = (changed >= 12).all(1) & (changed < 18).all(1)
    inside_speck = (changed >= 37).all(1) & (changed < 40).all(1)
    assert (inside_hole | inside_speck).all()  # nothing else changed
    assert not cleaned[:5, 32:].any()  # glass touching the border is not a hole


@pytest.mark.parametrize("ltype", [np.uint16, np.int32])
@pytest.mark.parametrize("table_dtype", [bool, np.uint16, np.float32])
def test_lookup_in_chunks_equals_fancy_indexing(ltype, table_dtype):
    """``_lookup(table, labels)`` is ``table[labels]`` on a label image of several chunks and a ragged last one."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5000, (701, 613)).astype(ltype)  # 429,713 px: 3 chunks of 2^17 and a part
    table = rng.integers(0, 2, 5000).astype(table_dtype) if table_dtype is bool else rng.random(5000).astype(table_dtype)
    got = morphology._lookup(table, labels)
    assert got.dtype == table.dtype and got.shape == labels.shape
    np.testing.assert_array_equal(got, table[labels.astype(np.intp)])
