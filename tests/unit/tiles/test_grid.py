import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask_first.tiles import grid_shape, grid_tiles


def test_seed_example_keep_gives_nine_tiles_x_fastest():
    got = grid_tiles((5, 5), 2, 2, last="keep")
    expected = [(x, y) for y in (0, 2, 4) for x in (0, 2, 4)]
    assert got.tolist() == [list(p) for p in expected]
    assert got.dtype == np.int64


def test_seed_example_drop_gives_four_tiles():
    assert grid_tiles((5, 5), 2, 2, last="drop").tolist() == [[0, 0], [2, 0], [0, 2], [2, 2]]


def test_seed_example_shift_moves_4_to_3():
    got = grid_tiles((5, 5), 2, 2, last="shift")
    assert sorted(set(got[:, 0].tolist())) == [0, 2, 3]
    assert sorted(set(got[:, 1].tolist())) == [0, 2, 3]
    assert len(got) == 9


def test_anisotropic_extents_tiles_and_strides():
    got = grid_tiles((10, 4), (4, 2), (3, 2), last="drop")
    assert got.tolist() == [[0, 0], [3, 0], [6, 0], [0, 2], [3, 2], [6, 2]]


@pytest.mark.parametrize("bad", [dict(last="pad"), dict(tile_extent=0), dict(stride=-1), dict(slide_extent=(0, 5))])
def test_bad_arguments_raise(bad):
    args = dict(slide_extent=(5, 5), tile_extent=2, stride=2, last="keep") | bad
    with pytest.raises(ValueError):
        grid_tiles(**args)


def test_tile_larger_than_slide_never_negative():
    for last in ("keep", "shift"):
        assert grid_tiles((3, 3), 8, 8, last=last).tolist() == [[0, 0]]
    assert grid_tiles((3, 3), 8, 8, last="drop").shape == (0, 2)


@settings(max_examples=300, deadline=None)
@given(
    ex=st.integers(1, 60), ey=st.integers(1, 60), tx=st.integers(1, 20), ty=st.integers(1, 20),
    sx=st.integers(1, 20), sy=st.integers(1, 20), last=st.sampled_from(["keep", "drop", "shift"]),
)
def test_grid_matches_brute_force_enumeration(ex, ey, tx, ty, sx, sy, last):
    def axis(e, t, s):
        if t > e:
            return [] if last == "drop" else [0]
        starts, p = [], 0
        while p + t <= e:
            starts.append(p)
            p += s
        if starts[-1] + t < e:
            if last == "keep":
                starts.append(starts[-1] + s)
            elif last == "shift":
                starts.append(e - t)
        return starts

    expected = [[x, y] for y in axis(ey, ty, sy) for x in axis(ex, tx, sx)]
    got = grid_tiles((ex, ey), (tx, ty), (sx, sy), last=last)
    assert got.tolist() == expected
    assert (got >= 0).all()
    assert grid_shape((ex, ey), (tx, ty), (sx, sy), last) == (len(axis(ex, tx, sx)), len(axis(ey, ty, sy)))
    if last == "keep" and len(got):  # keep covers the whole slide
        assert got[:, 0].max() + tx >= ex and got[:, 1].max() + ty >= ey
    if last in ("drop", "shift") and len(got):  # never past the edge unless the tile is bigger than the slide
        assert got[:, 0].max() + tx <= max(ex, tx) and got[:, 1].max() + ty <= max(ey, ty)


def _seed_grid(slide_extent, tile_extent, stride, last):
    """The seed's grid written from its documented rule: per axis ceil (keep/shift) or floor (drop)
    of (extent - tile) / stride steps, x fastest, shift clamps to extent - tile."""
    import itertools
    import math

    e, t, s = (list(v) for v in (slide_extent, tile_extent, stride))
    steps = [(math.floor if last == "drop" else math.ceil)((a - b) / c) for a, b, c in zip(e, t, s)]
    out = []
    for idx in itertools.product(*(range(m + 1) for m in steps[::-1])):
        pos = [i * c for i, c in zip(idx[::-1], s)]
        if last == "shift":
            pos = [min(p, a - b) for p, a, b in zip(pos, e, t)]
        out.append(pos)
    return out


@pytest.mark.parametrize("last", ["keep", "drop", "shift"])
@pytest.mark.parametrize(
    "extent, tile, stride",
    [((2220, 2967), (257, 257), (257, 257)), ((1000, 700), (256, 128), (200, 100)), ((50, 40, 30), (16, 8, 8), (10, 8, 7))],
)
def test_grid_matches_the_seeds_rule_for_numpy_and_pandas_row_values(extent, tile, stride, last):
    import numpy as np
    import pandas as pd

    ref = _seed_grid(extent, tile, stride, last)
    # a pandas row of a numeric table hands out floats (2220.0), Ray rows numpy ints
    row = pd.Series({f"e{k}": float(v) for k, v in enumerate(extent)})
    got = grid_tiles(slide_extent=tuple(row), tile_extent=tuple(np.int64(v) for v in tile),
                     stride=np.asarray(stride, np.int32), last=last)
    assert got.tolist() == ref
    assert [list(map(int, p)) for p in grid_tiles(extent, tile, stride, last=last)] == ref
