"""Regular grids of tile positions over a slide level."""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["grid_tiles", "grid_shape"]


def _pair(v, name: str) -> tuple[int, int]:
    a, b = (v, v) if np.ndim(v) == 0 else v
    if int(a) != a or int(b) != b:
        raise ValueError(f"{name} must be integers, got {v}")
    if a <= 0 or b <= 0:
        raise ValueError(f"{name} must be positive, got {v}")
    return int(a), int(b)


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


def grid_shape(slide_extent, tile_extent, stride, last: str = "keep") -> tuple[int, int]:
    """(n_x, n_y): number of tile columns and rows :func:`grid_tiles` yields."""
    ex, ey = _pair(slide_extent, "slide_extent")
    tx, ty = _pair(tile_extent, "tile_extent")
    sx, sy = _pair(stride, "stride")
    return len(_axis_starts(ex, tx, sx, last)), len(_axis_starts(ey, ty, sy, last))


def grid_tiles(
    slide_extent,
    tile_extent,
    stride,
    last: Literal["keep", "drop", "shift"] = "keep",
) -> np.ndarray:
    """Top-left corners of a regular tile grid.

    Parameters
    ----------
    slide_extent : int or (int, int)
        (width, height) of the slide level in pixels.
    tile_extent : int or (int, int)
        (width, height) of a tile in pixels of the same level.
    stride : int or (int, int)
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
    ndarray of int64, shape (N, 2)
        (x, y) pairs, x varying fastest (row-major over the grid).

    Examples
    --------
    >>> grid_tiles((5, 5), 2, 2, last="drop").tolist()
    [[0, 0], [2, 0], [0, 2], [2, 2]]
    """
    if last not in ("keep", "drop", "shift"):
        raise ValueError(f"last must be 'keep', 'drop' or 'shift', got {last!r}")
    ex, ey = _pair(slide_extent, "slide_extent")
    tx, ty = _pair(tile_extent, "tile_extent")
    sx, sy = _pair(stride, "stride")
    xs = _axis_starts(ex, tx, sx, last)
    ys = _axis_starts(ey, ty, sy, last)
    out = np.empty((len(ys), len(xs), 2), np.int64)
    out[..., 0] = xs[None, :]
    out[..., 1] = ys[:, None]
    return out.reshape(-1, 2)
