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
   (libvips ``shrink``: intermediate pixel ``m`` is the mean of level pixels
   ``[m k, (m + 1) k)``, within one grey level; the level is padded with
   white to whole blocks),
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
Levels over 4 M pixels are read in strips of whole mask rows, the next strip
decoded on a second thread while the current one is processed (bounded
memory, decoding overlapped with computing; the result is identical).

The feature that is thresholded (grey level or saturation) is computed
between the two steps, from the block-mean RGB (per level pixel when
``k == 1``), and then area-averaged by step 2.

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

import functools
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
_PIPELINE_PIXELS = 1 << 20
_STRIP_PIXELS = 1 << 20
#: pixels per block of the feature and resampling kernels (buffers stay in cache)
_BLOCK_PIXELS = 1 << 17
#: mask pixels per band of the resampling (fewer, larger numpy calls)
_BAND_PIXELS = 1 << 19


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
    if method == "otsu":
        grey, _, hist = _resample_level_hist(slide, level, plan_x, plan_y, "luma", params)
        tissue, stats = _threshold_grey(grey, params, hist)
    else:
        sat, n_pen, hist = _resample_level_hist(slide, level, plan_x, plan_y, "saturation", params)
        tissue, stats = _threshold_saturation(sat, params, hist)
        stats["pen_fraction"] = round(n_pen / max(1, plan_x.n_int * plan_y.n_int), 6)
    mask = _postprocess(tissue, mpp, params)
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

    def __init__(self, feature: str, params: dict[str, Any], block: int | None = None):
        self.feature = feature
        n = self.block = int(block or _BLOCK_PIXELS)
        self.v = np.empty(n, np.uint32)
        self.t = np.empty(n, np.uint32)
        self.reject = False
        if feature == "saturation":
            self.reject = bool(params["reject_pen"])
            self.planes = np.empty((3, n), np.uint8)
            self.mx = np.empty(n, np.uint8)
            self.d = np.empty(n, np.uint8)
            self.fd = np.empty(n, np.float32)
            self.fm = np.empty(n, np.float32)
            if self.reject:
                lo, hi = (int(round(float(v))) for v in params["pen_hue_deg"])
                self.c_green, self.c_blue = 120 - lo, hi - 240
                self.s_min = int(math.ceil(float(params["pen_min_saturation"]) * 255.0 - 1e-9))
                self.black = int(params["black_max_value"])
                self.x8 = np.empty(n, np.uint8)
                self.sec = np.empty(n, np.uint8)
                self.z = np.empty(n, np.uint16)
                self.t16 = np.empty(n, np.uint16)
                self.ok = np.empty(n, bool)
                self.cnd = np.empty(n, bool)
        elif feature != "luma":
            raise ValueError(f"unknown feature {feature!r}")

    def __call__(self, rgb: np.ndarray, out: np.ndarray, pen_rows: np.ndarray | None = None) -> int:
        """Feature of (h, w, 3) uint8 RGB into ``out`` ((h, w) uint8, C-contiguous); returns the pen pixels.

        ``pen_rows`` (h,), if given, receives the pen pixels of every row.
        """
        h, w = rgb.shape[:2]
        flat = np.ascontiguousarray(rgb).reshape(-1)
        dst = out.reshape(-1)
        total = h * w
        step = self.block if pen_rows is None else max(1, self.block // max(1, w)) * w
        pen = 0
        for p0 in range(0, total, step):
            n = min(step, total - p0)
            counts = None
            if pen_rows is not None:
                counts = pen_rows[p0 // w : (p0 + n) // w]
            pen += self._block(flat, p0, n, dst[p0 : p0 + n], counts, w)
        return pen

    def _block(self, flat: np.ndarray, p0: int, n: int, o: np.ndarray, counts, w: int) -> int:
        # pixels [p0, p0 + m) through the uint32 view; the last pixel of the
        # buffer has no byte after it and is done on its own
        m = n - 1 if 3 * (p0 + n) == flat.size else n
        v, t = self.v[:m], self.t[:m]
        np.copyto(v, np.ndarray((m,), "<u4", buffer=flat, offset=3 * p0, strides=(3,)))
        if self.feature == "luma":
            np.bitwise_and(v, 0xFF00FF, out=t)  # R | B << 16
            v &= 0xFF00  # G << 8
            t *= 0x4D001D  # bits 16..31: 77 R + 29 B (29 R below it, no carry)
            v *= 0x9600  # 150 G << 16
            t += v
            t += 0x800000  # + 128 << 16
            t >>= 24
            np.copyto(o[:m], t, casting="unsafe")
            if m < n:
                r, g, b = (int(c) for c in flat[-3:])
                o[m] = (77 * r + 150 * g + 29 * b + 128) >> 8
            return 0
        r, g, b = self.planes[:, :n]
        np.copyto(r[:m], v, casting="unsafe")  # low byte
        np.right_shift(v, 8, out=t)
        np.copyto(g[:m], t, casting="unsafe")
        v >>= 16
        np.copyto(b[:m], v, casting="unsafe")
        if m < n:
            r[m], g[m], b[m] = flat[-3:]
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
        np.rint(fd, out=fd)
        np.copyto(o, fd, casting="unsafe")
        if not self.reject:
            return 0
        # coloured pen, R not the maximum: green sector (G max) 60 (B - R) + (120 - lo) d >= 0,
        # blue sector (B max) 60 (G - R) + (hi - 240) d >= 0. With X = min(G, B) both read
        # 60 (X - R) + c d >= 0, |value| <= 30600: wrapping uint16 arithmetic, sign as int16
        x8, sec, z, t16 = self.x8[:n], self.sec[:n], self.z[:n], self.t16[:n]
        np.minimum(g, b, out=x8)
        np.multiply(x8, 60, out=z, dtype=np.uint16)
        np.multiply(r, 60, out=t16, dtype=np.uint16)
        z -= t16
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
        np.greater_equal(o, self.s_min, out=cnd)
        ok &= cnd
        if self.s_min == 0:
            np.greater(d, 0, out=cnd)
            ok &= cnd
        np.less(mx, self.black, out=cnd)  # black ink
        ok |= cnd
        if o.dtype == np.uint8:
            np.subtract(ok.view(np.uint8), 1, out=x8)  # 0 on pen, 255 elsewhere
            o &= x8
        else:
            np.subtract(ok.view(np.uint8), 1, out=z, dtype=np.uint16)  # 0 on pen, 0xFFFF elsewhere
            o &= z
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


def _gather_columns(r: np.ndarray, plan: _AxisPlan, t: int, buf: np.ndarray) -> np.ndarray:
    """``r[:, plan.src(t)]`` into ``buf``, by contiguous slices when the plan has long runs.

    Columns whose source lies past the image get whatever is in ``buf``: their
    weight is 0.
    """
    if plan.runs is None:
        return np.take(r, plan.src(t), axis=1, out=buf)
    n_in = r.shape[1]
    for j0, j1, m0 in plan.runs:
        a = m0 + t
        b = min(a + (j1 - j0), n_in)
        if b > a:
            buf[:, j0 : j0 + (b - a)] = r[:, a:b]
    return buf


def _histogram(img: np.ndarray) -> np.ndarray:
    """256-bin histogram (int64) of a uint8 image (libvips ``hist_find`` when large: no int64 copy)."""
    if img.size < (1 << 16):
        return np.bincount(img.ravel(), minlength=256)
    import pyvips

    a = np.ascontiguousarray(img)
    if a.ndim == 1:
        a = a[None, :]
    return pyvips.Image.new_from_array(a).hist_find().numpy().ravel().astype(np.int64)


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

    def __init__(self, plan_x: _AxisPlan, plan_y: _AxisPlan, feature: str, params: dict[str, Any], out: np.ndarray):
        self.px, self.py, self.out = plan_x, plan_y, out
        w_int, w_out, n_out, n_int = plan_x.n_int, plan_x.n_out, plan_y.n_out, plan_y.n_int
        self.kernel = _FeatureKernel(feature, params)
        self.lo = self.hi = 0  # the window holds intermediate rows [lo, hi)
        self.done = 0  # mask rows [0, done) are finished
        self.pen = 0
        self.hist = np.zeros(256, np.int64)
        self._hist_from = 0
        # mask row i reads intermediate rows first[i] .. need_end[i] - 1 (clipped into the level)
        self.first = np.minimum(plan_y.base, n_int - 1)
        self.need_end = np.minimum(plan_y.base + plan_y.taps, n_int)
        self.band = b = max(1, _BAND_PIXELS // max(w_int, w_out, 1))
        starts = np.arange(0, n_out, b)
        span = int((self.need_end[np.minimum(starts + b, n_out) - 1] - self.first[starts]).max())
        self.win = np.empty((span + max(1, _BLOCK_PIXELS // w_int), w_int), np.uint16)
        rows = min(b, n_out)
        if not plan_y.identity:
            self.src_y = [plan_y.src(t) for t in range(plan_y.taps)]
            self.wy = plan_y.weights[:, :, None]
            # rows with a part past the slide: + fill * WHITE (else only the rounding 128)
            self.fill_y = plan_y.fill_weight * np.uint16(WHITE)
            self.fill_y_count = np.concatenate([[0], np.cumsum(plan_y.fill_weight > 0)])
            self.yacc = np.empty((rows, w_int), np.uint16)
            self.ytmp = np.empty((rows, w_int), np.uint16)
            self.yrows = np.empty((rows, w_int), np.uint16)
        if not plan_x.identity:
            self.xacc = np.empty((rows, w_out), np.uint16)
            self.xtmp = np.empty((rows, w_out), np.uint16)
            self.xg = np.empty((rows, w_out), np.uint16)
            self.fill_x_cols = np.flatnonzero(plan_x.fill_weight)
            self.fill_x = plan_x.fill_weight[self.fill_x_cols] * np.uint16(WHITE)
            if plan_x.runs is not None:
                # tap 0 by slices: columns [j0, j1) <- source columns [a, b) (long runs);
                # tap t reads tap 0 t columns further on, except near the ends of the
                # runs (x_fix[t], a small gather from x_fix_src[t])
                self.x_slices = []
                for j0, j1, m0 in plan_x.runs:
                    e = min(m0 + (j1 - j0), w_int)
                    if e > m0:
                        self.x_slices.append((j0, j0 + (e - m0), m0, e))
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

    def push(self, rgb: np.ndarray) -> None:
        """Intermediate rows ``[hi, hi + len(rgb))`` as (n, n_int_x, 3) uint8 RGB."""
        y = 0
        n_out = self.py.n_out
        while y < rgb.shape[0]:
            # drop the window rows that no unfinished mask row reads
            keep = min(int(self.first[self.done]), self.hi) if self.done < n_out else self.hi
            if keep > self.lo:
                self.win[: self.hi - keep] = self.win[keep - self.lo : self.hi - self.lo]
                self.lo = keep
            held = self.hi - self.lo
            n = min(rgb.shape[0] - y, self.win.shape[0] - held)
            self.pen += self.kernel(rgb[y : y + n], self.win[held : held + n])
            self.hi += n
            y += n
            while self.done < n_out:
                i1 = min(self.done + self.band, n_out)
                if self.need_end[i1 - 1] > self.hi:
                    break
                self._band(self.done, i1)
                self.done = i1
        self._update_hist()

    def _update_hist(self) -> None:
        if self.done > self._hist_from:
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
            src = self.src_y[t]
            a = int(src[i0]) - self.lo
            if int(src[i1 - 1]) - self.lo - a == n - 1:
                rows = self.win[a : a + n]  # consecutive rows: a view
            else:
                rows = np.take(self.win, src[i0:i1] - self.lo, axis=0, out=self.yrows[:n])
            np.multiply(rows, self.wy[t, i0:i1], out=acc if t == 0 else tmp)
            if t:
                acc += tmp
        if self.fill_y_count[i1] > self.fill_y_count[i0]:
            acc += self.fill_y[i0:i1, None]
        acc += 128
        acc >>= 8
        self._x_stage(acc, i0)

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
                for j0, j1, a, b in self.x_slices:
                    g[:, j0:j1] = rows[:, a:b]
                np.multiply(g, w, out=acc)
            else:
                np.multiply(g[:, t:], w[:-t], out=tmp[:, :-t])
                tmp[:, self.x_fix[t]] = rows[:, self.x_fix_src[t]] * self.x_fix_w[t]
            if t:
                acc += tmp
        acc += 128
        if self.fill_x_cols.size:
            acc[:, self.fill_x_cols] += self.fill_x
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


def _resample_level_hist(
    slide: Slide, level: int, plan_x: _AxisPlan, plan_y: _AxisPlan, feature: str, params: dict[str, Any]
) -> tuple[np.ndarray, int, np.ndarray]:
    """:func:`_resample_level` plus the 256-bin histogram of the result.

    A level of at most ``_PIPELINE_PIXELS`` pixels is read at once
    (``read_level``). A bigger level is read in strips of about
    ``_STRIP_PIXELS`` level pixels (whole rows, whole box-shrink blocks): the
    next strip is decoded on a second thread while this one is processed, into
    one of two reused buffers, so decoding and computing overlap and memory
    stays bounded. The result does not depend on the strips.
    """
    lv = slide.levels[level]
    width, height = lv.width, lv.height
    out = np.empty((plan_y.n_out, plan_x.n_out), np.uint8)
    kx, ky = plan_x.k, plan_y.k
    res = _Resampler(plan_x, plan_y, feature, params, out)

    def shrink(rgb: np.ndarray) -> np.ndarray:
        if kx == 1 and ky == 1:
            return rgb
        return _box_shrink_rgb(rgb, kx, ky, plan_x.n_int, -(-rgb.shape[0] // ky))

    if width * height <= _PIPELINE_PIXELS:
        res.push(shrink(slide.read_level(level)))
    else:
        rows = max(ky, int(_STRIP_PIXELS // max(1, width)) // ky * ky)
        starts = list(range(0, height, rows))
        bufs = [np.empty((1, min(rows, height), width, 3), np.uint8) for _ in range(min(2, len(starts)))]

        def read(k: int) -> np.ndarray:
            y0 = starts[k]
            h = min(rows, height - y0)
            buf = bufs[k % 2][:, :h]
            slide.read_regions_into(level, np.array([0]), np.array([y0]), width, h, buf)
            return buf[0]

        with ThreadPoolExecutor(1) as reader:
            pending = reader.submit(read, 0)
            for k in range(len(starts)):
                rgb = pending.result()
                if k + 1 < len(starts):
                    pending = reader.submit(read, k + 1)  # decode ahead into the other buffer
                res.push(shrink(rgb))
    assert res.done == plan_y.n_out
    return out, res.pen, res.hist


# ---------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _invalid(n: int) -> np.ndarray:
    """(n, n) bool: True where column >= row (row b, column a: no segment [a, b) with a >= b)."""
    out = np.triu(np.ones((n, n), bool))
    out.setflags(write=False)
    return out


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
    # M[b, a] = S^2 / P of the bins [a, b) for a < b (0 if empty); -inf for a >= b
    dP = P[:, None] - P[None, :]
    np.maximum(dP, 1e-300, out=dP)  # empty segments have dS = 0 too: 0 / tiny = 0
    M = S[:, None] - S[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        M *= M
        M /= dP
    np.copyto(M, -np.inf, where=_invalid(n_bins + 1))  # no segment [a, b) with a >= b
    # best[b] = best criterion for splitting the bins [0, b) into j classes
    best = M[:, 0].copy()
    back = []
    for _ in range(classes - 1):
        total = M + best[None, :]  # [b, a]: j classes on [0, a), one on [a, b)
        arg = np.argmax(total, axis=1)
        back.append(arg)
        best = total[np.arange(n_bins + 1), arg]
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


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _threshold_grey(
    grey: np.ndarray, p: dict[str, Any], hist: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Multi-Otsu on the grey histogram -> (bool tissue, stats); tissue = grey <= threshold."""
    classes = int(p["classes"])
    if hist is None:
        hist = _histogram(grey)
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
    tissue = np.less_equal(grey, threshold)
    return tissue, {
        "otsu_thresholds": list(thresholds),
        "threshold": threshold,
        "fallback": not trusted,
        "background_mean": _finite(bg_mean),
        "tissue_mean": _finite(fg_mean),
    }


def _threshold_saturation(
    sat: np.ndarray, p: dict[str, Any], hist: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Otsu on the saturation histogram -> (bool tissue, stats); tissue = saturation > threshold."""
    if hist is None:
        hist = _histogram(sat)
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
    tissue = np.greater(sat, threshold)
    return tissue, {
        "otsu_threshold": int(t_otsu),
        "threshold": threshold,
        "threshold_saturation": round(threshold / 255.0, 6),
        "fallback": not trusted,
    }


# ---------------------------------------------------------------------------
# morphology on bit-packed masks, small components
# ---------------------------------------------------------------------------


def _disk_offsets(radius_px: float) -> list[tuple[int, int]]:
    """(dy, dx) with dx² + dy² <= r²: the disk structuring element (empty if r < 1)."""
    r = int(math.floor(radius_px + 1e-9))
    if r < 1:
        return []
    r2 = radius_px * radius_px + 1e-9
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dx * dx + dy * dy <= r2]


class _BitMask:
    """A boolean (h, w) image packed 64 pixels per uint64 word along x.

    Bit ``x % 64`` of word ``x // 64`` is pixel ``x`` (little-endian); bits
    past ``w`` are kept 0. Dilation and erosion with any structuring element
    are ORs of shifted copies, on 1/64 of the data.
    """

    def __init__(self, words: np.ndarray, width: int):
        self.words = words
        self.width = width

    @classmethod
    def pack(cls, mask: np.ndarray) -> "_BitMask":
        h, w = mask.shape
        n_words = -(-w // 64)
        b = np.packbits(mask, axis=1, bitorder="little")
        if b.shape[1] != n_words * 8:
            b = np.pad(b, ((0, 0), (0, n_words * 8 - b.shape[1])))
        return cls(np.ascontiguousarray(b).view("<u8"), w)

    def unpack(self) -> np.ndarray:
        """uint8 (h, w) with 1 on set pixels."""
        return np.unpackbits(self.words.view(np.uint8), axis=1, bitorder="little", count=self.width)

    def _valid(self) -> np.ndarray:
        n_words = self.words.shape[1]
        v = np.full(n_words, np.iinfo(np.uint64).max, np.uint64)
        rem = self.width - 64 * (n_words - 1)
        if rem < 64:
            v[-1] = np.uint64((1 << rem) - 1)
        return v

    @staticmethod
    def _hshift(w: np.ndarray, dx: int) -> np.ndarray:
        """out[:, x] = in[:, x + dx] in pixel units, zeros shifted in."""
        if dx == 0:
            return w
        out = np.zeros_like(w)
        q, s = divmod(abs(dx), 64)
        n = w.shape[1]
        if q >= n:
            return out
        if dx > 0:
            src = w[:, q:]
            if s == 0:
                out[:, : n - q] = src
            else:
                out[:, : n - q] = src >> np.uint64(s)
                out[:, : n - q - 1] |= src[:, 1:] << np.uint64(64 - s)
        else:
            src = w[:, : n - q]
            if s == 0:
                out[:, q:] = src
            else:
                out[:, q:] = src << np.uint64(s)
                out[:, q + 1 :] |= src[:, :-1] >> np.uint64(64 - s)
        return out

    def _dilate_words(self, w: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
        h = w.shape[0]
        acc = np.zeros_like(w)
        by_dx: dict[int, list[int]] = {}
        for dy, dx in offsets:
            by_dx.setdefault(dx, []).append(dy)
        for dx, dys in by_dx.items():
            shifted = self._hshift(w, dx)
            for dy in dys:
                if dy >= h or -dy >= h:
                    continue
                if dy >= 0:
                    acc[: h - dy] |= shifted[dy:]
                else:
                    acc[-dy:] |= shifted[: h + dy]
        return acc

    def dilate(self, offsets: list[tuple[int, int]]) -> "_BitMask":
        """out(y, x) = OR of in(y + dy, x + dx); pixels outside the image count as unset."""
        if not offsets:
            return self
        return _BitMask(self._dilate_words(self.words, offsets), self.width)

    def erode(self, offsets: list[tuple[int, int]]) -> "_BitMask":
        """out(y, x) = AND of in(y + dy, x + dx); pixels outside the image count as set."""
        if not offsets:
            return self
        valid = self._valid()
        inv = ~self.words
        inv &= valid
        out = self._dilate_words(inv, offsets)
        np.invert(out, out=out)
        out &= valid
        return _BitMask(out, self.width)


def _close_open(tissue: np.ndarray, closing_px: float, opening_px: float) -> np.ndarray:
    """Closing (dilate, erode) with a disk of ``closing_px``, then opening (erode, dilate) with ``opening_px``.

    Boundary convention: pixels outside the mask never add tissue in a
    dilation and never remove tissue in an erosion, so tissue touching the
    border is neither grown nor eaten from outside. Returns uint8 0/255.
    """
    m = _BitMask.pack(tissue)
    close, open_ = _disk_offsets(closing_px), _disk_offsets(opening_px)
    m = m.dilate(close).erode(close)
    m = m.erode(open_).dilate(open_)
    out = m.unpack()
    out *= TISSUE
    return out


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


def _postprocess(tissue: np.ndarray, mpp: float, p: dict[str, Any]) -> np.ndarray:
    """bool tissue -> uint8 0/255 mask after closing/opening and optional component filtering."""
    mask = _close_open(tissue, float(p["closing_um"]) / mpp, float(p["opening_um"]) / mpp)
    min_obj = float(p["min_object_um2"]) / (mpp * mpp)
    min_hole = float(p["min_hole_um2"]) / (mpp * mpp)
    if min_obj > 1 or min_hole > 1:
        mask = _remove_small_components(mask, min_obj, min_hole)
    return np.ascontiguousarray(mask, dtype=np.uint8)
