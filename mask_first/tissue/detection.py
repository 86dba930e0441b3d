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
averaging** in two steps per axis:

1. a box shrink of the RGB by the integer ``k = max(1, round(f))``
   (libvips ``shrink`` rounding: intermediate pixel ``m`` is the mean of
   level pixels ``[m k, (m + 1) k)``, vertical then horizontal, each rounded,
   so within one grey level; the level is padded with white to whole blocks;
   computed in numpy with the same result for powers of two up to 16),
2. exact area weights for the remaining factor ``r = f / k`` (about
   0.67-1.5; below 1 when the mask is finer than the level): mask pixel
   ``j`` is the mean of intermediate pixels over ``[j r, (j + 1) r)``, each
   weighted by its overlap (8-bit fixed-point weights summing to 256, numpy).

Both steps keep every pixel centre where it belongs, so the mask is aligned
with the slide to a small fraction of a mask pixel (the tests check linear
ramps and rectangle edges for several ``f``). The only approximation is that
the step-1 blocks need not end on mask pixel boundaries; a partly covered
block then contributes its mean in proportion to the covered part, which
moves centroids by well under 0.1 mask pixel. ``f == 1`` is a plain copy.

The feature that is thresholded (grey level or saturation) is computed
between the two steps, from the block-mean RGB (per level pixel when
``k == 1``), and then area-averaged by step 2.

Speed and memory: all of it is streamed in cache-sized blocks with integer
(or exactly rounded float32) arithmetic, one pass per numpy operation over
uint8/uint16 data, the feature of each pixel computed once. Levels over 2 M
pixels are read in strips of about 1 M pixels (whole stored tile rows), the
next strip decoded on a second thread while the current one is processed, so
decoding and computing overlap and memory stays bounded (a few strips, the
mask-size result). On tiled TIFF levels the pixels are requested tile by
tile, which the TIFF reader decodes straight into our buffer, and without a
box shrink the feature is computed from the tiles directly. The result does
not depend on the strips, the threads or the tile size.

Methods
-------
``"otsu"`` (default)
    Grey level (BT.601 luma ``(77 R + 150 G + 29 B) / 256``), 3-class
    multi-Otsu on its 256-bin histogram, tissue = at or below the upper
    threshold, then closing and opening. Good for H&E and most brightfield
    stains on a white background, including pale or grey-blue tissue (IHC)
    that has little colour. It cannot tell pen ink, dust, folds and
    out-of-focus debris from tissue (all are darker than glass).
``"saturation"``
    HSV saturation ``(max - min) / max``, 2-class Otsu, tissue = above the
    threshold, with pen ink set to 0 first: blue/green hues (default
    70-235 degrees) at saturation >= 0.2, and black (``max(R, G, B) < 50``).
    Rejects grey/white background, dust, dark grey debris and marker ink
    much better; use it for H&E slides with pen marks or dirty glass. Not
    suitable for weakly coloured tissue (grey IHC counterstains), and not for
    stains whose tissue *is* blue/green (Giemsa, toluidine blue, ...): set
    ``reject_pen=False`` there, or use ``"otsu"``.

Post-processing: closing then opening with disks of ``closing_um`` /
``opening_um`` micrometres radius (``dx² + dy² <= r²`` in mask pixels),
on a bit-packed mask; pixels outside the mask neither add tissue in a
dilation nor remove it in an erosion. Optional removal of small tissue
components and filling of small enclosed holes (4-connected; libvips
``labelregions``, slower, off by default).

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
from typing import Any

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
        "pen_min_saturation": 0.2,
        "black_max_value": 50,
    },
}

METHODS = tuple(_METHOD_PARAMS)

#: levels with more pixels are read in strips of about _STRIP_PIXELS pixels,
#: the next strip decoded on a second thread while one is processed
_PIPELINE_PIXELS = 1 << 21
_STRIP_PIXELS = 1 << 20
#: pixels per block of the feature kernels, and mask pixels per band of the
#: resampling (large enough for few numpy calls, small enough for the caches);
#: small images use blocks and bands of at least 1/_SPLIT of them
_FEATURE_PIXELS = 1 << 18
_BAND_PIXELS = 1 << 18
_SPLIT = 2
#: rows of thresholding / unpacking blocks, and of the window beyond what a band reads
_BLOCK_PIXELS = 1 << 17
#: histograms of at least _HIST_VIPS_PIXELS pixels are made by libvips, in
#: pieces of at least _HIST_PIXELS (a libvips call costs ~0.5 ms)
_HIST_VIPS_PIXELS = 1 << 20
_HIST_PIXELS = 1 << 22
#: scratch buffers come from blocks of at least this size (huge pages, see _Arena)
_ARENA_BYTES = 16 << 20
#: rows of the multi-Otsu search matrix per block
_OTSU_ROWS = 64


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
                "slide": Path(self.slide).name,
                "slide_path": self.slide,
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
        Level-0 µm/px for slides without mpp metadata (only with a path;
        ValueError with an open Slide).
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
    _check_params(method, resolved)
    mpp = float(mpp)
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mask mpp must be a positive number of µm/px, got {mpp}")
    if isinstance(slide, Slide):
        if mpp_override is not None:
            raise ValueError("mpp_override applies when a path is given; an open Slide already has its mpp")
        return _tissue_mask(slide, mpp, method, resolved)
    with open_slide(slide, mpp_override) as opened:
        return _tissue_mask(opened, mpp, method, resolved)


def _check_params(method: str, p: dict[str, Any]) -> None:
    for key in ("closing_um", "opening_um", "min_object_um2", "min_hole_um2"):
        if not float(p[key]) >= 0:
            raise ValueError(f"{key} must be >= 0, got {p[key]}")
    if method == "otsu":
        if int(p["classes"]) != p["classes"] or not 2 <= int(p["classes"]) <= 8:
            raise ValueError(f"classes must be an integer in 2..8, got {p['classes']}")
    elif p["reject_pen"]:
        lo, hi = (float(v) for v in p["pen_hue_deg"])
        if not 60 <= lo <= 180 <= hi <= 300:
            raise ValueError(
                f"pen_hue_deg must satisfy 60 <= lo <= 180 <= hi <= 300 degrees "
                f"(the green and blue hue sectors), got {p['pen_hue_deg']}"
            )


