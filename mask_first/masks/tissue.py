"""Tissue masks computed from a low-resolution pyramid level.

A tissue mask is a ``uint8`` image with ``255`` on tissue and ``0`` on
background, on a square grid of ``mpp`` µm/px (the workflow uses 8 µm/px).

Mask grid convention
--------------------
* Mask pixel ``(i, j)`` (row ``i``, column ``j``; arrays are indexed
  ``[y, x]``) covers the level-0 rectangle of micrometres
  ``[j * mpp, (j + 1) * mpp) x [i * mpp, (i + 1) * mpp)``, measured from the
  top-left corner of the slide.
* Mask size: ``width = ceil(level0_width * mpp0_x / mpp)`` and
  ``height = ceil(level0_height * mpp0_y / mpp)`` (see :func:`mask_shape`), so
  the last column/row may reach past the slide; that part counts as glass
  (white, i.e. background).
* Pixel ``x`` of pyramid level ``L`` covers level-0 µm
  ``[x * mpp_L, (x + 1) * mpp_L)`` with ``mpp_L = mpp0_x * downsample_x``
  (:meth:`Slide.level_mpp`), so mask pixel ``j`` covers level-``L`` pixels
  ``[j * f, (j + 1) * f)`` with ``f = mpp / mpp_L``.

Resampling
----------
Only one level is read: ``slide.best_level_for_mpp(mpp)``, the coarsest level
not coarser than the mask (10 % tolerance), never level 0 when a coarser
suitable level exists. The level is then reduced to the mask grid by **area
averaging** in two exact steps per axis:

1. a box shrink by the integer ``k = round(f)`` (libvips ``shrink``: every
   intermediate pixel is the mean of a ``k x k`` block starting at the origin),
2. exact area weights for the remaining factor ``r = f / k`` (``r`` in
   about [0.67, 1.5)): mask pixel ``j`` is the mean of the intermediate pixels
   over ``[j * r, (j + 1) * r)``, each weighted by its overlap (8-bit fixed
   point weights; numpy).

Both steps keep pixel centres where they belong, so the mask is aligned with
the slide to a small fraction of a mask pixel (the tests measure it with
ramps); the only approximation is that in step 1 the blocks need not end
exactly on mask pixel boundaries (the weights of the at most two boundary
blocks are then shared in proportion, which is what step 2 does).

Methods
-------
``"otsu"`` (default)
    Grey level (ITU-R BT.601 luma), 3-class multi-Otsu on its 256-bin
    histogram, tissue = at or below the upper threshold, then closing and
    opening. Good for H&E and most brightfield stains on a white background,
    including pale or grey-blue tissue (IHC) that has little colour. It cannot
    tell pen ink, dust, folds and out-of-focus debris from tissue (all are
    darker than glass).
``"saturation"``
    HSV saturation (of the area-averaged RGB), 2-class Otsu, tissue = above the
    threshold, with pen ink (blue/green hues, and black = very dark) excluded.
    Rejects grey/white background, dust and dark grey debris much better and
    ignores pen marks; use it for H&E slides with marker ink or dirty glass.
    Not suitable for weakly coloured tissue (grey IHC counterstains) and
    not for stains whose tissue colour *is* blue/green (e.g. Giemsa,
    toluidine blue): set ``reject_pen=False`` there, or use ``"otsu"``.

Both methods guard against inventing tissue on blank slides (a flat or
narrow histogram): when the Otsu classes are not far enough apart, or no
class looks like background, an absolute threshold is used instead
(``fallback_grey`` / ``min_saturation``), so glass-only slides give an
all-zero mask and tissue-only slides (almost) all 255.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mask_first.slides import Slide, open_slide

__all__ = [
    "DEFAULT_MASK_MPP",
    "METHODS",
    "TissueMaskResult",
    "default_params",
    "mask_shape",
    "multi_otsu_thresholds",
    "tissue_mask",
    "tissue_mask_with_info",
]

#: mask resolution used by the workflow, µm/px
DEFAULT_MASK_MPP = 8.0
TISSUE = 255
BACKGROUND = 0
WHITE = 255

#: Parameters shared by all methods (post-processing of the thresholded mask).
_COMMON = {
    # radius in µm of the disk used for morphological closing (fills gaps and
    # small holes, joins fragments); 0 disables
    "closing_um": 16.0,
    # radius in µm of the disk used for opening after the closing (removes
    # specks and thin lines); 0 disables
    "opening_um": 8.0,
    # remove tissue components (4-connected) smaller than this area, µm²; 0 = off
    "min_object_um2": 0.0,
    # fill background components not touching the mask border smaller than
    # this area, µm²; 0 = off, inf = fill every hole
    "min_hole_um2": 0.0,
}

_METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "otsu": {
        # number of multi-Otsu classes; tissue = every class below the top one
        "classes": 3,
        # minimum grey-level difference between the background class mean and
        # the tissue mean for the Otsu split to be trusted
        "min_contrast": 20.0,
        # the background class must be at least this bright (grey level)
        "min_background_grey": 200.0,
        # absolute threshold used when the histogram shows no trustworthy
        # background class (blank or all-tissue slides): tissue = grey <= this
        "fallback_grey": 220.0,
    },
    "saturation": {
        # absolute floor of the saturation threshold (0..1); also the
        # threshold used when the Otsu split is not trusted
        "min_saturation": 0.07,
        # the lower Otsu class is background only if its mean saturation is
        # at most this (0..1); otherwise the slide has no glass
        "max_background_saturation": 0.10,
        # minimum difference of the class mean saturations (0..1) for the
        # Otsu split to be trusted
        "min_contrast": 0.08,
        # exclude pen ink: coloured (hue in pen_hue_deg and saturation >=
        # pen_min_saturation) and black (max(R, G, B) < black_max_value)
        "reject_pen": True,
        "pen_hue_deg": (70.0, 235.0),
        "pen_min_saturation": 0.3,
        "black_max_value": 50,
    },
}

METHODS = tuple(_METHOD_PARAMS)

#: level pixels read at once; bigger levels are read in strips of mask rows
_MAX_STRIP_PIXELS = 1 << 25
_ROW_BLOCK = 64
_THREADS = 2


def default_params(method: str = "otsu") -> dict[str, Any]:
    """The default parameters of ``method`` (a fresh dict; see the module docstring)."""
    if method not in _METHOD_PARAMS:
        raise ValueError(f"unknown tissue mask method {method!r}; choose one of {', '.join(METHODS)}")
    return {**_METHOD_PARAMS[method], **_COMMON}


# ---------------------------------------------------------------------------
# result / provenance
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TissueMaskResult:
    """A tissue mask and how it was made.

    Attributes
    ----------
    mask : ndarray of uint8, shape (height, width)
        255 = tissue, 0 = background; (y, x) order, ``mpp`` µm/px.
    mpp : float
        Mask resolution, µm/px (square pixels).
    method : str
    params : dict
        All parameters used (defaults filled in).
    level : int
        Pyramid level read.
    level_mpp : (float, float)
        (x, y) µm/px of that level.
    level_dimensions : (int, int)
        (width, height) of that level in its pixels.
    slide : str
        Path of the slide.
    slide_mpp : (float, float)
        Level-0 (x, y) µm/px used (metadata or override).
    slide_dimensions : (int, int)
        Level-0 (width, height) in pixels.
    stats : dict
        What the method measured: histogram thresholds, the threshold used and
        whether the absolute fallback was taken.
    """

    mask: np.ndarray
    mpp: float
    method: str
    params: dict[str, Any]
    level: int
    level_mpp: tuple[float, float]
    level_dimensions: tuple[int, int]
    slide: str
    slide_mpp: tuple[float, float]
    slide_dimensions: tuple[int, int]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tissue_fraction(self) -> float:
        """Fraction of mask pixels that are tissue."""
        return float(np.count_nonzero(self.mask == TISSUE)) / max(1, self.mask.size)

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable description (for the overlay's ImageDescription)."""
        return _jsonable(
            {
                "generator": "mask_first.masks.tissue",
                "method": self.method,
                "params": self.params,
                "mpp": self.mpp,
                "mask_shape": list(self.mask.shape),
                "level": self.level,
                "level_mpp": list(self.level_mpp),
                "level_dimensions": list(self.level_dimensions),
                "slide": self.slide,
                "slide_mpp": list(self.slide_mpp),
                "slide_dimensions": list(self.slide_dimensions),
                "stats": self.stats,
                "tissue_fraction": round(self.tissue_fraction, 6),
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if value is None or isinstance(value, str):
        return value
    return str(value)


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def mask_shape(slide: Slide, mpp: float) -> tuple[int, int]:
    """(height, width) in pixels of the ``mpp`` µm/px mask grid of ``slide``.

    ``width = ceil(level0_width * mpp0_x / mpp)``, likewise the height; a
    tolerance of 1e-6 px keeps float noise from adding a column.
    """
    if not mpp > 0:
        raise ValueError(f"mask mpp must be positive, got {mpp}")
    w0, h0 = slide.level_dimensions[0]
    return _ceil(h0 * slide.mpp_y / mpp), _ceil(w0 * slide.mpp_x / mpp)


def _ceil(x: float) -> int:
    return max(1, math.ceil(x - 1e-6))


def tissue_mask(
    slide: Slide | str | os.PathLike,
    mpp: float = DEFAULT_MASK_MPP,
    method: str = "otsu",
    *,
    mpp_override: float | None = None,
    **params: Any,
) -> np.ndarray:
    """Tissue mask of a slide at ``mpp`` µm/px.

    Parameters
    ----------
    slide : Slide or path-like
        An open :class:`~mask_first.slides.Slide`, or a slide file (opened with
        ``mpp_override`` and closed again).
    mpp : float
        Mask resolution in µm/px (default 8).
    method : {"otsu", "saturation"}
        See the module docstring for when to use which.
    mpp_override : float, optional
        Level-0 µm/px for slides without mpp metadata (only with a path).
    **params
        Method parameters, see :func:`default_params` (``closing_um``,
        ``opening_um`` radii in µm; ``min_object_um2``, ``min_hole_um2`` areas
        in µm²; thresholds in grey levels 0-255 for ``"otsu"``, saturation
        fractions 0-1 for ``"saturation"``).

    Returns
    -------
    ndarray of uint8, shape (height, width)
        255 on tissue, 0 elsewhere, axis order (y, x); the grid convention
        (pixel ``(i, j)`` covers level-0 µm ``[j*mpp, (j+1)*mpp) x
        [i*mpp, (i+1)*mpp)``) and size are described in the module docstring
        and :func:`mask_shape`.

    Raises
    ------
    ValueError
        Unknown method or parameter, non-positive ``mpp``.
    mask_first.slides.SlideError
        The slide cannot be opened or has no mpp.
    """
    return tissue_mask_with_info(slide, mpp, method, mpp_override=mpp_override, **params).mask


def tissue_mask_with_info(
    slide: Slide | str | os.PathLike,
    mpp: float = DEFAULT_MASK_MPP,
    method: str = "otsu",
    *,
    mpp_override: float | None = None,
    **params: Any,
) -> TissueMaskResult:
    """Like :func:`tissue_mask` but returns a :class:`TissueMaskResult` with provenance.

    ``result.provenance()`` is a JSON-serialisable dict (method, parameters,
    level read, slide, mpps, thresholds) meant for the overlay's description.
    """
    resolved = default_params(method)
    unknown = sorted(set(params) - set(resolved))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) for method {method!r}: {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(resolved))}"
        )
    resolved.update(params)
    mpp = float(mpp)
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mask mpp must be a positive number of µm/px, got {mpp}")
    if isinstance(slide, Slide):
        return _tissue_mask(slide, mpp, method, resolved)
    with open_slide(slide, mpp_override) as opened:
        return _tissue_mask(opened, mpp, method, resolved)


