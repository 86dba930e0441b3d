"""Uncovered cells of a mean-aggregated mask take the fill value, on every dtype path.

Integer, bool and float16 masks finish through a separate float accumulator
(the mask is a second array); float32/float64 masks are divided in place.
Each path must set the cells no tile covered, and only those, to
``fill_value``. Hand-worked: a 2 x 2-cell mask, cell (0, 0) covered by two
tiles (values 2 and 3), cell (1, 0) by one (value 5), the others by none.
"""

from __future__ import annotations

import numpy as np
import pytest

from mask_first.assembly.mask_builders import MaskBuilder, MeanAggregator

CASES = [
    # dtype, fill, mean of 2 and 3 as that dtype stores it
    (np.uint8, 7, 2),  # 2.5 rounds half to even
    (np.uint16, 65535, 2),
    (np.int16, -3, 2),
    (np.float16, 0.5, 2.5),
    (np.float16, np.nan, 2.5),
    (np.float32, -1.5, 2.5),
    (np.float64, np.nan, 2.5),
]


def _build(dtype, aggregator, storage="inmemory", **kwargs):
    mb = MaskBuilder((8, 8), 4, 1, 4, storage=storage, aggregation=aggregator, dtype=dtype, **kwargs)
    for value, coord in [(2, (0, 0)), (3, (0, 0)), (5, (4, 0))]:  # coords are (y, x)
        mb.update_batch(np.array([[value]], dtype=dtype), np.array([coord]))
    return mb.finalize()


@pytest.mark.parametrize("form", ["MaskBuilder(fill_value=)", "MeanAggregator(fill_value=)"])
@pytest.mark.parametrize("storage", ["inmemory", "memmap"])
@pytest.mark.parametrize("dtype, fill, mean", CASES)
def test_mean_fill_value_sets_exactly_the_uncovered_cells(tmp_path, dtype, fill, mean, storage, form):
    kwargs = {"directory": tmp_path} if storage == "memmap" else {}
    if form.startswith("MaskBuilder"):
        out = _build(dtype, MeanAggregator, storage, fill_value=fill, **kwargs)
    else:
        out = _build(dtype, MeanAggregator(fill_value=fill), storage, **kwargs)
    mask, count = out["mask"][0], out["overlap_counter"][0]
    assert mask.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(count, [[2, 0], [1, 0]])
    expected = np.array([[mean, fill], [5, fill]], np.float64)
    np.testing.assert_array_equal(mask.astype(np.float64), expected)  # NaN == NaN here


def test_bool_mask_fill_value_true():
    mb = MaskBuilder((8, 8), 4, 1, 4, dtype=bool, fill_value=True)
    mb.update_batch(np.array([[False], [False]]), np.array([[0, 0], [4, 0]]))
    out = mb.finalize()
    np.testing.assert_array_equal(out["mask"][0], [[False, True], [False, True]])


def test_default_fill_is_zero_on_every_path():
    for dtype, _, mean in CASES:
        mask = _build(dtype, MeanAggregator())["mask"][0]
        np.testing.assert_array_equal(mask.astype(np.float64), [[mean, 0], [5, 0]])
