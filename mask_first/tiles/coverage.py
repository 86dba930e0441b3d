"""How much of each tile a mask covers: exact area arithmetic on a small label image.

The mask (a label image at a coarse resolution, e.g. 8 µm/px) is treated as a
piecewise-constant function over the plane: mask pixel (row i, col j) covers the
square [j, j+1) x [i, i+1) in mask-pixel units, i.e. level-0 micrometres
[j*mpp, (j+1)*mpp) x [i*mpp, (i+1)*mpp). A tile region is mapped into that
plane through its physical size, so tile edges may fall anywhere inside mask
pixels; the covered area is then computed exactly, not by sampling.

* Rectangular ROIs use a summed-area table (SAT). The continuous integral of a
  piecewise-constant image is exactly the bilinear interpolation of its SAT
  between grid points, so a rectangle with fractional corners costs four
  bilinear look-ups: O(1) per tile, whatever its size.
* Polygon ROIs (any shapely geometry) use the exact area of the ROI inside each
  mask pixel, computed once per distinct sub-pixel offset of the tiles and
  applied to all tiles sharing it.

Area outside the mask image counts as label 0 (background).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mask_first.tissue.overlay import read_mask_overlay

__all__ = ["overlap_fractions", "tile_overlay_overlap", "summed_area_table", "retain"]

#: tiles processed per chunk, to keep temporaries around tens of MB
_CHUNK = 1 << 18


def summed_area_table(indicator: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column.

    Parameters
    ----------
    indicator : ndarray, shape (H, W)
        Per-pixel weights (e.g. ``mask == value``), (y, x) order.

    Returns
    -------
    ndarray of float64, shape (H + 1, W + 1)
        ``S[i, j] = indicator[:i, :j].sum()``. float64 holds every integer sum
        exactly up to 2**53 pixels.
    """
    h, w = indicator.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    np.cumsum(indicator, axis=0, dtype=np.float64, out=sat[1:, 1:])
    np.cumsum(sat[1:, 1:], axis=1, out=sat[1:, 1:])
    return sat


def _bilinear_sat(flat: np.ndarray, width1: int, x: np.ndarray, y: np.ndarray, w: int, h: int) -> np.ndarray:
    """Continuous integral F(x, y) of the image over [0, x) x [0, y) from its flattened SAT.

    ``x``, ``y`` are already clipped to [0, w] and [0, h] (mask pixels).
    """
    i = np.minimum(x.astype(np.int64), w - 1)
    j = np.minimum(y.astype(np.int64), h - 1)
    fx = x - i
    fy = y - j
    k = j * width1 + i
    s00 = flat[k]
    s01 = flat[k + 1]
    s10 = flat[k + width1]
    s11 = flat[k + width1 + 1]
    top = s00 + fx * (s01 - s00)
    bottom = s10 + fx * (s11 - s10)
    return top + fy * (bottom - top)


