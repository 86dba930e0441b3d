"""Regular grids of tile positions over a slide level."""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["grid_tiles", "grid_shape"]


def _axes(v, name: str, ndim: int) -> tuple[int, ...]:
    """Per-axis positive integers from a scalar or a sequence of ``ndim`` values."""
    vals = [v] * ndim if np.ndim(v) == 0 else list(np.asarray(v).ravel())
    if len(vals) != ndim:
        raise ValueError(f"{name} has {len(vals)} axes, expected {ndim}: {v}")
    if any(int(a) != a for a in vals):
        raise ValueError(f"{name} must be integers, got {v}")
    if any(a <= 0 for a in vals):
        raise ValueError(f"{name} must be positive, got {v}")
    return tuple(int(a) for a in vals)


def _ndim(*values) -> int:
    """Number of axes: the length of the sequence-valued arguments (2 when all are scalars)."""
    lengths = {int(np.size(v)) for v in values if np.ndim(v) > 0}
    if len(lengths) > 1:
        raise ValueError(f"slide_extent, tile_extent and stride have different numbers of axes: {values}")
    return lengths.pop() if lengths else 2


def _axis_starts(extent: int, tile: int, stride: int, last: str) -> np.ndarray:
    """Tile start positions along one axis."""
    if tile > extent:
        # "shift" cannot move a tile left of the slide (no negative coordinates),
        # so it keeps one padded tile at 0 like "keep"; "drop" drops it
        return np.zeros(0 if last == "drop" else 1, np.int64)
    n_full = (extent - tile) // stride + 1  # tiles lying fully inside
    starts = np.arange(n_full, dtype=np.int64) * stride
    covered = starts[-1] + tile
    if covered < extent:  # a remainder is left uncovered
        if last == "keep":
            starts = np.append(starts, starts[-1] + stride)
        elif last == "shift":
            starts = np.append(starts, extent - tile)
    return starts


def grid_shape(slide_extent, tile_extent, stride, last: str = "keep") -> tuple[int, ...]:
    """Number of tiles along each axis (x first) that :func:`grid_tiles` yields."""
    nd = _ndim(slide_extent, tile_extent, stride)
    e, t, st = (_axes(v, n, nd) for v, n in ((slide_extent, "slide_extent"), (tile_extent, "tile_extent"), (stride, "stride")))
    return tuple(len(_axis_starts(a, b, c, last)) for a, b, c in zip(e, t, st))


def grid_tiles(
    slide_extent,
    tile_extent,
    stride,
    last: Literal["keep", "drop", "shift"] = "keep",
) -> np.ndarray:
    """Top-left corners of a regular tile grid.

    Parameters
    ----------
    slide_extent : int or sequence of int
        (width, height) of the slide level in pixels; any number of axes
        (x, y, z, ...) like the seed's. Numpy integers and integral floats
        (a pandas row's ``2220.0``) are accepted.
    tile_extent : int or sequence of int
        (width, height) of a tile in pixels of the same level.
    stride : int or sequence of int
        (x, y) step between tiles in pixels of the same level.
    last : {"keep", "drop", "shift"}
        What to do where the last tile of a row/column would not fit:
        ``"keep"`` keeps it sticking out past the edge (read as white),
        ``"drop"`` omits it, ``"shift"`` moves it back to end at the edge.
        When the tile is larger than the slide along an axis, ``"keep"`` and
        ``"shift"`` give one tile at 0 along that axis (padded with white when
        read) and ``"drop"`` gives none; coordinates are never negative.

    Returns
    -------
    ndarray of int64, shape (N, D)
        (x, y, ...) corners, x varying fastest (row-major over the grid), as the
        seed yields them; ``for x, y in grid_tiles(...)`` iterates the same.

    Examples
    --------
    >>> grid_tiles((5, 5), 2, 2, last="drop").tolist()
    [[0, 0], [2, 0], [0, 2], [2, 2]]
    """
    if last not in ("keep", "drop", "shift"):
        raise ValueError(f"last must be 'keep', 'drop' or 'shift', got {last!r}")
    nd = _ndim(slide_extent, tile_extent, stride)
    e, t, st = (_axes(v, n, nd) for v, n in ((slide_extent, "slide_extent"), (tile_extent, "tile_extent"), (stride, "stride")))
    starts = [_axis_starts(a, b, c, last) for a, b, c in zip(e, t, st)]
    # meshgrid in reversed axis order makes the first axis (x) vary fastest
    grids = np.meshgrid(*starts[::-1], indexing="ij")
    out = np.empty((int(np.prod([len(v) for v in starts])), nd), np.int64)
    for k, g in enumerate(grids[::-1]):
        out[:, k] = g.ravel()
    return out