def _tissue_mask(slide: Slide, mpp: float, method: str, params: dict[str, Any]) -> TissueMaskResult:
    level = slide.best_level_for_mpp(mpp)
    out_h, out_w = mask_shape(slide, mpp)
    lmx, lmy = slide.level_mpp(level)
    plan_x = _AxisPlan.make(slide.levels[level].width, out_w, mpp / lmx)
    plan_y = _AxisPlan.make(slide.levels[level].height, out_h, mpp / lmy)
    if method == "otsu":
        grey = _resample_level(slide, level, plan_x, plan_y, _luma)
        raw, stats = _threshold_grey(grey, params)
    else:
        rgb = _resample_level(slide, level, plan_x, plan_y, None)
        raw, stats = _threshold_saturation(rgb, params)
    mask = _postprocess(raw, mpp, params)
    w0, h0 = slide.level_dimensions[0]
    return TissueMaskResult(
        mask=mask,
        mpp=mpp,
        method=method,
        params=dict(params),
        level=level,
        level_mpp=(lmx, lmy),
        level_dimensions=slide.level_dimensions[level],
        slide=str(slide.path),
        slide_mpp=(slide.mpp_x, slide.mpp_y),
        slide_dimensions=(w0, h0),
        stats=stats,
    )


# ---------------------------------------------------------------------------
# resampling a level onto the mask grid
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _AxisPlan:
    """How one axis of a level maps onto the mask grid.

    ``f`` level pixels per mask pixel = integer box shrink ``k`` times the
    remaining factor ``r``. ``src``/``weights`` give, for every mask pixel,
    the intermediate (shrunk) pixels it overlaps and 8-bit weights that with
    ``fill_weight`` (the part of the mask pixel beyond the slide) sum to 256.
    """

    n_level: int
    n_out: int
    f: float
    k: int
    r: float
    n_int: int
    identity: bool
    src: np.ndarray  # (taps, n_out) int64, clipped to [0, n_int)
    weights: np.ndarray  # (taps, n_out) uint16
    fill_weight: np.ndarray  # (n_out,) uint16

    @classmethod
    def make(cls, n_level: int, n_out: int, f: float) -> "_AxisPlan":
        k = max(1, int(round(f)))
        r = f / k
        n_int = -(-n_level // k)
        if abs(r - 1.0) < 1e-9:
            # the grids coincide: mask pixel j is intermediate pixel j
            src = np.minimum(np.arange(n_out), n_int - 1)[None, :]
            inside = np.arange(n_out) < n_int
            weights = np.where(inside, 256, 0).astype(np.uint16)[None, :]
            fill = np.where(inside, 0, 256).astype(np.uint16)
            return cls(n_level, n_out, f, k, 1.0, n_int, True, src, weights, fill)
        n_taps = int(math.ceil(r)) + 1
        i = np.arange(n_out, dtype=np.float64)
        b0, b1 = i * r, (i + 1) * r
        s = np.floor(b0).astype(np.int64)[None, :] + np.arange(n_taps)[:, None]
        w = np.clip(np.minimum(s + 1, b1) - np.maximum(s, b0), 0.0, None) / r
        q = np.rint(w * 256).astype(np.int64)
        q[w.argmax(0), np.arange(n_out)] += 256 - q.sum(0)  # exact sum of 256
        outside = s >= n_int
        fill = (q * outside).sum(0)
        q[outside] = 0
        keep = q.any(1)
        s = np.minimum(s, n_int - 1)[keep]
        return cls(n_level, n_out, f, k, r, n_int, False, s, q[keep].astype(np.uint16), fill.astype(np.uint16))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma ``(77 R + 150 G + 29 B + 128) >> 8`` of (h, w, 3) uint8 -> (h, w) uint8."""
    h, w = rgb.shape[:2]
    out = np.empty((h, w), np.uint8)
    rows = max(1, (1 << 18) // max(1, w))  # ~256k pixels per block: stays in cache
    acc = np.empty((rows, w), np.uint16)
    tmp = np.empty((rows, w), np.uint16)
    for y in range(0, h, rows):
        n = min(rows, h - y)
        a, t, blk = acc[:n], tmp[:n], rgb[y : y + n]
        np.multiply(blk[..., 0], 77, out=a, dtype=np.uint16)
        np.multiply(blk[..., 1], 150, out=t, dtype=np.uint16)
        a += t
        np.multiply(blk[..., 2], 29, out=t, dtype=np.uint16)
        a += t
        a += 128
        a >>= 8
        out[y : y + n] = a
    return out


def _box_shrink(img: np.ndarray, kx: int, ky: int, out_w: int, out_h: int) -> np.ndarray:
    """Block means of ``kx x ky`` blocks from the origin, padding with white to (out_h*ky, out_w*kx)."""
    if kx == 1 and ky == 1:
        if img.shape[0] == out_h and img.shape[1] == out_w:
            return img
        pad = [(0, out_h - img.shape[0]), (0, out_w - img.shape[1])] + [(0, 0)] * (img.ndim - 2)
        return np.pad(img, pad, constant_values=WHITE)
    import pyvips

    bands = 1 if img.ndim == 2 else img.shape[2]
    v = pyvips.Image.new_from_array(img)
    if v.width != out_w * kx or v.height != out_h * ky:
        v = v.embed(0, 0, out_w * kx, out_h * ky, extend="background", background=[WHITE] * bands)
    # float so the means are rounded, not truncated
    v = (v.cast("float").shrink(kx, ky) + 0.5).cast("uchar")
    out = v.numpy()
    if img.ndim == 2 and out.ndim == 3:
        out = out[..., 0]
    return out


def _apply_taps(
    inter: np.ndarray, row_offset: int, plan_y: _AxisPlan, plan_x: _AxisPlan, i0: int, i1: int, out: np.ndarray
) -> None:
    """Mask rows [i0, i1) from intermediate rows (``inter[0]`` is row ``row_offset``) into ``out``."""
    extra = (1,) * (inter.ndim - 2)
    wx = plan_x.weights.reshape(plan_x.weights.shape + extra)
    fx = plan_x.fill_weight.astype(np.uint16) * WHITE + 128
    fx = fx.reshape((1, -1) + extra)
    block_shape_y = (min(_ROW_BLOCK, i1 - i0), inter.shape[1]) + inter.shape[2:]
    acc = np.empty(block_shape_y, np.uint16)
    tmp = np.empty_like(acc)
    row = np.empty(block_shape_y, np.uint8)
    if not plan_x.identity:
        block_shape_x = (block_shape_y[0], plan_x.n_out) + inter.shape[2:]
        acc2 = np.empty(block_shape_x, np.uint16)
        tmp2 = np.empty_like(acc2)
    for b0 in range(i0, i1, _ROW_BLOCK):
        b1 = min(b0 + _ROW_BLOCK, i1)
        n = b1 - b0
        # --- y: weighted rows
        if plan_y.identity:
            r = inter[plan_y.src[0, b0:b1] - row_offset]
            r[plan_y.fill_weight[b0:b1] > 0] = WHITE
        else:
            a, t = acc[:n], tmp[:n]
            a[...] = (plan_y.fill_weight[b0:b1].astype(np.uint16) * WHITE + 128).reshape((n, 1) + extra)
            for src, w in zip(plan_y.src, plan_y.weights):
                np.multiply(inter[src[b0:b1] - row_offset], w[b0:b1].reshape((n, 1) + extra), out=t, dtype=np.uint16)
                a += t
            a >>= 8
            r = row[:n]
            r[...] = a
        # --- x: weighted columns
        if plan_x.identity:
            c = np.take(r, plan_x.src[0], axis=1)
            c[:, plan_x.fill_weight > 0] = WHITE
            out[b0 - i0 : b1 - i0] = c
        else:
            a2, t2 = acc2[:n], tmp2[:n]
            a2[...] = fx
            for src, w in zip(plan_x.src, wx):
                np.multiply(np.take(r, src, axis=1), w, out=t2, dtype=np.uint16)
                a2 += t2
            a2 >>= 8
            out[b0 - i0 : b1 - i0] = a2


def _resample_level(
    slide: Slide,
    level: int,
    plan_x: _AxisPlan,
    plan_y: _AxisPlan,
    prepare: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    """Area-average ``prepare(level RGB)`` onto the mask grid -> (n_out_y, n_out_x[, bands]) uint8.

    Reads the whole level at once when it has at most ``_MAX_STRIP_PIXELS``
    pixels, otherwise strips of whole mask rows (bounded memory).
    """
    lv = slide.levels[level]
    width, height = lv.width, lv.height
    bands = () if prepare is not None else (3,)
    out = np.empty((plan_y.n_out, plan_x.n_out) + bands, np.uint8)
    ky = plan_y.k
    # mask rows per strip so that a strip reads about _MAX_STRIP_PIXELS level pixels
    rows_per_strip = max(1, int(_MAX_STRIP_PIXELS // max(1.0, width * plan_y.f)))
    if width * height <= _MAX_STRIP_PIXELS:
        rows_per_strip = plan_y.n_out
    with ThreadPoolExecutor(_THREADS) as pool:
        for i0 in range(0, plan_y.n_out, rows_per_strip):
            i1 = min(i0 + rows_per_strip, plan_y.n_out)
            m0 = int(plan_y.src[:, i0:i1].min())
            m1 = int(plan_y.src[:, i0:i1].max()) + 1
            y0, y1 = m0 * ky, min(m1 * ky, height)
            if y0 == 0 and y1 == height:
                rgb = slide.read_level(level)
            else:
                rgb = slide.read_region(level, 0, y0, width, y1 - y0)
            feat = rgb if prepare is None else prepare(rgb)
            del rgb
            inter = _box_shrink(feat, plan_x.k, ky, plan_x.n_int, m1 - m0)
            del feat
            # two threads over halves of the strip's mask rows (numpy releases the GIL)
            mid = i0 + (i1 - i0 + 1) // 2
            jobs = [(a, b) for a, b in ((i0, mid), (mid, i1)) if b > a]
            futures = [
                pool.submit(_apply_taps, inter, m0, plan_y, plan_x, a, b, out[a:b]) for a, b in jobs
            ]
            for fut in futures:
                fut.result()
    return out


# ---------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------


def multi_otsu_thresholds(hist: np.ndarray, classes: int = 3) -> tuple[int, ...]:
    """Multi-level Otsu thresholds of a histogram (exact, by dynamic programming).

    Parameters
    ----------
    hist : 1-D array of counts
        ``hist[v]`` = number of pixels with value ``v`` (e.g. 256 bins).
    classes : int
        Number of classes (>= 2).

    Returns
    -------
    tuple of int
        ``classes - 1`` increasing thresholds ``t_1 < ... < t_{c-1}``; class
        ``k`` holds the values ``t_k < v <= t_{k+1}`` (``t_0 = -1``,
        ``t_c = len(hist) - 1``), i.e. ``v <= t_1`` is the first class. They
        maximise the between-class variance ``sum_k w_k mu_k**2`` over all
        threshold tuples. Ties (thresholds inside a run of empty bins give the
        same classes) are resolved by moving each threshold to the middle of the
        empty run it lies in (lower middle), so the result does not depend on
        evaluation order.
    """
    h = np.asarray(hist, dtype=np.float64).ravel()
    n_bins = h.size
    if classes < 2:
        raise ValueError("classes must be >= 2")
    if n_bins < classes:
        raise ValueError(f"need at least {classes} bins, got {n_bins}")
    P = np.concatenate([[0.0], np.cumsum(h)])
    S = np.concatenate([[0.0], np.cumsum(h * np.arange(n_bins))])
    # seg[a, b]: S^2 / P over the bins [a, b) (a < b); -inf where a >= b
    dP = P[None, :] - P[:, None]
    dS = S[None, :] - S[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        seg = np.where(dP > 0, dS * dS / np.where(dP > 0, dP, 1.0), 0.0)
    a_idx, b_idx = np.indices(seg.shape)
    seg[a_idx >= b_idx] = -np.inf
    # best[b] = best value of splitting bins [0, b) into j classes
    best = seg[0].copy()
    back = []
    for _ in range(classes - 1):
        total = best[:, None] + seg  # [a, b]: j classes on [0, a), one on [a, b)
        arg = np.argmax(total, axis=0)
        back.append(arg)
        best = total[arg, np.arange(n_bins + 1)]
    # backtrack the class boundaries from b = n_bins
    bounds = []
    b = n_bins
    for arg in reversed(back):
        b = int(arg[b])
        bounds.append(b)
    bounds.reverse()  # boundaries b_1 < ... < b_{c-1}: class k = bins [b_k, b_{k+1})
    # canonical position inside runs of empty bins
    nonzero = np.flatnonzero(h > 0)
    canon = []
    for k, bnd in enumerate(bounds):
        lower = nonzero[nonzero < bnd]
        upper = nonzero[nonzero >= bnd]
        if lower.size and upper.size:
            lo, hi = int(lower[-1]) + 1, int(upper[0])  # any boundary in [lo, hi] is equivalent
            prev = canon[-1] if canon else 0
            nxt = bounds[k + 1] if k + 1 < len(bounds) else n_bins
            cand = (lo + hi) // 2
            if prev < cand < nxt:
                bnd = cand
        canon.append(bnd)
    return tuple(int(b) - 1 for b in canon)


def _class_stats(hist: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    """(count, mean value) of the bins lo..hi inclusive."""
    h = hist[lo : hi + 1].astype(np.float64)
    n = float(h.sum())
    if n == 0:
        return 0.0, float("nan")
    return n, float((h * np.arange(lo, hi + 1)).sum() / n)


def _threshold_grey(grey: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Multi-Otsu on the grey histogram; tissue = grey <= threshold."""
    classes = int(p["classes"])
    hist = np.bincount(grey.ravel(), minlength=256)
    thresholds = multi_otsu_thresholds(hist, classes)
    edges = [-1, *thresholds, 255]
    stats = [_class_stats(hist, edges[k] + 1, edges[k + 1]) for k in range(classes)]
    # the background = top class, plus any class just below whose mean is
    # within min_contrast of it (a noisy glass peak split in two)
    top = classes - 1
    while top > 0 and stats[top - 1][0] > 0 and stats[top][1] - stats[top - 1][1] < p["min_contrast"]:
        top -= 1
    threshold = edges[top]
    bg_n, bg_mean = _class_stats(hist, threshold + 1, 255)
    fg_n, fg_mean = _class_stats(hist, 0, threshold)
    trusted = (
        top > 0
        and fg_n > 0
        and bg_n > 0
        and bg_mean >= p["min_background_grey"]
        and bg_mean - fg_mean >= p["min_contrast"]
    )
    if not trusted:
        threshold = int(math.floor(p["fallback_grey"]))
    raw = np.where(grey <= threshold, TISSUE, BACKGROUND).astype(np.uint8)
    return raw, {
        "otsu_thresholds": list(thresholds),
        "threshold": threshold,
        "fallback": not trusted,
        "background_mean": bg_mean if math.isfinite(bg_mean) else None,
        "tissue_mean": fg_mean if math.isfinite(fg_mean) else None,
    }


def _saturation_features(rgb: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(saturation 0-255 uint8, pen bool) of (h, w, 3) uint8 RGB."""
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    d = mx - mn
    sat = np.zeros(mx.shape, np.uint8)
    pos = mx > 0
    sat[pos] = np.rint(d[pos] * 255.0 / mx[pos]).astype(np.uint8)
    if not p["reject_pen"]:
        return sat, np.zeros(mx.shape, bool)
    pen = mx < int(p["black_max_value"])
    cand = (sat >= p["pen_min_saturation"] * 255.0) & (d > 0) & ~pen
    if cand.any():
        rr, gg, bb = r[cand], g[cand], b[cand]
        m, dd = mx[cand], d[cand].astype(np.float32)
        hue = np.where(
            m == rr,
            60.0 * np.mod((gg - bb) / dd, 6.0),
            np.where(m == gg, 60.0 * ((bb - rr) / dd + 2.0), 60.0 * ((rr - gg) / dd + 4.0)),
        )
        lo, hi = p["pen_hue_deg"]
        pen[cand] = (hue >= lo) & (hue <= hi)
    return sat, pen


def _threshold_saturation(rgb: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Otsu on the saturation histogram (pen ink zeroed); tissue = saturation > threshold."""
    sat, pen = _saturation_features(rgb, p)
    sat[pen] = 0
    hist = np.bincount(sat.ravel(), minlength=256)
    (t_otsu,) = multi_otsu_thresholds(hist, 2)
    lo_n, lo_mean = _class_stats(hist, 0, t_otsu)
    hi_n, hi_mean = _class_stats(hist, t_otsu + 1, 255)
    floor_ = p["min_saturation"] * 255.0
    trusted = (
        lo_n > 0
        and hi_n > 0
        and lo_mean <= p["max_background_saturation"] * 255.0
        and hi_mean - lo_mean >= p["min_contrast"] * 255.0
    )
    threshold = max(t_otsu, floor_) if trusted else floor_
    threshold = int(math.floor(threshold))
    raw = np.where(sat > threshold, TISSUE, BACKGROUND).astype(np.uint8)
    return raw, {
        "otsu_threshold": int(t_otsu),
        "threshold": threshold,
        "threshold_saturation": threshold / 255.0,
        "fallback": not trusted,
        "pen_fraction": float(pen.mean()) if pen.size else 0.0,
    }


# ---------------------------------------------------------------------------
# morphology (libvips) and small components
# ---------------------------------------------------------------------------


def _disk(radius_px: float) -> list[list[int]] | None:
    """libvips morphology mask of a disk: 255 where dx² + dy² <= r², 128 (don't care) elsewhere."""
    r = int(math.floor(radius_px + 1e-9))
    if r < 1:
        return None
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = xx * xx + yy * yy <= radius_px * radius_px + 1e-9
    return np.where(inside, 255, 128).tolist()


def _morph(mask: np.ndarray, radius_px: float, ops: tuple[str, str]) -> np.ndarray:
    """Apply libvips ``morph`` ops in order with a disk; edges extended by copying."""
    disk = _disk(radius_px)
    if disk is None:
        return mask
    import pyvips

    r = len(disk) // 2
    pad = r * len(ops)
    h, w = mask.shape
    v = pyvips.Image.new_from_array(mask).embed(pad, pad, w + 2 * pad, h + 2 * pad, extend="copy")
    for op in ops:
        v = v.morph(disk, op)
    return v.crop(pad, pad, w, h).numpy()


def _remove_small_components(mask: np.ndarray, min_object_px: float, min_hole_px: float) -> np.ndarray:
    """Drop tissue components below ``min_object_px`` pixels and fill enclosed holes below ``min_hole_px``.

    Components are 4-connected (libvips ``labelregions``); a hole is a
    background component that does not touch the mask border.
    """
    import pyvips

    labels, info = pyvips.Image.new_from_array(mask).labelregions(segments=True)
    lab = labels.numpy()
    n = int(info["segments"])
    area = np.bincount(lab.ravel(), minlength=n)
    value = np.zeros(n, np.uint8)
    value[lab.ravel()] = mask.ravel()
    border = np.zeros(n, bool)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        border[edge] = True
    new = value.copy()
    new[(value == TISSUE) & (area < min_object_px)] = BACKGROUND
    new[(value == BACKGROUND) & (area < min_hole_px) & ~border] = TISSUE
    if np.array_equal(new, value):
        return mask
    return new[lab]


def _postprocess(raw: np.ndarray, mpp: float, p: dict[str, Any]) -> np.ndarray:
    mask = _morph(raw, float(p["closing_um"]) / mpp, ("dilate", "erode"))
    mask = _morph(mask, float(p["opening_um"]) / mpp, ("erode", "dilate"))
    min_obj = float(p["min_object_um2"]) / (mpp * mpp)
    min_hole = float(p["min_hole_um2"]) / (mpp * mpp)
    if min_obj > 1 or min_hole > 1:
        mask = _remove_small_components(mask, min_obj, min_hole)
    return np.ascontiguousarray(mask, dtype=np.uint8)