def _rect_integrals(sat: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    """Exact integral of the image over each rectangle [x0, x1) x [y0, y1) (mask pixels)."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    flat = sat.ravel()
    x0 = np.clip(x0, 0, w)
    x1 = np.clip(x1, 0, w)
    y0 = np.clip(y0, 0, h)
    y1 = np.clip(y1, 0, h)
    w1 = w + 1
    return (
        _bilinear_sat(flat, w1, x1, y1, w, h)
        - _bilinear_sat(flat, w1, x0, y1, w, h)
        - _bilinear_sat(flat, w1, x1, y0, w, h)
        + _bilinear_sat(flat, w1, x0, y0, w, h)
    )


def _as_pair(v) -> tuple[float, float]:
    if np.ndim(v) == 0:
        return float(v), float(v)
    a, b = v
    return float(a), float(b)


def _roi_box(roi) -> tuple[float, float, float, float] | None:
    """(x, y, width, height) when ``roi`` is an axis-aligned rectangle, else None."""
    if isinstance(roi, Sequence) and len(roi) == 4:
        x, y, w, h = (float(v) for v in roi)
        if w <= 0 or h <= 0:
            raise ValueError(f"ROI width and height must be positive, got {roi}")
        return x, y, w, h
    import shapely

    if not isinstance(roi, shapely.Geometry):
        raise TypeError("roi must be (x, y, width, height) or a shapely geometry")
    if roi.is_empty or roi.area <= 0:
        raise ValueError("ROI geometry has no area")
    if roi.equals(roi.envelope):
        minx, miny, maxx, maxy = roi.bounds
        return minx, miny, maxx - minx, maxy - miny
    return None


def _bbox_area(geom) -> float:
    minx, miny, maxx, maxy = geom.bounds
    return (maxx - minx) * (maxy - miny)


def overlap_fractions(
    mask: np.ndarray,
    mask_mpp,
    roi,
    tile_x: np.ndarray,
    tile_y: np.ndarray,
    mpp_x: float,
    mpp_y: float,
) -> dict[str, np.ndarray]:
    """Fraction of each tile's ROI covered by each mask label.

    Parameters
    ----------
    mask : ndarray, shape (H, W)
        Label image, (y, x) order, at ``mask_mpp``; its pixel (i, j) covers
        level-0 micrometres [j*mpp_x, (j+1)*mpp_x) x [i*mpp_y, (i+1)*mpp_y).
    mask_mpp : float or (float, float)
        Mask resolution in µm/px, (x, y).
    roi : (x, y, width, height) or shapely geometry
        Region of interest relative to each tile's top-left corner, in pixels
        of the slide level the tiles are on. ``(0, 0, tile_w, tile_h)`` is the
        whole tile; any shapely polygon (e.g. a circle inscribed in the tile)
        is handled exactly.
    tile_x, tile_y : array of int or float, shape (N,)
        Tile top-left corners in pixels of the slide level.
    mpp_x, mpp_y : float
        Resolution of that slide level in µm/px.

    Returns
    -------
    dict of str to ndarray of float64, shape (N,)
        One entry per label present in ``mask`` plus ``"0"``, keyed by the label
        as a string: the area of the ROI covered by that label divided by the
        area of the ROI's bounding box. For a rectangular ROI the fractions of a
        tile sum to 1; for a polygon they sum to ``roi.area / bbox area`` (a
        circle inscribed in the tile over all-tissue gives pi/4). ROI area
        outside the mask image counts as label ``"0"``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    tile_x = np.asarray(tile_x, np.float64).ravel()
    tile_y = np.asarray(tile_y, np.float64).ravel()
    if tile_x.shape != tile_y.shape:
        raise ValueError("tile_x and tile_y must have the same length")
    mmx, mmy = _as_pair(mask_mpp)
    sx, sy = mpp_x / mmx, mpp_y / mmy  # mask pixels per slide-level pixel
    labels = [v for v in np.unique(mask).tolist() if v != 0]
    out: dict[str, np.ndarray] = {}
    box = _roi_box(roi)
    roi_fraction = 1.0 if box is not None else roi.area / _bbox_area(roi)
    if box is not None:
        rx, ry, rw, rh = box
        area = rw * sx * rh * sy
        sats = {v: summed_area_table(mask == v) for v in labels}
        for v in labels:
            out[str(v)] = np.empty(tile_x.shape, np.float64)
        for c in range(0, len(tile_x), _CHUNK):
            x0 = (tile_x[c : c + _CHUNK] + rx) * sx
            y0 = (tile_y[c : c + _CHUNK] + ry) * sy
            x1 = x0 + rw * sx
            y1 = y0 + rh * sy
            for v in labels:
                out[str(v)][c : c + _CHUNK] = _rect_integrals(sats[v], x0, y0, x1, y1) / area
    else:
        for v, frac in _polygon_fractions(mask, labels, roi, tile_x, tile_y, sx, sy).items():
            out[str(v)] = frac
    covered = np.zeros(tile_x.shape, np.float64)
    for v in labels:
        np.clip(out[str(v)], 0.0, 1.0, out=out[str(v)])  # float rounding only
        covered += out[str(v)]
    out["0"] = np.clip(roi_fraction - covered, 0.0, 1.0)
    return dict(sorted(out.items(), key=lambda kv: float(kv[0])))


def _polygon_fractions(mask, labels, roi, tile_x, tile_y, sx, sy) -> dict:
    """Exact polygon coverage, grouping tiles by their sub-pixel offset in the mask grid."""
    import shapely
    from shapely import affinity

    h, w = mask.shape
    poly = affinity.scale(roi, xfact=sx, yfact=sy, origin=(0, 0))
    area = _bbox_area(poly)
    ox = tile_x * sx
    oy = tile_y * sy
    ix = np.floor(ox).astype(np.int64)
    iy = np.floor(oy).astype(np.int64)
    # offsets equal up to float noise share one weight kernel
    frac = np.round(np.stack([ox - ix, oy - iy], axis=1), 9)
    keys, inverse = np.unique(frac, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    out = {v: np.zeros(len(tile_x), np.float64) for v in labels}
    onehots = {v: (mask == v) for v in labels}
    for g, (fx, fy) in enumerate(keys):
        shifted = affinity.translate(poly, xoff=fx, yoff=fy)
        minx, miny, maxx, maxy = shifted.bounds
        ci = np.arange(int(np.floor(minx)), int(np.ceil(maxx)))
        cj = np.arange(int(np.floor(miny)), int(np.ceil(maxy)))
        gi, gj = np.meshgrid(ci, cj)
        gi, gj = gi.ravel(), gj.ravel()
        cells = shapely.box(gi, gj, gi + 1, gj + 1)
        # only cells on the ROI boundary need a polygon clip; interior ones weigh 1
        shapely.prepare(shifted)
        weights = shapely.contains_properly(shifted, cells).astype(np.float64)
        edge = np.flatnonzero((weights == 0) & shapely.intersects(shifted, cells))
        weights[edge] = shapely.area(shapely.intersection(cells[edge], shifted))
        keep = weights > 0
        gi, gj, weights = gi[keep], gj[keep], weights[keep]
        members = np.flatnonzero(inverse == g)
        # bound the (tiles x kernel cells) temporaries
        step = max(1, _CHUNK // max(1, len(weights)))
        for c in range(0, len(members), step):
            m = members[c : c + step]
            cols = ix[m, None] + gi[None, :]
            rows = iy[m, None] + gj[None, :]
            inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
            cols = np.clip(cols, 0, w - 1)
            rows = np.clip(rows, 0, h - 1)
            for v in labels:
                hit = onehots[v][rows, cols] & inside
                out[v][m] = hit @ weights / area
    return out


def tile_overlay_overlap(
    roi,
    overlay_path: str | os.PathLike,
    tile_x: np.ndarray,
    tile_y: np.ndarray,
    mpp_x: float,
    mpp_y: float,
) -> dict[str, np.ndarray]:
    """Per-label coverage of tile ROIs by a mask overlay TIFF.

    Reads level 0 of the overlay and its resolution tags once, then calls
    :func:`overlap_fractions` (see there for the parameters and the result).
    No RGB pixel of the slide is decoded.
    """
    mask, mmx, mmy, _ = read_mask_overlay(overlay_path)
    return overlap_fractions(mask, (mmx, mmy), roi, tile_x, tile_y, mpp_x, mpp_y)


def retain(fractions: dict[str, np.ndarray], value: int, threshold: float) -> np.ndarray:
    """The keep rule: tiles whose fraction of mask label ``value`` is at least ``threshold``.

    Parameters
    ----------
    fractions : dict of str to ndarray, shape (N,)
        Per-label fractions from :func:`overlap_fractions`.
    value : int
        The mask label that counts (255 = tissue).
    threshold : float
        Minimum fraction in [0, 1]; a tile exactly at the threshold is kept.

    Returns
    -------
    ndarray of bool, shape (N,)
        All False when the mask has no pixel of ``value``.
    """
    n = len(next(iter(fractions.values()))) if fractions else 0
    frac = fractions.get(str(value))
    if frac is None:
        return np.zeros(n, bool)
    return np.asarray(frac) >= threshold