def _tissue_mask(slide: Slide, mpp: float, method: str, params: dict[str, Any]) -> TissueMaskResult:
    level = slide.best_level_for_mpp(mpp)
    out_h, out_w = mask_shape(slide, mpp)
    lmx, lmy = slide.level_mpp(level)
    plan_x = _AxisPlan.make(slide.levels[level].width, out_w, mpp / lmx)
    plan_y = _AxisPlan.make(slide.levels[level].height, out_h, mpp / lmy)
    lv = slide.levels[level]
    arena = _Arena(big=lv.width * lv.height > (1 << 16))
    if method == "otsu":
        grey, _, hist = _resample_level_hist(slide, level, plan_x, plan_y, "luma", params, arena)
        threshold, stats = _grey_threshold(hist, params)
        tissue = _BitMask.threshold(grey, threshold, above=False, arena=arena)
    else:
        grey, n_pen, hist = _resample_level_hist(slide, level, plan_x, plan_y, "saturation", params, arena)
        threshold, stats = _saturation_threshold(hist, params)
        tissue = _BitMask.threshold(grey, threshold, above=True, arena=arena)
        stats["pen_fraction"] = round(n_pen / max(1, plan_x.n_int * plan_y.n_int), 6)
    mask = _postprocess(tissue, mpp, params, out=grey, arena=arena)  # the feature image is not needed any more
    del arena, tissue
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
    remaining factor ``r``. Mask pixel ``j`` overlaps the intermediate (shrunk)
    pixels ``base[j] + t`` for ``t < taps``; ``weights[t, j]`` are their 8-bit
    overlap weights, which with ``fill_weight[j]`` (the part of the mask pixel
    beyond the slide: white) sum to 256.
    """

    n_level: int
    n_out: int
    f: float
    k: int
    r: float
    n_int: int
    identity: bool
    base: np.ndarray  # (n_out,) int64
    weights: np.ndarray  # (taps, n_out) uint16
    fill_weight: np.ndarray  # (n_out,) uint16
    # (j0, j1, m0): mask pixels [j0, j1) have base = m0 + (j - j0), i.e. read a
    # contiguous slice; None when the runs are short (a gather is faster then)
    runs: tuple[tuple[int, int, int], ...] | None = None

    @property
    def taps(self) -> int:
        return self.weights.shape[0]

    def src(self, t: int) -> np.ndarray:
        """Intermediate index of tap ``t`` for every mask pixel, clipped into range (weight 0 beyond)."""
        return np.minimum(self.base + t, self.n_int - 1)

    def needed(self, j0: int, j1: int) -> tuple[int, int]:
        """Range [m0, m1) of intermediate pixels read by mask pixels [j0, j1)."""
        m0 = min(int(self.base[j0]), self.n_int - 1)
        m1 = min(int(self.base[j1 - 1]) + self.taps, self.n_int)
        return m0, max(m1, m0 + 1)

    @classmethod
    def make(cls, n_level: int, n_out: int, f: float) -> "_AxisPlan":
        k = max(1, int(round(f)))
        r = f / k
        n_int = -(-n_level // k)
        j = np.arange(n_out)
        if abs(r - 1.0) < 1e-9:
            # the grids coincide: mask pixel j is intermediate pixel j
            inside = j < n_int
            weights = np.where(inside, 256, 0).astype(np.uint16)[None, :]
            fill = np.where(inside, 0, 256).astype(np.uint16)
            return cls(n_level, n_out, f, k, 1.0, n_int, True, j.astype(np.int64), weights, fill)
        n_taps = int(math.ceil(r)) + 1
        b0, b1 = j * r, (j + 1) * r
        base = np.floor(b0).astype(np.int64)
        s = base[None, :] + np.arange(n_taps)[:, None]
        w = np.clip(np.minimum(s + 1, b1) - np.maximum(s, b0), 0.0, None) / r
        q = np.rint(w * 256).astype(np.int64)
        q[w.argmax(0), j] += 256 - q.sum(0)  # exact sum of 256
        outside = s >= n_int
        fill = (q * outside).sum(0)
        q[outside] = 0
        used = np.flatnonzero(q.any(1))
        q = q[: used[-1] + 1] if used.size else q[:1]
        cuts = np.flatnonzero(np.diff(base - j)) + 1
        runs = None
        if n_out >= 32 * (len(cuts) + 1):
            starts = [0, *cuts.tolist()]
            ends = [*cuts.tolist(), n_out]
            runs = tuple((a, b, int(base[a])) for a, b in zip(starts, ends))
        return cls(n_level, n_out, f, k, r, n_int, False, base, q.astype(np.uint16), fill.astype(np.uint16), runs)


class _Arena:
    """Scratch buffers of one call, carved from blocks of at least ``_ARENA_BYTES``.

    Memory freshly mapped in 4 KB pages costs ~2 µs per page on first touch
    (page faults), a few milliseconds for a handful of MB-sized buffers;
    numpy asks the kernel for huge pages for arrays of 4 MB or more, so
    carving the buffers out of such blocks makes their first touch ~50x
    cheaper. Nothing is kept between calls.
    """

    def __init__(self, big: bool = True) -> None:
        self.big = big  # small jobs: plain np.empty (reused heap memory is cheaper than a fresh block)
        self._block: np.ndarray | None = None
        self._used = 0

    def empty(self, shape, dtype) -> np.ndarray:
        if not self.big:
            return np.empty(shape, dtype)
        dtype = np.dtype(dtype)
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
        n = math.prod(shape) * dtype.itemsize
        start = -(-self._used // 64) * 64
        if self._block is None or start + n > self._block.size:
            self._block = np.empty(max(n + 64, _ARENA_BYTES), np.uint8)
            start = -(-self._block.ctypes.data // 64) * 64 - self._block.ctypes.data
        self._used = start + n
        return self._block[start : start + n].view(dtype).reshape(shape)


def _empty(arena: "_Arena | None", shape, dtype) -> np.ndarray:
    return arena.empty(shape, dtype) if arena is not None else np.empty(shape, dtype)


class _FeatureKernel:
    """The thresholded feature of RGB pixels, in cache-sized blocks with reused buffers.

    ``"luma"``: BT.601 ``(77 R + 150 G + 29 B + 128) >> 8``. ``"saturation"``:
    HSV saturation ``rint(255 (max - min) / max)`` with pen ink set to 0 (see
    :func:`_saturation_features` for the rules). Both are exact (integer
    arithmetic, and a float32 division that is exact to well under the rounding
    margin), i.e. equal to the float64 definitions.

    The RGB bytes are read once, as a strided little-endian uint32 per pixel
    (``R | G << 8 | B << 16``, plus the next pixel's first byte); luma is then
    two multiplies of that word (R and B in separate 16-bit lanes), saturation
    splits it into colour planes. One instance per thread (the buffers).
    """

    def __init__(self, feature: str, params: dict[str, Any], block: int | None = None, arena: "_Arena | None" = None):
        self.feature = feature
        n = self.block = max(1, int(block or _FEATURE_PIXELS))
        self.v = _empty(arena, n, np.uint32)
        self.t = _empty(arena, n, np.uint32)
        self.reject = False
        if feature == "saturation":
            self.reject = bool(params["reject_pen"])
            self.planes = _empty(arena, (3, n), np.uint8)
            self.mx = _empty(arena, n, np.uint8)
            self.d = _empty(arena, n, np.uint8)
            self.fd = _empty(arena, n, np.float32)
            self.fm = _empty(arena, n, np.float32)
            if self.reject:
                lo, hi = (int(round(float(v))) for v in params["pen_hue_deg"])
                self.c_green, self.c_blue = 120 - lo, hi - 240
                self.s_min = int(math.ceil(float(params["pen_min_saturation"]) * 255.0 - 1e-9))
                self.black = int(params["black_max_value"])
                self.x8 = _empty(arena, n, np.uint8)
                self.sec = _empty(arena, n, np.uint8)
                self.z = _empty(arena, n, np.uint16)
                self.t16 = _empty(arena, n, np.uint16)
                self.ok = _empty(arena, n, bool)
                self.cnd = _empty(arena, n, bool)
        elif feature != "luma":
            raise ValueError(f"unknown feature {feature!r}")

    def __call__(self, rgb: np.ndarray, out: np.ndarray, pen_rows: np.ndarray | None = None) -> int:
        """Feature of (h, w, 3) uint8 RGB into ``out`` ((h, w), C-contiguous); returns the pen pixels.

        ``pen_rows`` (h,), if given, receives the pen pixels of every row.
        """
        h, w = rgb.shape[:2]
        flat = np.ascontiguousarray(rgb).reshape(-1)
        if pen_rows is None:
            return self.run(flat, 3, 0, h * w, out.reshape(-1))
        rows = max(1, self.block // max(1, w))
        pen = 0
        for y in range(0, h, rows):
            n = min(rows, h - y)
            dst = out[y : y + n].reshape(-1)
            if n == 1:
                pen_rows[y] = self.run(flat, 3, y * w, w, dst)
            else:  # n * w <= block: one block
                pen_rows[y : y + n] = 0
                self.run(flat, 3, y * w, n * w, dst, pen_rows[y : y + n], w)
            pen += int(pen_rows[y : y + n].sum())
        return pen

    def run(
        self, buf: np.ndarray, stride: int, start: int, count: int, out: np.ndarray, counts=None, w: int = 0
    ) -> int:
        """Feature of pixels ``start .. start + count - 1`` into ``out``; returns the pen pixels.

        Pixel ``p`` is the bytes ``buf[stride * p : stride * p + 3]`` (R, G, B); ``buf`` is
        1-D contiguous uint8, ``stride >= 3``. ``out`` has ``count`` elements in pixel
        order: 1-D, or N-D (any strides) when blocks of whole ``out[i]`` are processed.
        """
        pen = 0
        if out.ndim == 1:
            for p0 in range(start, start + count, self.block):
                n = min(self.block, start + count - p0)
                pen += self._block(buf, p0, n, stride, out[p0 - start : p0 - start + n], counts, w)
            return pen
        per = out[0].size
        if per > self.block:
            for i in range(out.shape[0]):
                pen += self.run(buf, stride, start + i * per, per, out[i])
            return pen
        step = self.block // per
        for i in range(0, out.shape[0], step):
            o = out[i : i + step]
            pen += self._block(buf, start + i * per, o.size, stride, o, None, 0)
        return pen

    def _block(self, flat: np.ndarray, p0: int, n: int, stride: int, o: np.ndarray, counts, w: int) -> int:
        # pixels [p0, p0 + m) through the uint32 view; a last pixel with no byte
        # after it in the buffer is done on its own
        m = n - 1 if stride * (p0 + n - 1) + 4 > flat.size else n
        v, t = self.v[:n], self.t[:n]
        np.copyto(v[:m], np.ndarray((m,), "<u4", buffer=flat, offset=stride * p0, strides=(stride,)))
        if m < n:
            q = stride * (p0 + m)
            v[m] = int(flat[q]) | int(flat[q + 1]) << 8 | int(flat[q + 2]) << 16
        if self.feature == "luma":
            np.bitwise_and(v, 0xFF00FF, out=t)  # R | B << 16
            v &= 0xFF00  # G << 8
            t *= 0x4D001D  # bits 16..31: 77 R + 29 B (29 R below it, no carry)
            v *= 0x9600  # 150 G << 16
            t += v
            t += 0x800000  # + 128 << 16
            t >>= 24
            np.copyto(o, t.reshape(o.shape), casting="unsafe")
            return 0
        r, g, b = self.planes[:, :n]
        np.copyto(r, v, casting="unsafe")  # low byte
        v >>= 8
        np.copyto(g, v, casting="unsafe")
        v >>= 8
        np.copyto(b, v, casting="unsafe")
        mx, d = self.mx[:n], self.d[:n]
        np.maximum(r, g, out=mx)
        np.maximum(mx, b, out=mx)
        np.minimum(r, g, out=d)
        np.minimum(d, b, out=d)
        np.subtract(mx, d, out=d)  # d = max - min
        # 255 d / max in float32: the product is exact and the quotient is
        # correctly rounded, and a non-integer 255 d / max is >= 1 / 510 from
        # the nearest half-integer, so rint gives the exact rounding (ties to even)
        fd, fm = self.fd[:n], self.fm[:n]
        np.copyto(fd, d)
        fd *= np.float32(255)
        np.copyto(fm, mx)
        fm += np.float32(1e-30)  # max == 0 (then d == 0) gives 0; no effect on max >= 1
        fd /= fm
        # + 2^23 rounds to an integer (to nearest, ties to even: np.rint) held in the
        # low mantissa bits: the float's bits are 0x4B000000 + value
        fd += np.float32(1 << 23)
        bits = fd.view(np.uint32)
        if not self.reject:
            np.copyto(o, bits.reshape(o.shape), casting="unsafe")
            return 0
        # coloured pen, R not the maximum: green sector (G max) 60 (B - R) + (120 - lo) d >= 0,
        # blue sector (B max) 60 (G - R) + (hi - 240) d >= 0. With X = min(G, B) both read
        # 60 (X - R) + c d >= 0, |value| <= 30600: wrapping uint16 arithmetic, sign as int16
        x8, sec, z, t16 = self.x8[:n], self.sec[:n], self.z[:n], self.t16[:n]
        np.minimum(g, b, out=x8)
        np.subtract(x8, r, out=z, dtype=np.uint16)
        z *= np.uint16(60)
        np.multiply(d, self.c_blue & 0xFFFF, out=t16, dtype=np.uint16)
        z += t16
        if self.c_green != self.c_blue:
            np.greater_equal(g, b, out=sec.view(bool))  # green sector
            np.negative(sec, out=sec)  # 0 / 255
            sec &= d
            np.multiply(sec, (self.c_green - self.c_blue) & 0xFFFF, out=t16, dtype=np.uint16)
            z += t16
        ok, cnd = self.ok[:n], self.cnd[:n]
        np.greater_equal(z.view(np.int16), 0, out=ok)
        np.not_equal(r, mx, out=cnd)
        ok &= cnd
        np.greater_equal(bits, 0x4B000000 + self.s_min, out=cnd)  # saturation >= s_min
        ok &= cnd
        if self.s_min == 0:
            np.greater(d, 0, out=cnd)
            ok &= cnd
        np.less(mx, self.black, out=cnd)  # black ink
        ok |= cnd
        np.subtract(ok.view(np.uint8), 1, out=z, dtype=np.uint16)  # 0 on pen, 0xFFFF elsewhere
        np.bitwise_and(bits, z, out=bits)  # the low bits hold the saturation
        np.copyto(o, bits.reshape(o.shape), casting="unsafe")
        if counts is not None:
            counts[...] = np.count_nonzero(ok.reshape(-1, w), axis=1)
        return int(np.count_nonzero(ok))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma ``(77 R + 150 G + 29 B + 128) >> 8`` of (h, w, 3) uint8 -> (h, w) uint8."""
    out = np.empty(rgb.shape[:2], np.uint8)
    _FeatureKernel("luma", {})(rgb, out)
    return out


def _saturation_features(rgb: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation ``rint(255 (max - min) / max)`` of (h, w, 3) uint8 RGB, pen ink set to 0.

    Pen ink (when ``reject_pen``): ``max(R, G, B) < black_max_value`` (black
    marker, dark debris), or saturation >= ``pen_min_saturation`` with an HSV
    hue in ``pen_hue_deg`` = (lo, hi) degrees, 60 <= lo <= 180 <= hi <= 300:
    the green sector (G is the maximum, hue = 120 + 60 (B - R) / d >= lo) or
    the blue sector (B is the maximum, hue = 240 + 60 (R - G) / d <= hi) --
    where blue and green marker inks are and H&E stains are not. Exact
    arithmetic (see :class:`_FeatureKernel`), in cache-sized blocks.

    Returns (saturation uint8 (h, w), pen pixels per row (h,) int64).
    """
    h, w = rgb.shape[:2]
    out = np.empty((h, w), np.uint8)
    pen_rows = np.zeros(h, np.int64)
    _FeatureKernel("saturation", p)(rgb, out, pen_rows)
    return out, pen_rows


def _box_shrink_rgb(rgb: np.ndarray, kx: int, ky: int, out_w: int, out_h: int) -> np.ndarray:
    """Means of ``kx x ky`` RGB blocks from the origin, white padding to ``out_h*ky x out_w*kx``.

    libvips ``shrink`` on uchar (each mean within one grey level of the exact
    mean: libvips rounds per axis). Requires ``kx > 1 or ky > 1``.
    """
    import pyvips

    v = pyvips.Image.new_from_array(rgb)
    if v.width != out_w * kx or v.height != out_h * ky:
        v = v.embed(0, 0, out_w * kx, out_h * ky, extend="background", background=[WHITE] * 3)
    return v.shrink(kx, ky).numpy()


def _histogram(img: np.ndarray) -> np.ndarray:
    """256-bin histogram (int64) of a uint8 image.

    Large images: libvips ``hist_find`` on the pixels seen as a 16-band image,
    i.e. 16 interleaved partial histograms (runs of equal values then do not
    serialise on one counter), summed; no int64 copy of the image.
    """
    flat = np.ascontiguousarray(img).reshape(-1)
    if flat.size < (1 << 16):
        return np.bincount(flat, minlength=256)
    if flat.size < _HIST_VIPS_PIXELS:
        # pairs of pixels as uint16: half the (int64-converting) bincount work
        m = flat.size // 2 * 2
        pairs = np.bincount(flat[:m].view(np.uint16), minlength=1 << 16).reshape(256, 256)
        hist = pairs.sum(0) + pairs.sum(1)
        if m < flat.size:
            hist[flat[-1]] += 1
        return hist
    import pyvips

    bands, width = 16, 1024
    m = flat.size // (bands * width) * (bands * width)
    v = pyvips.Image.new_from_memory(flat[:m].data, width, m // (bands * width), bands, "uchar")
    hist = v.hist_find().numpy().reshape(256, bands).astype(np.int64).sum(1)
    if m < flat.size:
        hist += np.bincount(flat[m:], minlength=256)
    return hist


class _Resampler:
    """Streams the intermediate (box-shrunk) RGB rows onto the mask grid.

    :meth:`push` takes the next intermediate rows, in order, in pieces of any
    size. The feature of every intermediate row is computed once (uint16, into
    a window of rows), and the mask rows are finished in bands of about
    ``_BAND_PIXELS`` pixels as soon as all the rows a band reads are in the
    window: y taps (weighted sums of whole rows), then x taps (weighted sums
    of gathered columns), see :class:`_AxisPlan`. The result does not depend
    on how the rows are split into pieces. The histogram of the finished mask
    rows is accumulated in ``hist``.
    """

    def __init__(
        self,
        plan_x: _AxisPlan,
        plan_y: _AxisPlan,
        feature: str,
        params: dict[str, Any],
        out: np.ndarray,
        arena: "_Arena | None" = None,
        tile_rows: int = 0,
    ):
        self.px, self.py, self.out = plan_x, plan_y, out
        w_int, w_out, n_out, n_int = plan_x.n_int, plan_x.n_out, plan_y.n_out, plan_y.n_int
        # smaller blocks and bands for small levels: their buffers are fresh memory,
        # whose first touch (the kernel zeroing pages) costs about as much as using it
        block = min(_FEATURE_PIXELS, max(1 << 15, n_int * w_int // _SPLIT), n_int * w_int)
        self.kernel = _FeatureKernel(feature, params, block, arena)
        self.lo = self.hi = 0  # the window holds intermediate rows [lo, hi)
        self.done = 0  # mask rows [0, done) are finished
        self.pen = 0
        self.hist = np.zeros(256, np.int64)
        self._hist_from = 0
        # mask row i reads intermediate rows first[i] .. need_end[i] - 1 (clipped into the level)
        self.first = np.minimum(plan_y.base, n_int - 1)
        self.need_end = np.minimum(plan_y.base + plan_y.taps, n_int)
        b = max(1, min(_BAND_PIXELS, max(1 << 15, n_out * w_out // _SPLIT)) // max(w_int, w_out, 1))
        self.band = b = -(-n_out // max(1, round(n_out / b)))  # bands of equal size
        starts = np.arange(0, n_out, b)
        span = int((self.need_end[np.minimum(starts + b, n_out) - 1] - self.first[starts]).max())
        cap = span + max(1, _BLOCK_PIXELS // w_int, tile_rows)
        if n_int * w_int <= _FEATURE_PIXELS:
            cap = max(cap, n_int)  # a small level in one go
        self.win = _empty(arena, (cap, w_int), np.uint16)
        rows = min(b, n_out)
        if not plan_y.identity:
            self.src_y = [plan_y.src(t) for t in range(plan_y.taps)]
            # with long runs: where the rows read by tap t stop being consecutive
            self.y_breaks = None
            if plan_y.runs is not None:
                self.y_breaks = [np.flatnonzero(np.diff(s) != 1) + 1 for s in self.src_y]
            self.wy = plan_y.weights[:, :, None]
            # rows with a part past the slide: + fill * WHITE (else only the rounding 128)
            self.fill_y = plan_y.fill_weight * np.uint16(WHITE)
            self.fill_y_count = np.concatenate([[0], np.cumsum(plan_y.fill_weight > 0)])
            self.yacc = _empty(arena, (rows, w_int), np.uint16)
            self.ytmp = _empty(arena, (rows, w_int), np.uint16)
            self.yrows = _empty(arena, (rows, w_int), np.uint16)
        if not plan_x.identity:
            self.xacc = _empty(arena, (rows, w_out), np.uint16)
            self.xtmp = _empty(arena, (rows, w_out), np.uint16)
            self.xg = _empty(arena, (rows, w_out), np.uint16)
            # columns with a part past the slide: the last ones (white fill)
            cols = np.flatnonzero(plan_x.fill_weight)
            self.fill_x_from = int(cols[0]) if cols.size else w_out
            self.fill_x = plan_x.fill_weight[self.fill_x_from :] * np.uint16(WHITE)
            if plan_x.runs is not None:
                # tap 0 by slices: columns [j0, j1) <- source columns [a, b) (long runs);
                # tap t reads tap 0 t columns further on, except near the ends of the
                # runs (x_fix[t], a small gather from x_fix_src[t])
                self.x_slices = []
                for j0, j1, m0 in plan_x.runs:
                    e = min(m0 + (j1 - j0), w_int)
                    if e > m0:
                        self.x_slices.append((m0, e))
                self.x_width = sum(e - m0 for m0, e in self.x_slices)
                self._x_views = None  # (source views, output view) for a full band of y-stage output
                base = plan_x.base
                self.x_fix, self.x_fix_src, self.x_fix_w = [None], [None], [None]
                for t in range(1, plan_x.taps):
                    fix = np.flatnonzero(base[t:] - base[:-t] != t) if w_out > t else np.zeros(0, np.int64)
                    fix = np.concatenate([fix, np.arange(max(0, w_out - t), w_out)])
                    self.x_fix.append(fix)
                    self.x_fix_src.append(np.minimum(base[fix] + t, w_int - 1))
                    self.x_fix_w.append(plan_x.weights[t, fix])
            else:
                self.src_x = [plan_x.src(t) for t in range(plan_x.taps)]

    def push(self, buf: np.ndarray, stride: int, n_rows: int) -> None:
        """Intermediate rows ``[hi, hi + n_rows)``: their pixel ``p`` (row-major) is ``buf[stride * p :][:3]``."""
        y = 0
        w = self.px.n_int
        while y < n_rows:
            dst = self._space(n_rows - y)
            n = dst.shape[0]
            self.pen += self.kernel.run(buf, stride, y * w, n * w, dst.reshape(-1))
            self._advance(n)
            y += n
        self._update_hist()

    def push_tiles(self, tiles: np.ndarray, n_x: int, rows: int) -> None:
        """Intermediate rows ``[hi, hi + rows)`` as rows of stored tiles (n, seg_h, seg_w, 3), row-major.

        The feature is computed straight from the tiles (no copy into rows):
        the window rows are seen in tile order. The last tile row may be cut
        (``rows`` not a multiple of ``seg_h``) and the last tile column may reach
        past the level's width: those tiles go through a small scratch array.
        """
        seg_h, seg_w = tiles.shape[1:3]
        w = self.px.n_int
        n_y = -(-rows // seg_h)
        full_x = min(n_x, w // seg_w)
        full_y = rows // seg_h
        dst = self._space(rows)
        assert dst.shape[0] == rows, "the window holds the tile rows"
        if full_x and full_y:
            view = dst[: full_y * seg_h, : full_x * seg_w].reshape(full_y, seg_h, full_x, seg_w).transpose(0, 2, 1, 3)
            src = tiles[: full_y * n_x].reshape(full_y, n_x, seg_h, seg_w, 3)
            if full_x == n_x:
                self.pen += self.kernel.run(src.reshape(-1), 3, 0, view.size, view)
            else:
                for j in range(full_y):  # tile rows are not contiguous without their last tile
                    t = src[j, :full_x].reshape(-1)
                    self.pen += self.kernel.run(t, 3, 0, full_x * seg_h * seg_w, view[j])
        for j in range(n_y):
            r0, r1 = j * seg_h, min((j + 1) * seg_h, rows)
            for i in range(n_x):
                if j < full_y and i < full_x:
                    continue
                c0, c1 = i * seg_w, min((i + 1) * seg_w, w)
                if c1 <= c0:
                    break
                part = np.ascontiguousarray(tiles[j * n_x + i, : r1 - r0, : c1 - c0])
                self.pen += self.kernel.run(part.reshape(-1), 3, 0, part.size // 3, dst[r0:r1, c0:c1])
        self._advance(rows)
        self._update_hist()

    def _space(self, n: int) -> np.ndarray:
        """Window rows for up to ``n`` next intermediate rows (fewer if it is full)."""
        # drop the window rows that no unfinished mask row reads
        keep = min(int(self.first[self.done]), self.hi) if self.done < self.py.n_out else self.hi
        if keep > self.lo:
            self.win[: self.hi - keep] = self.win[keep - self.lo : self.hi - self.lo]
            self.lo = keep
        held = self.hi - self.lo
        return self.win[held : held + min(n, self.win.shape[0] - held)]

    def _advance(self, n: int) -> None:
        """``n`` more intermediate rows are in the window: finish the mask bands they complete."""
        self.hi += n
        n_out = self.py.n_out
        while self.done < n_out:
            i1 = min(self.done + self.band, n_out)
            if self.need_end[i1 - 1] > self.hi:
                break
            self._band(self.done, i1)
            self.done = i1

    def _update_hist(self, final: bool = False) -> None:
        """Histogram of the finished rows not counted yet (in pieces of at least ``_HIST_PIXELS``)."""
        if self.done > self._hist_from and (final or (self.done - self._hist_from) * self.px.n_out >= _HIST_PIXELS):
            self.hist += _histogram(self.out[self._hist_from : self.done])
            self._hist_from = self.done

    def _band(self, i0: int, i1: int) -> None:
        """Finish mask rows [i0, i1), all of whose taps are in the window."""
        n = i1 - i0
        py = self.py
        if py.identity:
            inside = max(0, min(i1, py.n_int) - i0)
            if inside < n:
                self.out[i0 + inside : i1] = WHITE
            if inside:
                self._x_stage(self.win[i0 - self.lo : i0 - self.lo + inside], i0)
            return
        acc, tmp = self.yacc[:n], self.ytmp[:n]
        for t in range(py.taps):
            src, dst = self.src_y[t], acc if t == 0 else tmp
            if self.y_breaks is not None:
                # pieces of consecutive rows: views of the window, no copy
                brk = self.y_breaks[t]
                cuts = [i0, *brk[np.searchsorted(brk, i0, "right") : np.searchsorted(brk, i1, "left")].tolist(), i1]
                for a, b in zip(cuts[:-1], cuts[1:]):
                    r0 = int(src[a]) - self.lo
                    np.multiply(self.win[r0 : r0 + b - a], self.wy[t, a:b], out=dst[a - i0 : b - i0])
            else:
                rows = np.take(self.win, src[i0:i1] - self.lo, axis=0, out=self.yrows[:n])
                np.multiply(rows, self.wy[t, i0:i1], out=dst)
            if t:
                acc += tmp
        if self.fill_y_count[i1] > self.fill_y_count[i0]:
            acc += self.fill_y[i0:i1, None]
        acc += 128
        acc >>= 8
        self._x_stage(acc, i0)

    def _x_sources(self, rows: np.ndarray) -> list[np.ndarray]:
        """Views of the source column runs of ``rows`` (cached for the full-band buffer)."""
        full = self.yacc if not self.py.identity else None
        if full is not None and rows.shape[0] == full.shape[0] and rows.ctypes.data == full.ctypes.data:
            if self._x_views is None:
                self._x_views = [full[:, a:b] for a, b in self.x_slices]
            return self._x_views
        return [rows[:, a:b] for a, b in self.x_slices]

    def _x_stage(self, rows: np.ndarray, i0: int) -> None:
        """x taps of the y-resampled rows (uint16) into mask rows [i0, i0 + len(rows))."""
        n = rows.shape[0]
        px = self.px
        dst = self.out[i0 : i0 + n]
        if px.identity:
            inside = min(px.n_out, px.n_int)
            np.copyto(dst[:, :inside], rows[:, :inside], casting="unsafe")
            dst[:, inside:] = WHITE
            return
        acc, tmp, g = self.xacc[:n], self.xtmp[:n], self.xg[:n]
        for t in range(px.taps):
            w = px.weights[t]
            if px.runs is None:
                np.take(rows, self.src_x[t], axis=1, out=g)
                np.multiply(g, w, out=acc if t == 0 else tmp)
            elif t == 0:
                np.concatenate(self._x_sources(rows), axis=1, out=g[:, : self.x_width])
                np.multiply(g, w, out=acc)
            else:
                np.multiply(g[:, t:], w[:-t], out=tmp[:, :-t])
                tmp[:, self.x_fix[t]] = rows[:, self.x_fix_src[t]] * self.x_fix_w[t]
            if t:
                acc += tmp
        acc += 128
        if self.fill_x_from < acc.shape[1]:
            acc[:, self.fill_x_from :] += self.fill_x
        acc >>= 8
        np.copyto(dst, acc, casting="unsafe")


def _resample_level(
    slide: Slide, level: int, plan_x: _AxisPlan, plan_y: _AxisPlan, feature: str, params: dict[str, Any]
) -> tuple[np.ndarray, int]:
    """Area-average a feature of ``level`` onto the mask grid -> ((n_out_y, n_out_x) uint8, pen pixels).

    ``feature`` is ``"luma"`` (grey level) or ``"saturation"`` (HSV saturation
    with pen ink zeroed, see :func:`_saturation_features`); the pen count is 0
    for luma.
    """
    out, pen, _ = _resample_level_hist(slide, level, plan_x, plan_y, feature, params)
    return out, pen


def _segment_size(slide: Slide, level: int) -> tuple[int, int] | None:
    """(width, height) of the stored tiles (or strips) of a TIFF level; None for other slides.

    A request of exactly one stored JPEG tile is decoded by
    :class:`~mask_first.slides.TiffSlide` straight into the caller's array, with
    no intermediate array, cache entry or copy: much cheaper than a region that
    spans tiles (what ``read_level`` is).
    """
    size = slide.stored_tile_size(level) if hasattr(slide, "stored_tile_size") else None
    if size is None:
        return None
    seg_w, seg_h = int(size[0]), int(size[1])
    return (seg_w, seg_h) if seg_w > 0 and seg_h > 0 else None


class _StripReader:
    """Reads whole-row strips of a level into reused, padded buffers.

    Strip ``k`` holds level rows ``[k rows, (k + 1) rows)`` (clipped) in columns
    ``[0, width)`` of a buffer ``pad_w >= width`` columns wide; the columns past
    the level and the rows up to the next multiple of ``row_mult`` past the
    level are white (box-shrink padding). With stored tiles ``seg`` = (w, h)
    the strips are whole tile rows, requested tile by tile (decoded straight
    into a tile buffer, then copied into the strip, or with ``tiles_only``
    handed over as they are); otherwise one region per strip. ``read`` runs on
    the decoding thread: strip ``k`` uses buffer ``k % n_buffers``.
    """

    def __init__(
        self,
        slide: Slide,
        level: int,
        rows: int,
        seg,
        n_buffers: int,
        pad_w: int,
        row_mult: int,
        arena=None,
        tiles_only: bool = False,
    ):
        self.slide, self.level, self.rows, self.seg, self.row_mult = slide, level, rows, seg, row_mult
        self.tiles_only = tiles_only and seg is not None  # hand the tiles over as they are
        lv = slide.levels[level]
        self.width, self.height = lv.width, lv.height
        h = -(-min(rows, self.height) // row_mult) * row_mult
        self.strips = []
        for _ in range(0 if self.tiles_only else n_buffers):
            s = _empty(arena, (h, pad_w, 3), np.uint8)
            s[:, self.width :] = WHITE
            self.strips.append(s)
        self.tiles: list[np.ndarray] = []
        if seg is not None:
            seg_w, seg_h = seg
            self.n_x = -(-self.width // seg_w)
            n = self.n_x * -(-min(rows, self.height) // seg_h)
            # the tiles are only the reader's, unless handed over as they are
            n_tile_buffers = n_buffers if self.tiles_only else 1
            self.tiles = [_empty(arena, (n, seg_h, seg_w, 3), np.uint8) for _ in range(n_tile_buffers)]
        self.starts = list(range(0, self.height, rows))

    def read(self, k: int):
        """Strip ``k`` as (h', pad_w, 3) uint8, h' = its rows rounded up to ``row_mult``.

        With ``tiles_only``: (tiles (n_tiles, seg_h, seg_w, 3) in row-major tile order, rows).
        """
        y0 = self.starts[k]
        h = min(self.rows, self.height - y0)
        if self.tiles_only:
            return self._read_tiles(k, y0, h), h
        hp = -(-h // self.row_mult) * self.row_mult
        strip = self.strips[k % len(self.strips)][:hp]
        strip[h:] = WHITE
        if self.seg is None:
            self.slide.read_regions_into(
                self.level, np.array([0]), np.array([y0]), self.width, h, strip[None, :h, : self.width]
            )
            return strip
        seg_w, seg_h = self.seg
        n_x, n_y = self.n_x, -(-h // seg_h)
        tiles = self._read_tiles(k, y0, h)
        for j in range(n_y):
            r0, r1 = j * seg_h, min((j + 1) * seg_h, h)
            for i in range(n_x):
                c0, c1 = i * seg_w, min((i + 1) * seg_w, self.width)
                strip[r0:r1, c0:c1] = tiles[j * n_x + i, : r1 - r0, : c1 - c0]
        return strip

    def _read_tiles(self, k: int, y0: int, h: int) -> np.ndarray:
        seg_w, seg_h = self.seg
        n_x, n_y = self.n_x, -(-h // seg_h)
        tiles = self.tiles[k % len(self.tiles)][: n_x * n_y]
        xs = np.tile(np.arange(n_x) * seg_w, n_y)
        ys = np.repeat(y0 + np.arange(n_y) * seg_h, n_x)
        self.slide.read_regions_into(self.level, xs, ys, seg_w, seg_h, tiles)
        return tiles


def _log2(k: int) -> int | None:
    """log2 of a power of two, else None."""
    return k.bit_length() - 1 if k > 0 and k & (k - 1) == 0 else None


class _BoxShrink:
    """Means of ``kx x ky`` RGB blocks of padded strips (see :func:`_box_shrink_rgb`).

    For power-of-two factors up to 16 in numpy, with libvips' rounding (vertical means
    ``(sum + ky / 2) / ky`` first, then horizontal ones): the vertical step
    works on whole rows, the horizontal one on the row bytes shifted by whole
    pixels, so the mean of block ``m`` ends up at byte ``3 kx m`` and the
    result is handed on as pixels with a byte stride of ``3 kx`` (no gather).
    A factor of 2 is a rounded-up average of two bytes, ``(a | b) - ((a ^ b) >> 1)``.
    Other factors go through libvips ``shrink``.
    """

    def __init__(self, kx: int, ky: int, n_int_x: int, arena: "_Arena | None" = None):
        self.kx, self.ky, self.n_int_x, self.arena = kx, ky, n_int_x, arena
        # numpy for powers of two up to 16 (in strips it beats libvips); libvips otherwise
        self.numpy = _log2(kx) is not None and _log2(ky) is not None and max(kx, ky) <= 16
        self._bufs: dict[tuple[str, int], np.ndarray] = {}

    def _buf(self, name: str, n: int, dtype) -> np.ndarray:
        b = self._bufs.get((name, 0))
        if b is None or b.size < n:
            b = self._bufs[(name, 0)] = _empty(self.arena, n, dtype)
        return b[:n]

    def __call__(self, strip: np.ndarray) -> tuple[np.ndarray, int, int]:
        """(bytes, stride, rows) of the intermediate rows of a padded strip (rows a multiple of ky)."""
        kx, ky = self.kx, self.ky
        rows = strip.shape[0] // ky
        if not self.numpy:
            small = _box_shrink_rgb(strip, kx, ky, self.n_int_x, rows)
            return np.ascontiguousarray(small).reshape(-1), 3, rows
        row_bytes = strip.shape[1] * 3
        if ky == 1:
            v = strip.reshape(-1)
        else:
            v = self._buf("v", rows * row_bytes, np.uint8)
            v2 = v.reshape(rows, row_bytes)
            s = strip.reshape(rows, ky, row_bytes)
            if ky == 2:
                _avg_up(s[:, 0], s[:, 1], v2, self._buf("t", rows * row_bytes, np.uint8).reshape(rows, row_bytes))
            else:
                acc = self._buf("acc", rows * row_bytes, np.uint16).reshape(rows, row_bytes)
                np.add.reduce(s, axis=1, dtype=np.uint16, out=acc)
                acc += np.uint16(ky // 2)
                acc >>= np.uint16(_log2(ky))
                np.copyto(v2, acc, casting="unsafe")
        if kx == 1:
            return v, 3, rows
        n = v.size
        m = n - 3 * (kx - 1)  # block means are at bytes 3 kx j (+ 0, 1, 2) < m
        h = self._buf("h", n, np.uint8)
        if kx == 2:
            _avg_up(v[:m], v[3 : 3 + m], h[:m], self._buf("t", m, np.uint8))
        else:
            # sums of 2, 4, ... kx pixels by doubling: acc[j] = sum of v[j + 3 t], t < width
            acc = self._buf("acc", n, np.uint16)
            np.add(v[: n - 3], v[3:], out=acc[: n - 3], dtype=np.uint16)
            width, end = 2, n - 3
            while width < kx:
                end -= 3 * width
                acc[:end] += acc[3 * width : 3 * width + end]
                width *= 2
            acc = acc[:m]
            acc += np.uint16(kx // 2)
            acc >>= np.uint16(_log2(kx))
            np.copyto(h[:m], acc, casting="unsafe")
        return h, 3 * kx, rows


def _avg_up(a: np.ndarray, b: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
    """out = (a + b + 1) >> 1 on uint8, without widening."""
    np.bitwise_or(a, b, out=out)
    np.bitwise_xor(a, b, out=tmp)
    tmp >>= np.uint8(1)
    out -= tmp


def _resample_level_hist(
    slide: Slide,
    level: int,
    plan_x: _AxisPlan,
    plan_y: _AxisPlan,
    feature: str,
    params: dict[str, Any],
    arena: _Arena | None = None,
) -> tuple[np.ndarray, int, np.ndarray]:
    """:func:`_resample_level` plus the 256-bin histogram of the result.

    A level of at most ``_PIPELINE_PIXELS`` pixels is read in one piece. A
    bigger level is read in strips of about ``_STRIP_PIXELS`` level pixels
    (whole rows, whole box-shrink blocks, whole stored tiles when that keeps
    them under ``4 * _STRIP_PIXELS``): the next strip is decoded on a second
    thread while this one is processed, into one of two reused buffers, so
    decoding and computing overlap and memory stays bounded. The result does
    not depend on the strips. On tiled TIFF levels the pixels are requested
    tile by tile (see :func:`_segment_size`).
    """
    lv = slide.levels[level]
    width, height = lv.width, lv.height
    out = np.empty((plan_y.n_out, plan_x.n_out), np.uint8)
    kx, ky = plan_x.k, plan_y.k
    arena = arena if arena is not None else _Arena()
    seg = _segment_size(slide, level)
    unit = ky
    if seg is not None:
        unit = seg[1] * ky // math.gcd(seg[1], ky)
        if unit * width > 4 * _STRIP_PIXELS or seg[1] < 8:
            seg, unit = None, ky  # tiles too tall for a strip, or tiny stored strips
    # without a box shrink the features are computed straight from the stored tiles
    tiles_only = seg is not None and kx == 1 and ky == 1
    pipelined = width * height > _PIPELINE_PIXELS
    rows = max(unit, int(round(_STRIP_PIXELS / max(1, width) / unit)) * unit) if pipelined else height
    res = _Resampler(plan_x, plan_y, feature, params, out, arena, min(rows, height) if tiles_only else 0)
    shrink = _BoxShrink(kx, ky, plan_x.n_int, arena) if kx > 1 or ky > 1 else None

    def push(piece) -> None:
        if tiles_only:
            tiles, h = piece
            res.push_tiles(tiles, reader.n_x, h)
        elif shrink is None:
            res.push(piece.reshape(-1), 3, piece.shape[0])
        else:
            res.push(*shrink(piece))

    pad_w = plan_x.n_int * kx
    if not pipelined:
        reader = _StripReader(slide, level, height, seg, 1, pad_w, ky, arena, tiles_only)
        push(reader.read(0))
    else:
        reader = _StripReader(slide, level, rows, seg, 2, pad_w, ky, arena, tiles_only)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(reader.read, 0)
            for k in range(len(reader.starts)):
                piece = pending.result()
                if k + 1 < len(reader.starts):
                    pending = pool.submit(reader.read, k + 1)  # decode ahead into the other buffer
                push(piece)
    assert res.done == plan_y.n_out
    res._update_hist(final=True)
    return out, res.pen, res.hist


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
    if classes < 2:
        raise ValueError("classes must be >= 2")
    if h.size < classes:
        raise ValueError(f"need at least {classes} bins, got {h.size}")
    if np.any(h < 0) or not np.all(np.isfinite(h)):
        raise ValueError("histogram counts must be finite and >= 0")
    nz = np.flatnonzero(h)
    if nz.size >= classes and (nz[0] > 0 or nz[-1] < h.size - 1):
        # the optimum never has an empty class when there are enough distinct
        # values (splitting a class strictly increases the criterion), so the
        # search can be restricted to the occupied span: much faster
        sub = multi_otsu_thresholds(h[nz[0] : nz[-1] + 1], classes)
        return tuple(int(t) + int(nz[0]) for t in sub)
    n_bins = h.size
    P = np.concatenate([[0.0], np.cumsum(h)])
    S = np.concatenate([[0.0], np.cumsum(h * np.arange(n_bins))])
    # class boundaries (b: classes split before bin b). Boundaries inside a run of
    # empty bins have the same P and S, so every criterion value they give is
    # also given by the first of the run, which the search prefers (argmax
    # takes the first maximum). With enough non-empty bins the optimum has no
    # empty class, so only the first boundaries of the runs need searching.
    pos = np.concatenate([[0], nz + 1]) if nz.size >= classes else np.arange(n_bins + 1)
    P, S = P[pos], S[pos]
    n_pos = pos.size - 1

    def segments(b, a) -> np.ndarray:
        """M[b, a] = S^2 / P of the bins [a, b) for a < b (0 if empty); -inf for a >= b (broadcast)."""
        dP = np.subtract(P[b], P[a])
        np.maximum(dP, 1e-300, out=dP)  # empty segments have dS = 0 too: 0 / tiny = 0
        m = np.subtract(S[b], S[a])
        with np.errstate(over="ignore", invalid="ignore"):
            m *= m
            m /= dP
        np.copyto(m, -np.inf, where=np.greater_equal(a, b))  # no segment [a, b) with a >= b
        return m

    idx = np.arange(n_pos + 1)
    # best[b] = best criterion for splitting the bins before boundary b into j classes
    best = segments(idx, 0)
    back = []
    for _ in range(classes - 2):
        # total[b, a] = M[b, a] + best[a]: j + 1 classes before a, one on [a, b). In
        # blocks of rows b, over the columns a < b only (the rest is -inf): small,
        # cache-resident arrays; the same per-element arithmetic as segments()
        arg = np.zeros(n_pos + 1, np.int64)
        new_best = np.full(n_pos + 1, -np.inf)
        for b0 in range(0, n_pos + 1, _OTSU_ROWS):
            b1 = min(b0 + _OTSU_ROWS, n_pos + 1)
            total = segments(idx[b0:b1, None], idx[None, :b1])
            total += best[:b1]
            a = np.argmax(total, axis=1)
            arg[b0:b1] = a
            new_best[b0:b1] = total[np.arange(b1 - b0), a]
        back.append(arg)
        best = new_best
    # the last class ends at the last boundary: only that row is needed
    back.append({n_pos: int(np.argmax(segments(n_pos, idx) + best))})
    # backtrack the class boundaries from the last one
    bounds = []
    b = n_pos
    for arg in reversed(back):
        b = int(arg[b])
        bounds.append(int(pos[b]))
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


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _grey_threshold(hist: np.ndarray, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The grey threshold (tissue = grey <= threshold) and stats from the 256-bin histogram."""
    classes = int(p["classes"])
    thresholds = multi_otsu_thresholds(hist, classes)
    edges = [-1, *thresholds, 255]
    stats = [_class_stats(hist, edges[k] + 1, edges[k + 1]) for k in range(classes)]
    # background = the top class, plus classes just below it whose mean is
    # within min_contrast of the class above (a noisy glass peak split in two)
    top = classes - 1
    while top > 0 and stats[top - 1][0] > 0 and stats[top][1] - stats[top - 1][1] < p["min_contrast"]:
        top -= 1
    threshold = edges[top]
    bg_n, bg_mean = _class_stats(hist, threshold + 1, 255)
    fg_n, fg_mean = _class_stats(hist, 0, threshold) if threshold >= 0 else (0.0, float("nan"))
    trusted = (
        top > 0
        and fg_n > 0
        and bg_n > 0
        and bg_mean >= p["min_background_grey"]
        and bg_mean - fg_mean >= p["min_contrast"]
    )
    if not trusted:
        threshold = int(math.floor(p["fallback_grey"]))
    return threshold, {
        "otsu_thresholds": list(thresholds),
        "threshold": threshold,
        "fallback": not trusted,
        "background_mean": _finite(bg_mean),
        "tissue_mean": _finite(fg_mean),
    }


def _saturation_threshold(hist: np.ndarray, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The saturation threshold (tissue = saturation > threshold) and stats from the histogram."""
    (t_otsu,) = multi_otsu_thresholds(hist, 2)
    lo_n, lo_mean = _class_stats(hist, 0, t_otsu)
    hi_n, hi_mean = _class_stats(hist, t_otsu + 1, 255)
    floor_ = float(p["min_saturation"]) * 255.0
    trusted = (
        lo_n > 0
        and hi_n > 0
        and lo_mean <= float(p["max_background_saturation"]) * 255.0
        and hi_mean - lo_mean >= float(p["min_contrast"]) * 255.0
    )
    threshold = int(math.floor(max(t_otsu, floor_) if trusted else floor_))
    return threshold, {
        "otsu_threshold": int(t_otsu),
        "threshold": threshold,
        "threshold_saturation": round(threshold / 255.0, 6),
        "fallback": not trusted,
    }


# ---------------------------------------------------------------------------
# morphology on bit-packed masks, small components
# ---------------------------------------------------------------------------


class _BitMask:
    """A boolean (h, w) image packed 64 pixels per uint64 word along x.

    Bit ``x % 64`` of word ``x // 64`` is pixel ``x`` (little-endian); bits
    past ``w`` are kept 0, and every row ends with one spare zero word, so
    that the rows can be shifted as one flat array (the spare words absorb
    what crosses a row end). Morphology works on 1/64 of the data: a dilation
    by a disk is the OR of row-shifted horizontal dilations, one per disk row
    (built from each other by one-pixel shifts); an erosion is the complement
    of the dilation of the complement.
    """

    def __init__(self, words: np.ndarray, width: int):
        self.words = words  # (h, ceil(w / 64) + 1) uint64, last column 0
        self.width = width
        rem = width - 64 * (words.shape[1] - 2)
        self.last_valid = np.uint64((1 << rem) - 1) if rem < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)

    @staticmethod
    def _empty(h: int, w: int, arena: "_Arena | None" = None) -> np.ndarray:
        words = _empty(arena, (h, -(-w // 64) + 1), "<u8")
        words[...] = 0
        return words

    @classmethod
    def pack(cls, mask: np.ndarray) -> "_BitMask":
        h, w = mask.shape
        words = cls._empty(h, w)
        words.view(np.uint8)[:, : -(-w // 8)] = np.packbits(mask, axis=1, bitorder="little")
        return cls(words, w)

    @classmethod
    def threshold(cls, values: np.ndarray, threshold: int, above: bool, arena: "_Arena | None" = None) -> "_BitMask":
        """Pack ``values > threshold`` (``above``) or ``values <= threshold``, in cache-sized row blocks."""
        h, w = values.shape
        words = cls._empty(h, w, arena)
        b = words.view(np.uint8)
        n_bytes = -(-w // 8)
        rows = max(1, _BLOCK_PIXELS // max(1, w))
        t = _empty(arena, (min(rows, h), w), bool)
        compare = np.greater if above else np.less_equal
        for y in range(0, h, rows):
            n = min(rows, h - y)
            compare(values[y : y + n], threshold, out=t[:n])
            b[y : y + n, :n_bytes] = np.packbits(t[:n], axis=1, bitorder="little")
        return cls(words, w)

    def unpack(self, out: np.ndarray | None = None, value: int = 1) -> np.ndarray:
        """uint8 (h, w) with ``value`` on set pixels and 0 elsewhere (into ``out`` when given)."""
        h = self.words.shape[0]
        if out is None:
            out = np.empty((h, self.width), np.uint8)
        b = self.words.view(np.uint8)
        rows = max(1, _BLOCK_PIXELS // max(1, self.width))
        for y in range(0, h, rows):
            bits = np.unpackbits(b[y : y + rows], axis=1, count=self.width, bitorder="little")
            np.multiply(bits, np.uint8(value), out=out[y : y + rows])
        return out

    def _fix(self, w: np.ndarray) -> np.ndarray:
        """Clear the bits past the width and the spare words."""
        w[:, -1] = 0
        w[:, -2] &= self.last_valid
        return w

    def _hdilate1(self, s: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
        """out(y, x) = s(y, x - 1) | s(y, x) | s(y, x + 1), zeros shifted in from outside."""
        one, top = np.uint64(1), np.uint64(63)
        f, o, t = s.reshape(-1), out.reshape(-1), tmp.reshape(-1)
        np.left_shift(f, one, out=o)
        np.right_shift(f[:-1], top, out=t[1:])  # bit 63 of the word before
        o[1:] |= t[1:]
        np.right_shift(f, one, out=t)
        o |= t
        np.left_shift(f[1:], top, out=t[:-1])  # bit 0 of the word after
        o[:-1] |= t[:-1]
        o |= f
        return self._fix(out)

    def _dilate(self, w: np.ndarray, half_widths: list[int], pool: "_WordPool") -> np.ndarray:
        """Dilation by the symmetric element whose row ``dy`` is ``[-a, a]``, ``a = half_widths[|dy|]``.

        ``w`` is not modified; the result and the temporaries come from ``pool``
        (the temporaries go back to it).
        """
        h = w.shape[0]
        tmp = pool.get()
        horiz = [w]  # horiz[k]: horizontal dilation by [-k, k]
        for _ in range(max(half_widths)):
            horiz.append(self._hdilate1(horiz[-1], pool.get(), tmp))
        a0 = half_widths[0]
        if a0 == 0 or half_widths.count(a0) > 1:
            acc = pool.get()
            np.copyto(acc, horiz[a0])
        else:
            acc = horiz[a0]
        for dy in range(1, len(half_widths)):
            if dy >= h:
                break
            src = horiz[half_widths[dy]]
            acc[: h - dy] |= src[dy:]
            acc[dy:] |= src[: h - dy]
        pool.put(tmp)
        for arr in horiz[1:]:
            if arr is not acc:
                pool.put(arr)
        return acc


class _WordPool:
    """Reusable word arrays of one shape (morphology temporaries)."""

    def __init__(self, like: np.ndarray, arena: "_Arena | None"):
        self.shape, self.arena, self.free = like.shape, arena, []

    def get(self) -> np.ndarray:
        return self.free.pop() if self.free else _empty(self.arena, self.shape, "<u8")

    def put(self, a: np.ndarray) -> None:
        self.free.append(a)


def _disk_half_widths(radius_px: float) -> list[int] | None:
    """Row half-widths ``a(dy)``, dy = 0..r, of the disk ``dx² + dy² <= r²`` (None if r < 1)."""
    r = int(math.floor(radius_px + 1e-9))
    if r < 1:
        return None
    r2 = radius_px * radius_px + 1e-9
    return [max(dx for dx in range(r + 1) if dx * dx + dy * dy <= r2) for dy in range(r + 1)]


def _close_open_packed(
    m: _BitMask, closing_px: float, opening_px: float, out: np.ndarray | None = None, arena: "_Arena | None" = None
) -> np.ndarray:
    """Closing then opening of a packed mask (see :func:`_close_open`) -> uint8 0/255 (into ``out`` if given).

    Works on the complement where that saves inversions: erode(X) =
    ~dilate(~X), so closing-erosion followed by opening-erosion is
    ~dilate(dilate(~dilate(X))). ``m.words`` may be overwritten.
    """
    close, open_ = _disk_half_widths(closing_px), _disk_half_widths(opening_px)
    pool = _WordPool(m.words, arena)
    w, complement = m.words, False

    def invert(a: np.ndarray) -> np.ndarray:
        np.invert(a, out=a)
        return m._fix(a)

    def dilate(a: np.ndarray, hw: list[int]) -> np.ndarray:
        r = m._dilate(a, hw, pool)
        pool.put(a)
        return r

    if close:
        w = dilate(invert(dilate(w, close)), close)  # complement of the closing
        complement = True
    if open_:
        if not complement:
            w = invert(w)
        w = dilate(invert(dilate(w, open_)), open_)  # erosion, then dilation
        complement = False
    if complement:
        w = invert(w)
    return _BitMask(w, m.width).unpack(out, TISSUE)


def _close_open(tissue: np.ndarray, closing_px: float, opening_px: float) -> np.ndarray:
    """Closing (dilate, erode) with a disk of ``closing_px``, then opening (erode, dilate) with ``opening_px``.

    Disks: ``dx² + dy² <= r²``. Boundary convention: pixels outside the mask
    never add tissue in a dilation and never remove tissue in an erosion, so
    tissue touching the border is neither grown nor eaten from outside.
    Returns uint8 0/255.
    """
    return _close_open_packed(_BitMask.pack(tissue), closing_px, opening_px)


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


def _postprocess(
    tissue: "np.ndarray | _BitMask",
    mpp: float,
    p: dict[str, Any],
    out: np.ndarray | None = None,
    arena: "_Arena | None" = None,
) -> np.ndarray:
    """Tissue (bool array or packed) -> uint8 0/255 mask after closing/opening and optional component filtering.

    ``out``, a uint8 array of the mask shape, receives the mask when given.
    """
    if not isinstance(tissue, _BitMask):
        tissue = _BitMask.pack(tissue)
    mask = _close_open_packed(tissue, float(p["closing_um"]) / mpp, float(p["opening_um"]) / mpp, out, arena)
    min_obj = float(p["min_object_um2"]) / (mpp * mpp)
    min_hole = float(p["min_hole_um2"]) / (mpp * mpp)
    if min_obj > 1 or min_hole > 1:
        mask = _remove_small_components(mask, min_obj, min_hole)
    return np.ascontiguousarray(mask, dtype=np.uint8)
