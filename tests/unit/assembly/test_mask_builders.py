"""Tests for mask_first.assembly.mask_builders.

Expected values come either from hand-worked examples or from
``brute_force_mask`` below, an independent per-output-pixel loop written
straight from the grid formulas of the specification.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mask_first.assembly import mask_builders as mbm
from mask_first.assembly.mask_builders import (
    Aggregator,
    InMemoryStorage,
    MaskBuilder,
    MaxAggregator,
    MeanAggregator,
    MemmapStorage,
    mask_geometry,
)

# --------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------


def spec_geometry(extents, tile, output, stride):
    """Grid formulas of the specification, per axis, in plain Python."""
    num = [math.ceil(max(0, e - t) / s) + 1 for e, t, s in zip(extents, tile, stride)]
    span = [(n - 1) * s + t for n, s, t in zip(num, stride, tile)]
    g = [math.gcd(t, s * o) for t, s, o in zip(tile, stride, output)]
    return {
        "span": span,
        "mask_extents": [sp * o // gg for sp, o, gg in zip(span, output, g)],
        "mask_stride": [s * o // gg for s, o, gg in zip(stride, output, g)],
        "upscale_factor": [t // gg for t, gg in zip(tile, g)],
        "g": g,
    }


def brute_force_mask(extents, tile, output, stride, n_channels, tiles, aggregation):
    """Accumulate output pixel by output pixel.

    ``tiles`` is a list of ``(coord, values, (clip_start, clip_end))`` with
    ``values`` of shape ``(C,)`` (scalar) or ``(C, *output)`` (dense), clipping
    per axis in output pixels.  Returns ``(mask, count)`` in float64/int64,
    uncovered cells 0 for both aggregators (the default fill, as in the seed).
    """
    geo = spec_geometry(extents, tile, output, stride)
    m, u, g = geo["mask_extents"], geo["upscale_factor"], geo["g"]
    acc = np.zeros((n_channels, *m))
    if aggregation == "max":
        acc[:] = -np.inf
    count = np.zeros(m, dtype=np.int64)
    for coord, values, (clip_start, clip_end) in tiles:
        pos = [c * o // gg for c, o, gg in zip(coord, output, g)]
        assert all(c * o % gg == 0 for c, o, gg in zip(coord, output, g))
        for pixel in itertools.product(*(range(o) for o in output)):
            if any(p < s or p >= o - e for p, s, e, o in zip(pixel, clip_start, clip_end, output)):
                continue
            region = tuple(slice(q + p * f, q + (p + 1) * f) for q, p, f in zip(pos, pixel, u))
            v = values if values.ndim == 1 else values[(slice(None), *pixel)]
            v = v.reshape(-1, *([1] * len(output)))
            if aggregation == "mean":
                acc[(slice(None), *region)] += v
            else:
                acc[(slice(None), *region)] = np.maximum(acc[(slice(None), *region)], v)
            count[region] += 1
    if aggregation == "mean":
        mask = np.where(count > 0, acc / np.maximum(count, 1), 0.0)
    else:
        mask = np.where(count > 0, acc, 0.0)
    return mask, count


# --------------------------------------------------------------------------
# Grid and placement
# --------------------------------------------------------------------------


def test_geometry_source_33x53_tile8_output4_stride4_gives_mask_18x28():
    mb = MaskBuilder((33, 53), 8, 4, 4)
    assert mb.mask_extents.tolist() == [18, 28]
    assert mb.span.tolist() == [36, 56]
    assert mb.mask_stride.tolist() == [2, 2]
    assert mb.upscale_factor.tolist() == [1, 1]
    assert mb.aggregator.mask.shape == (1, 18, 28)


@pytest.mark.parametrize(
    "extents, tile, output, stride",
    [
        ((100, 7), (16, 5), (3, 2), (6, 3)),
        ((1, 1), (4, 4), (4, 4), (2, 2)),  # slide smaller than one tile
        ((513,), (512,), (128,), (256,)),
        ((20, 21, 22), (4, 6, 8), (1, 3, 8), (3, 2, 5)),
    ],
)
def test_geometry_matches_spec_formulas(extents, tile, output, stride):
    geo = mask_geometry(extents, tile, output, stride)
    spec = spec_geometry(extents, tile, output, stride)
    for key in ("span", "mask_extents", "mask_stride", "upscale_factor"):
        assert getattr(geo, key).tolist() == spec[key], key


@pytest.mark.parametrize("output", [1, 2])
def test_scalar_mean_tiles_1_and_3_give_hand_worked_rows_and_counter(output):
    # Source 8x8, tile 4, stride 2: a mask cell is 2 source px for output 1
    # (g = gcd(4, 2) = 2, upscale 2) and for output 2 (g = 4, upscale 1), so
    # each tile covers 2x2 cells; (2, 2) is cell (1, 1).
    mb = MaskBuilder((8, 8), 4, output, 2)
    assert mb.mask_extents.tolist() == [4, 4] and mb.mask_stride.tolist() == [1, 1]
    mb.update_batch(np.array([[1.0], [3.0]]), np.array([[0, 0], [2, 2]]))
    out = mb.finalize()
    np.testing.assert_array_equal(out["mask"][0, :3], [[1, 1, 0, 0], [1, 2, 3, 0], [0, 3, 3, 0]])
    np.testing.assert_array_equal(
        out["overlap_counter"][0, :3], [[1, 1, 0, 0], [1, 2, 1, 0], [0, 1, 1, 0]]
    )


def test_tile_at_source_4_12_lands_in_mask_cell_1_3():
    mb = MaskBuilder((8, 16), 4, 1, 4)  # cell = 4 source px, tile = 1 cell
    mb.update_batch(np.array([[7.0]]), np.array([[4, 12]]))
    mask = mb.finalize()["mask"][0]
    expected = np.zeros((2, 4))
    expected[1, 3] = 7
    np.testing.assert_array_equal(mask, expected)


def test_dense_tiles_with_upscale_factor_fill_whole_output_pixels():
    # tile 6, output 3, stride 3: g = gcd(6, 9) = 3, a cell is 1 source px and
    # an output pixel (2 source px) covers 2 x 2 cells.
    mb = MaskBuilder((9, 9), 6, 3, 3)
    assert mb.upscale_factor.tolist() == [2, 2]
    tile = np.arange(9.0).reshape(1, 1, 3, 3)
    mb.update_batch(tile, np.array([[3, 0]]))
    mask = mb.finalize()["mask"][0]
    np.testing.assert_array_equal(mask[3:9, 0:6], np.kron(tile[0, 0], np.ones((2, 2))))
    assert np.all(mask[:3] == 0) and np.all(mask[:, 6:] == 0)


# --------------------------------------------------------------------------
# Edge clipping
# --------------------------------------------------------------------------


@pytest.mark.parametrize("clipping", [1, (1, 1), ((1, 1), (1, 1))])
def test_edge_clipping_forms_clip_all_edges_and_leave_cell_0_0_untouched(clipping):
    mb = MaskBuilder((8, 8), 4, 4, 2)  # cell 1 px
    mb.update_batch(np.full((1, 1, 4, 4), 5.0), np.array([[0, 0]]), edge_clipping=clipping)
    out = mb.finalize()
    count = out["overlap_counter"][0]
    assert count[0, 0] == 0 and out["mask"][0, 0, 0] == 0
    expected = np.zeros((8, 8), dtype=int)
    expected[1:3, 1:3] = 1
    np.testing.assert_array_equal(count, expected)


def test_edge_clipping_pairs_clip_start_and_end_independently():
    mb = MaskBuilder((8, 8), 4, 4, 2)
    mb.update_batch(np.ones((1, 1, 4, 4)), np.array([[2, 2]]), edge_clipping=((0, 1), (2, 0)))
    count = mb.finalize()["overlap_counter"][0]
    expected = np.zeros((8, 8), dtype=int)
    expected[2:5, 4:6] = 1  # rows 2..2+4-1, columns 2+2..2+4
    np.testing.assert_array_equal(count, expected)


def test_edge_clipping_applies_to_scalar_outputs_in_mask_cells():
    # Reference defect: clipping dropped (or ignored) scalar tiles.
    mb = MaskBuilder((16, 16), 8, 4, 4)  # cell 2 px, tile = 4x4 cells
    mb.update_batch(np.array([[2.0], [4.0]]), np.array([[0, 0], [4, 4]]), edge_clipping=1)
    out = mb.finalize()
    expected_count = np.zeros((8, 8), dtype=int)
    expected_count[1:3, 1:3] += 1
    expected_count[3:5, 3:5] += 1
    np.testing.assert_array_equal(out["overlap_counter"][0], expected_count)
    assert out["mask"][0, 1, 1] == 2 and out["mask"][0, 4, 4] == 4 and out["mask"][0, 0, 0] == 0


def test_edge_clipping_that_removes_whole_tile_raises():
    mb = MaskBuilder((8, 8), 4, 4, 2)
    with pytest.raises(ValueError, match="removes the whole tile"):
        mb.update_batch(np.ones((1, 1, 4, 4)), np.array([[0, 0]]), edge_clipping=2)


# --------------------------------------------------------------------------
# Improvements over the reference implementation
# --------------------------------------------------------------------------


def test_max_keeps_negative_predictions_and_fills_uncovered_cells_with_0():
    mb = MaskBuilder((8, 8), 4, 1, 2, aggregation=MaxAggregator)
    mb.update_batch(np.array([[-3.0], [-1.0]]), np.array([[0, 0], [2, 2]]))
    mask = mb.finalize()[0]
    assert mask[0, 0] == -3 and mask[1, 1] == -1 and mask[2, 2] == -1
    assert mask[3, 3] == 0 and mask[0, 3] == 0  # uncovered: 0, not the -inf identity


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_default_fill_is_0_for_both_aggregators_so_seed_sums_stay_finite(aggregation, tmp_path):
    # the seed's usage: mask.sum(), np.load(persisted).sum(), resize_to_source(mask)
    path = tmp_path / "pred.npy"
    mb = MaskBuilder((10, 10), 4, 2, 4, aggregation=aggregation, storage="memmap", filename=path)
    mb.update_batch(np.array([[1.0], [3.0]]), np.array([[0, 0], [4, 4]]))
    out = mb.finalize()
    mask = out["mask"] if aggregation == "mean" else out
    # hand-worked: tile 4 px = 2 cells of 2 px; two tiles of 2x2 cells, 1 and 3
    assert float(mask.sum()) == 4 * 1.0 + 4 * 3.0
    assert float(np.load(path).sum()) == 16.0
    assert float(mb.resize_to_source(mask).sum()) == 16 * 1.0 + 16 * 3.0
    assert mask[0, 0, 5] == 0 and mask[0, 5, 0] == 0


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_nan_fill_on_request_marks_uncovered_cells_only(aggregation):
    mb = MaskBuilder((8, 8), 4, 1, 4, aggregation=aggregation, fill_value=np.nan)
    mb.update_batch(np.array([[0.0], [np.nan]]), np.array([[0, 0], [4, 4]]))
    out = mb.finalize()
    mask = (out["mask"] if aggregation == "mean" else out)[0]
    assert mask[0, 0] == 0.0  # a genuine 0 prediction is kept
    assert np.isnan(mask[0, 1]) and np.isnan(mask[1, 0]) and np.isnan(mask[1, 1])


@pytest.mark.parametrize("storage", ["inmemory", "memmap"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float16, np.float32])
@pytest.mark.parametrize("dense", [False, True])
def test_non_zero_mean_fill_is_honoured_for_every_dtype_path(dtype, storage, dense):
    # uint8/int16/float16 finalise through a separate accumulator, float32 in place
    mb = MaskBuilder((8, 8), 4, 4 if dense else 1, 4, dtype=dtype, storage=storage, fill_value=7)
    values = np.full((1, 1, 4, 4) if dense else (1, 1), 2, dtype=dtype)
    mb.update_batch(values, np.array([[0, 4]]))
    mask = mb.finalize()["mask"][0]
    cells = mask if not dense else mask[::4, ::4]
    assert mask.dtype == dtype
    np.testing.assert_array_equal(cells, [[7, 2], [7, 7]])


def test_max_integer_mask_keeps_dtype_minimum_prediction_and_fills_uncovered_with_0():
    mb = MaskBuilder((8, 8), 4, 4, 4, aggregation=MaxAggregator, dtype=np.int8)
    mb.update_batch(np.full((1, 1, 4, 4), -128, dtype=np.int8), np.array([[0, 0]]))
    mask = mb.finalize()[0]
    assert mask.dtype == np.int8
    assert np.all(mask[:4, :4] == -128) and np.all(mask[4:] == 0) and np.all(mask[:, 4:] == 0)


def test_max_fill_value_is_configurable():
    mb = MaskBuilder((8, 8), 4, 1, 4, aggregation=MaxAggregator(fill_value=-1))
    mb.update_batch(np.array([[0.5]]), np.array([[0, 0]]))
    np.testing.assert_array_equal(mb.finalize()[0], [[0.5, -1], [-1, -1]])


def test_mean_with_integer_dtype_returns_that_dtype_rounded_half_to_even():
    mb = MaskBuilder((8, 8), 4, 1, 4, dtype=np.uint8)  # 2x2 cells, no overlap
    for value, coord in [(1, (0, 0)), (2, (0, 0)), (2, (0, 4)), (3, (0, 4)), (255, (4, 0))]:
        mb.update_batch(np.array([[value]], dtype=np.uint8), np.array([coord]))
    mask = mb.finalize()["mask"][0]
    assert mask.dtype == np.uint8
    # means 1.5 -> 2, 2.5 -> 2 (half to even), 255 stays in range, uncovered 0
    np.testing.assert_array_equal(mask, [[2, 2], [255, 0]])


def test_overlap_counter_does_not_wrap_past_65535_overlaps():
    n = 65_536 + 3
    mb = MaskBuilder((4, 4), 4, 1, 4)
    mb.update_batch(np.ones((n, 1)), np.zeros((n, 2), dtype=int))
    out = mb.finalize()
    assert int(out["overlap_counter"][0, 0, 0]) == n
    assert out["mask"][0, 0, 0] == 1.0


def test_explicit_counter_dtype_too_small_raises_before_modifying_the_mask():
    mb = MaskBuilder((4, 4), 4, 1, 4, aggregation=MeanAggregator(counter_dtype=np.uint8))
    mb.update_batch(np.full((300, 1, 1, 1), 2.0), np.zeros((300, 2), dtype=int))
    with pytest.raises(OverflowError, match="300"):
        mb.finalize()
    assert mb.aggregator.mask[0, 0, 0] == 600  # sums not divided yet


@pytest.mark.parametrize("coord", [(-2, 0), (0, 6), (8, 0)])
def test_coordinates_outside_the_mask_raise_naming_the_coordinate(coord):
    mb = MaskBuilder((8, 8), 4, 1, 2)  # valid top-left: 0..4
    coords = np.array([[0, 0], coord])
    with pytest.raises(ValueError, match=rf"tile 1 .*\({coord[0]}, {coord[1]}\)"):
        mb.update_batch(np.ones((2, 1)), coords)


def test_one_channel_batch_into_three_channel_mask_raises():
    mb = MaskBuilder((8, 8), 4, 4, 4, n_channels=3)
    with pytest.raises(ValueError, match="1 channel"):
        mb.update_batch(np.ones((1, 1, 4, 4)), np.array([[0, 0]]))
    with pytest.raises(ValueError, match="1 channel"):
        mb.update_batch(np.ones((1, 1)), np.array([[0, 0]]))


def test_coordinate_off_the_stride_grid_is_placed_exactly():
    # Slide 10 px, tile 4, stride 4: the last tile shifted to the slide edge
    # starts at 6, which is not a multiple of the stride; a cell is 1 px.
    mb = MaskBuilder((10, 10), 4, 4, 4)
    tiles = [((0, 0), np.full((1, 4, 4), 1.0)), ((6, 6), np.arange(16.0).reshape(1, 4, 4))]
    for coord, values in tiles:
        mb.update_batch(values[None], np.array([coord]))
    expected, count = brute_force_mask(
        (10, 10), (4, 4), (4, 4), (4, 4), 1, [(c, v, ((0, 0), (0, 0))) for c, v in tiles], "mean"
    )
    out = mb.finalize()
    np.testing.assert_array_equal(out["mask"], expected)
    np.testing.assert_array_equal(out["overlap_counter"][0], count)
    assert out["mask"][0, 6, 6] == 0 and out["mask"][0, 9, 9] == 15


def test_coordinate_between_mask_cells_raises():
    mb = MaskBuilder((16, 16), 8, 4, 4)  # cell = 2 source px
    with pytest.raises(ValueError, match=r"tile 0 .*\(3, 0\).*cell boundary"):
        mb.update_batch(np.ones((1, 1)), np.array([[3, 0]]))


def test_existing_counter_file_raises_before_the_mask_file_is_created(tmp_path):
    target = tmp_path / "pred.npy"
    counter_file = tmp_path / "pred.overlap_counter.npy"
    counter_file.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overlap_counter"):
        MaskBuilder((8, 8), 4, 4, 4, storage="memmap", filename=target)
    assert not target.exists()
    assert counter_file.read_bytes() == b"keep me"


def test_existing_mask_file_is_not_overwritten(tmp_path):
    target = tmp_path / "pred.npy"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        MaskBuilder((8, 8), 4, 4, 4, storage="memmap", filename=target)
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_persisted_memmap_files_load_with_np_load(tmp_path, dtype):
    target = tmp_path / "pred.npy"
    mb = MaskBuilder((8, 8), 4, 4, 2, n_channels=2, storage="memmap", filename=target, dtype=dtype)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 50, size=(3, 2, 4, 4)).astype(dtype)
    mb.update_batch(tiles, np.array([[0, 0], [2, 2], [4, 0]]))
    out = mb.finalize()
    mb.cleanup()
    mask = np.load(target, mmap_mode="r")
    counter = np.load(tmp_path / "pred.overlap_counter.npy", mmap_mode="r")
    assert mask.dtype == dtype and mask.shape == (2, 8, 8)
    np.testing.assert_array_equal(mask, out["mask"])
    np.testing.assert_array_equal(counter, out["overlap_counter"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.npy", "pred.overlap_counter.npy"]


def test_temporary_memmap_leaves_no_files_and_matches_in_memory(tmp_path):
    rng = np.random.default_rng(1)
    tiles = rng.random((6, 2, 8, 8)).astype(np.float32)
    coords = np.array([[0, 0], [4, 4], [8, 0], [0, 8], [8, 8], [4, 4]])
    results = []
    memmap_kwargs = {"directory": tmp_path, "max_resident_bytes": 1}
    for storage, kwargs in [("inmemory", {}), ("memmap", memmap_kwargs)]:
        for aggregation in (MeanAggregator, MaxAggregator):
            mb = MaskBuilder(
                (16, 16), 8, 8, 4, n_channels=2, storage=storage, aggregation=aggregation, **kwargs
            )
            mb.update_batch(tiles, coords, edge_clipping=1)
            out = mb.finalize()
            results.append(np.array(out["mask"] if isinstance(out, dict) else out))
            mb.cleanup()
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[3])
    assert list(tmp_path.iterdir()) == []


def test_mean_finalize_peak_memory_stays_within_10_percent_of_storage():
    # Reference defect: ``acc /= counter.clip(min=1)`` copies the counter
    # (and a float division temporary would copy the mask).
    tracemalloc.start()
    try:
        mb = MaskBuilder((2048, 2048), 64, 64, 32)
        tiles = np.ones((63, 1, 64, 64), dtype=np.float32)
        xs = np.arange(63) * 32
        for y in range(0, 63 * 32, 32):
            mb.update_batch(tiles, np.stack([np.full(63, y), xs], axis=1))
        del tiles
        tracemalloc.reset_peak()
        out = mb.finalize()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    storage = out["mask"].nbytes + out["overlap_counter"].nbytes
    assert out["mask"].nbytes == 2048 * 2048 * 4
    assert peak <= 1.10 * storage, (peak / 2**20, storage / 2**20)
    assert np.all(out["mask"] == 1.0)
    assert out["overlap_counter"].max() == 4


@pytest.mark.parametrize("aggregation", ["mean", "max"])
@pytest.mark.parametrize(
    "extents, tile, output, stride, clip",
    [
        ((24, 96), (8, 8), (8, 8), (4, 4), ((0, 0), (0, 0))),  # half overlap
        ((24, 96), (8, 8), (8, 8), (2, 2), ((1, 0), (0, 0))),  # quarter overlap
        ((24, 96), (8, 8), (8, 8), (8, 8), ((0, 0), (0, 0))),  # adjacent
        ((24, 96), (8, 8), (8, 8), (4, 4), ((1, 1), (2, 2))),  # clipped: width 4, step 4
        ((200,), (16,), (32,), (8,), ((0, 0),)),  # 1-D, upscale 1, 2 cells per px
        ((9, 12, 40), (4, 4, 8), (2, 2, 8), (2, 2, 4), ((0, 0), (0, 0), (0, 0))),  # 3-D
    ],
)
def test_large_dense_tiles_in_runs_shuffled_and_with_gaps_match_brute_force(
    extents, tile, output, stride, clip, aggregation
):
    geo = spec_geometry(extents, tile, output, stride)
    axes = [range(0, sp - t + 1, s) for sp, t, s in zip(geo["span"], tile, stride)]
    coords = np.array(list(itertools.product(*axes)))
    rng = np.random.default_rng(7)
    coords = coords[rng.random(len(coords)) < 0.9]  # gaps split the runs
    values = rng.integers(-8, 9, size=(len(coords), 2, *output)).astype(np.float32)
    with mock.patch.object(mbm, "_SCATTER_MAX_CELLS", 0):
        mb = MaskBuilder(extents, tile, output, stride, n_channels=2, aggregation=aggregation)
        for part in np.array_split(np.arange(len(coords)), 3):
            part = rng.permutation(part)  # raster chunks, shuffled within the batch
            mb.update_batch(values[part], coords[part], edge_clipping=[list(c) for c in clip])
        out = mb.finalize()
    clip_start, clip_end = [c[0] for c in clip], [c[1] for c in clip]
    expected, count = brute_force_mask(
        extents, tile, output, stride, 2,
        [(c, v, (clip_start, clip_end)) for c, v in zip(coords.tolist(), values.astype(float))],
        aggregation,
    )
    mask = out["mask"] if aggregation == "mean" else out
    np.testing.assert_allclose(mask, expected, rtol=1e-6)


# --------------------------------------------------------------------------
# resize_to_source
# --------------------------------------------------------------------------


def test_resize_to_source_nearest_repeats_cells_and_crops_to_source():
    mb = MaskBuilder((7, 5), 4, 2, 2)  # cell 2 px, span 8 x 6
    mask = np.arange(12.0).reshape(1, 4, 3)
    out = mb.resize_to_source(mask)
    assert out.shape == (1, 7, 5)
    ys, xs = np.mgrid[0:7, 0:5]
    np.testing.assert_array_equal(out[0], mask[0][ys // 2, xs // 2])
    np.testing.assert_array_equal(mb.resize_to_source(mask[0]), out[0])  # 2-D input


def test_resize_to_source_nearest_with_sub_pixel_cells_picks_cell_under_pixel_centre():
    mb = MaskBuilder((4,), 4, 8, 4)  # cell = 0.5 px, 8 cells
    out = mb.resize_to_source(np.arange(8.0)[None])
    np.testing.assert_array_equal(out, [[1, 3, 5, 7]])


def test_resize_to_source_linear_matches_interp_and_stays_in_value_range():
    mb = MaskBuilder((8, 12), 4, 1, 4)  # cell 4 px, mask 2 x 3
    mask = np.array([[[0.0, 10.0, -5.0], [1.0, 1.0, 1.0]]])
    out = mb.resize_to_source(mask, kernel="linear")
    assert out.shape == (1, 8, 12)
    assert out.min() >= -5.0 and out.max() <= 10.0
    centres = (np.arange(12) + 0.5) / 4 - 0.5
    row0 = np.interp(centres, [0, 1, 2], mask[0, 0])
    row1 = np.interp(centres, [0, 1, 2], mask[0, 1])
    np.testing.assert_allclose(out[0, 0], row0)  # pixel row 0 is above cell centre 0
    np.testing.assert_allclose(out[0, 7], row1)
    y_weight = ((np.arange(8) + 0.5) / 4 - 0.5).clip(0, 1)
    np.testing.assert_allclose(out[0], row0 + y_weight[:, None] * (row1 - row0), atol=1e-12)


@pytest.mark.parametrize("kernel", ["lanczos3", "cubic"])
def test_resize_to_source_rejects_overshooting_kernels(kernel):
    mb = MaskBuilder((8, 8), 4, 1, 4)
    with pytest.raises(ValueError, match="overshoot"):
        mb.resize_to_source(np.zeros((2, 2)), kernel=kernel)


# --------------------------------------------------------------------------
# Interface details
# --------------------------------------------------------------------------


def test_update_after_finalize_raises_and_finalize_returns_same_result():
    mb = MaskBuilder((8, 8), 4, 1, 4)
    mb.update_batch(np.ones((1, 1)), np.array([[0, 0]]))
    first = mb.finalize()
    assert mb.finalize() is first
    with pytest.raises(RuntimeError):
        mb.update_batch(np.ones((1, 1)), np.array([[0, 0]]))


def test_coords_in_n_by_b_layout_raise_with_transpose_hint():
    mb = MaskBuilder((8, 8), 4, 1, 2)
    with pytest.raises(ValueError, match="transpose"):
        mb.update_batch(np.ones((3, 1)), np.array([[0, 2, 4], [0, 0, 0]]))


def test_dense_batch_with_wrong_spatial_shape_raises():
    mb = MaskBuilder((8, 8), 4, 4, 4)
    with pytest.raises(ValueError, match="output_tile_extent"):
        mb.update_batch(np.ones((1, 1, 2, 2)), np.array([[0, 0]]))


def test_user_aggregator_and_storage_classes_are_used():
    class MinAggregator(Aggregator):
        ufunc = np.minimum

        def identity(self, dtype):
            return np.inf

        def setup(self, storage, shape, dtype):
            self.mask = storage.allocate("mask", shape, dtype, fill_value=np.inf)
            return self.mask

        def finalize_chunk(self, index, values, count):
            np.copyto(values, -1.0, where=count == 0)

        def result(self):
            return self.mask

    class CountingStorage(InMemoryStorage):
        allocated: list[str] = []

        def allocate(self, name, shape, dtype, **kwargs):
            CountingStorage.allocated.append(name)
            return super().allocate(name, shape, dtype, **kwargs)

    mb = MaskBuilder((8, 8), 4, 1, 2, storage=CountingStorage, aggregation=MinAggregator)
    mb.update_batch(np.array([[5.0], [2.0]]), np.array([[0, 0], [2, 2]]))
    mask = mb.finalize()
    assert CountingStorage.allocated == ["mask"]
    np.testing.assert_array_equal(mask[0, :2, :3], [[5, 5, -1], [5, 2, 2]])


def test_memmap_storage_instance_releases_pages_without_losing_data(tmp_path):
    storage = MemmapStorage(directory=tmp_path, max_resident_bytes=1)
    mb = MaskBuilder((64, 64), 32, 32, 16, storage=storage)
    tiles = np.ones((9, 1, 32, 32), dtype=np.float32)
    coords = np.array(list(itertools.product(range(0, 48, 16), repeat=2)))
    mb.update_batch(tiles, coords)
    out = mb.finalize()
    assert np.all(out["mask"] == 1.0)
    assert out["overlap_counter"][0, 20, 20] == 4


# --------------------------------------------------------------------------
# Property test against the brute-force reference
# --------------------------------------------------------------------------


@st.composite
def builder_cases(draw):
    ndim = draw(st.integers(1, 3))
    small = ndim == 3
    tile = [draw(st.integers(1, 4 if small else 8)) for _ in range(ndim)]
    output = [draw(st.integers(1, 3 if small else 5)) for _ in range(ndim)]
    stride = [draw(st.integers(1, 4 if small else 8)) for _ in range(ndim)]
    extents = [draw(st.integers(1, 10 if small else 24)) for _ in range(ndim)]
    geo = spec_geometry(extents, tile, output, stride)
    # Any coordinate on a cell boundary inside the span is valid, not only
    # multiples of the stride.
    steps = [g // math.gcd(g, o) for g, o in zip(geo["g"], output)]
    maxima = [sp - t for sp, t in zip(geo["span"], tile)]
    n_channels = draw(st.integers(1, 2))
    aggregation = draw(st.sampled_from(["mean", "max"]))
    # Raster-ordered runs of grid positions exercise the run/phase path.
    grid = list(itertools.product(*(range(0, mx + 1, s) for mx, s in zip(maxima, stride))))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 6))
        if draw(st.booleans()):
            first = draw(st.integers(0, len(grid) - 1))
            coords = [list(c) for c in grid[first : first + n]]
            n = len(coords)
        else:
            coords = [
                [draw(st.integers(0, mx // s)) * s for s, mx in zip(steps, maxima)]
                for _ in range(n)
            ]
        scalar = draw(st.booleans())
        shape = (n, n_channels) if scalar else (n, n_channels, *output)
        seed = draw(st.integers(0, 2**16))
        # Multiples of 1/4 in [-8, 8]: sums are exact in float32.
        values = np.random.default_rng(seed).integers(-32, 33, size=shape) / 4.0
        clips = [
            (s, e)
            for o in output
            for s in [draw(st.integers(0, o - 1))]
            for e in [draw(st.integers(0, o - 1 - s))]
        ]
        batches.append((values, np.array(coords, dtype=np.int64).reshape(n, ndim), clips))
    return extents, tile, output, stride, n_channels, aggregation, batches


@pytest.mark.parametrize("tiny_chunks", [False, True])
@pytest.mark.parametrize("scatter_max_cells", [0, 10**9])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=builder_cases())
def test_builder_matches_brute_force_on_random_grids(case, scatter_max_cells, tiny_chunks):
    extents, tile, output, stride, n_channels, aggregation, batches = case
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(mbm, "_SCATTER_MAX_CELLS", scatter_max_cells))
        if tiny_chunks:  # one row per finalize chunk
            stack.enter_context(mock.patch.object(mbm, "_CHUNK_MAX_BYTES", 1))
        mb = MaskBuilder(extents, tile, output, stride, n_channels, aggregation=aggregation)
        reference_tiles = []
        for values, coords, clips in batches:
            clip_arg = [list(c) for c in clips]
            mb.update_batch(values.astype(np.float32), coords, edge_clipping=clip_arg)
            starts, ends = [c[0] for c in clips], [c[1] for c in clips]
            reference_tiles += [(c, v, (starts, ends)) for c, v in zip(coords.tolist(), values)]
        out = mb.finalize()
    expected, count = brute_force_mask(
        extents, tile, output, stride, n_channels, reference_tiles, aggregation
    )
    if aggregation == "mean":
        np.testing.assert_allclose(out["mask"], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out["overlap_counter"][0], count)
    else:
        np.testing.assert_array_equal(out, expected.astype(np.float32))
