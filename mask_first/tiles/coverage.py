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

import sys
from collections.abc import Sequence

import numpy as np

from mask_first.columns import broadcast, column_length, group_rows, take, to_numpy, xy_pair
from mask_first.tissue.overlay import read_mask_overlay

__all__ = ["TileFractions", "overlap_fractions", "tile_overlay_overlap", "summed_area_table", "retain"]

#: tiles per chunk of the rectangle path: its temporaries (~20 float64 arrays)
#: then stay in L2 cache, ~1.6x faster than 1 << 18
_CHUNK = 1 << 15
#: bound on (tiles x kernel cells) temporaries of the polygon path
_POLY_CHUNK = 1 << 18


#: masks from this many pixels on use OpenCV's integral image and histogram; below
#: it numpy takes under ~20 ms, less than importing OpenCV into a lean filter job
_OPENCV_MIN_PIXELS = 1 << 20


def _worth_opencv(pixels: int) -> bool:
    return pixels >= _OPENCV_MIN_PIXELS or ("cv2" in sys.modules and pixels > 0)


def summed_area_table(indicator: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column.

    Parameters
    ----------
    indicator : ndarray, shape (H, W)
        Per-pixel weights (e.g. ``mask == value``), (y, x) order.

    Returns
    -------
    ndarray, shape (H + 1, W + 1)
        ``S[i, j] = indicator[:i, :j].sum()``: int32 for a boolean indicator
        of fewer than 2**31 pixels, float64 otherwise (exact up to 2**53).
    """
    if indicator.dtype == bool and indicator.ndim == 2 and _worth_opencv(indicator.size):
        import cv2

        # OpenCV's integral image is this table exactly (zero first row and
        # column) and several times faster than two numpy cumsums; int32 holds
        # every count exactly below 2**31 pixels and halves the memory the
        # per-tile look-ups wander through (~1.2x faster gathers)
        depth = cv2.CV_32S if indicator.size < 2**31 else cv2.CV_64F
        return cv2.integral(np.ascontiguousarray(indicator).view(np.uint8), sdepth=depth)
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


class TileFractions(dict):
    """Per-label coverage fractions of N tiles: ``{label: ndarray of float64, shape (N,)}``.

    A plain ``dict`` keyed by the mask label as a string, the seed's keys
    (``"0"``, ``"255"``, ...), in increasing label order; every value is an
    array with one fraction per tile, in input order. ``"0"`` (background,
    including area outside the mask image) is always present; every other
    label present in a mask the tiles were scored against has an entry (0.0
    for tiles of other masks). So ``fractions.get("255", 0.0) >= 0.5`` is the
    seed's filter line, vectorised over all tiles.

    :meth:`rows` gives the seed's per-tile form (one dict per tile).
    """

    @property
    def n_tiles(self) -> int:
        """Number of tiles N."""
        return len(next(iter(self.values()))) if self else 0

    def rows(self) -> list[dict[str, float]]:
        """One ``{label: fraction}`` dict per tile, as the seed's ``tissue_overlap`` column.

        Like the seed, a tile's dict holds only the labels that cover part of
        its ROI (fraction > 0), so ``row.get("255", 0.0)`` is 0.0 for a tile
        without tissue. Store it as a pandas column with
        ``tiles["tissue_overlap"] = fractions.rows()``.
        """
        labels = list(self)
        columns = [self[k].tolist() for k in labels]
        return [{k: v for k, v in zip(labels, vals) if v > 0.0} for vals in zip(*columns)]


def overlap_fractions(
    mask: np.ndarray,
    mask_mpp,
    roi,
    tile_x,
    tile_y,
    mpp_x,
    mpp_y,
) -> TileFractions:
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
    mpp_x, mpp_y : float or array of float, shape (N,)
        Resolution of the tiles' slide level in µm/px: one value for all
        tiles, or one per tile.

    Returns
    -------
    TileFractions
        A dict of str to ndarray of float64, shape (N,): one entry per label
        present in ``mask`` plus ``"0"``, keyed by the label as a string: the
        area of the ROI covered by that label divided by the area of the ROI's
        bounding box. For a rectangular ROI the fractions of a tile sum to 1;
        for a polygon they sum to ``roi.area / bbox area`` (a circle inscribed
        in the tile over all-tissue gives pi/4). ROI area outside the mask
        image counts as label ``"0"``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    tile_x = to_numpy(tile_x, np.float64)
    tile_y = to_numpy(tile_y, np.float64)
    if tile_x.shape != tile_y.shape:
        raise ValueError("tile_x and tile_y must have the same length")
    n = len(tile_x)
    column_length(tile_x=tile_x, mpp_x=mpp_x, mpp_y=mpp_y)
    mmx, mmy = xy_pair(mask_mpp)
    # mask pixels per slide-level pixel: scalars, or one per tile
    sx = broadcast(mpp_x, n, np.float64) / mmx
    sy = broadcast(mpp_y, n, np.float64) / mmy
    labels = [v for v in _labels(mask) if v != 0]
    out: dict[str, np.ndarray] = {}
    box = _roi_box(roi)
    roi_fraction = 1.0 if box is not None else roi.area / _bbox_area(roi)
    if box is not None:
        rx, ry, rw, rh = box
        sats = {v: summed_area_table(mask == v) for v in labels}
        for v in labels:
            out[str(v)] = np.empty(n, np.float64)
        for c in range(0, n, _CHUNK):
            csx, csy = take(sx, slice(c, c + _CHUNK)), take(sy, slice(c, c + _CHUNK))
            area = (rw * rh) * csx * csy
            x0 = (tile_x[c : c + _CHUNK] + rx) * csx
            y0 = (tile_y[c : c + _CHUNK] + ry) * csy
            x1 = x0 + rw * csx
            y1 = y0 + rh * csy
            for v in labels:
                out[str(v)][c : c + _CHUNK] = _rect_integrals(sats[v], x0, y0, x1, y1) / area
    else:
        for v in labels:
            out[str(v)] = np.empty(n, np.float64)
        # one exact polygon kernel per distinct (scale_x, scale_y)
        for (gsx, gsy), index in _scale_groups(sx, sy, n):
            fracs = _polygon_fractions(mask, labels, roi, tile_x[index], tile_y[index], gsx, gsy)
            for v, frac in fracs.items():
                out[str(v)][index] = frac
    covered = np.zeros(n, np.float64)
    for v in labels:
        np.clip(out[str(v)], 0.0, 1.0, out=out[str(v)])  # float rounding only
        covered += out[str(v)]
    out["0"] = np.clip(roi_fraction - covered, 0.0, 1.0)
    return TileFractions(sorted(out.items(), key=lambda kv: float(kv[0])))


def _labels(mask: np.ndarray) -> list:
    """Distinct values of a label image (a histogram for uint8, no sort)."""
    if mask.dtype == np.uint8 and _worth_opencv(mask.size):
        import cv2

        # OpenCV's histogram: no int64 copy of the mask (np.bincount makes one), no sort (np.unique)
        hist = cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256]).ravel()
        return np.flatnonzero(hist).tolist()
    return np.unique(mask).tolist()


def _scale_groups(sx, sy, n: int) -> list[tuple[tuple[float, float], slice | np.ndarray]]:
    """Tiles grouped by their (mask px per slide px) scale pair."""
    if not (isinstance(sx, np.ndarray) or isinstance(sy, np.ndarray)):
        return [((float(sx), float(sy)), slice(0, n))]
    pairs = np.empty((n, 2), np.float64)
    pairs[:, 0] = sx
    pairs[:, 1] = sy
    keys, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    if len(keys) == 1:
        return [((float(keys[0, 0]), float(keys[0, 1])), slice(0, n))]
    return [((float(a), float(b)), np.flatnonzero(inverse == k)) for k, (a, b) in enumerate(keys)]


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
        step = max(1, _POLY_CHUNK // max(1, len(weights)))
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
    overlay_path,
    tile_x,
    tile_y,
    mpp_x,
    mpp_y,
) -> TileFractions:
    """Per-label coverage of tile ROIs by mask overlay TIFFs, for a tile table of any number of slides.

    Every per-tile argument is a scalar (shared by all tiles) or a column of
    length N (numpy array, pandas Series, pyarrow Array, list), as in the
    seed's ``tile_overlay_overlap(roi=box(0, 0, 512, 512),
    overlay_path=col("mask_path"), tile_x=col("tile_x"), ...)``. Tiles are
    grouped by overlay path; each overlay is opened once (level 0 and its
    resolution tags) and its tiles are scored by :func:`overlap_fractions`.
    No RGB pixel of any slide is decoded.

    Parameters
    ----------
    roi : (x, y, width, height) or shapely geometry
        ROI relative to each tile's top-left corner, in pixels of the tiles'
        slide level (e.g. ``shapely.box(0, 0, 512, 512)``, or a circle).
    overlay_path : path-like or column of path-likes, shape (N,)
        Mask overlay TIFF of each tile (the slide table's ``mask_path``).
    tile_x, tile_y : int or column of int, shape (N,)
        Tile top-left corners in pixels of the tiles' slide level.
    mpp_x, mpp_y : float or column of float, shape (N,)
        µm/px of the tiles' slide level; may differ from row to row.

    Returns
    -------
    TileFractions
        ``{label: ndarray of float64, shape (N,)}`` in input order, keyed by
        the mask value as a string (``"0"``, ``"255"``): the fraction of each
        tile's ROI bounding box covered by that value. ``"0"`` is always
        present; a label found in any overlay has an entry for every tile.
        ``.get("255", 0.0) >= t`` keeps tissue tiles; ``.rows()`` gives the
        seed's per-tile dicts.
    """
    n = column_length(overlay_path=overlay_path, tile_x=tile_x, tile_y=tile_y, mpp_x=mpp_x, mpp_y=mpp_y)
    if n is None:  # all scalars: one tile
        n = 1
    xs = np.broadcast_to(broadcast(tile_x, n, np.float64), (n,))
    ys = np.broadcast_to(broadcast(tile_y, n, np.float64), (n,))
    mx = broadcast(mpp_x, n, np.float64)
    my = broadcast(mpp_y, n, np.float64)
    groups = group_rows(overlay_path, n)
    if len(groups) == 1:
        mask, mmx, mmy, _ = read_mask_overlay(groups[0][0])
        return overlap_fractions(mask, (mmx, mmy), roi, xs, ys, mx, my)
    parts = []
    for path, index in groups:
        mask, mmx, mmy, _ = read_mask_overlay(path)
        parts.append((index, overlap_fractions(mask, (mmx, mmy), roi, xs[index], ys[index], take(mx, index), take(my, index))))
    labels = sorted({k for _, f in parts for k in f}, key=float)
    out = TileFractions((k, np.zeros(n, np.float64)) for k in labels)
    for index, fractions in parts:
        for k, v in fractions.items():
            out[k][index] = v
    return out


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
    # fractions are area ratios in float64: a tile exactly at the threshold (half
    # inside a drawn rectangle) can come out 2e-16 short; keep it, as documented
    return np.asarray(frac) >= threshold - 1e-9
