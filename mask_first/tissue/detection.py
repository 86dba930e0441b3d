"""Tissue masks computed from one low-resolution pyramid level, on OpenCV calls.

A mask is a ``uint8`` label image on a square grid of ``mpp`` µm/px (the
workflow uses 8 µm/px): ``0`` background (glass), ``255`` tissue, and, for the
default method ``"od"``, :data:`INK` (64) for pen / marker ink and
:data:`DEBRIS` (32) for dust and specks (see :data:`LABELS`; the overlay's
provenance carries that table).

Mask grid convention
--------------------
* Mask pixel ``(i, j)`` (row ``i``, column ``j``; arrays are indexed
  ``[y, x]``) covers the level-0 rectangle of micrometres
  ``[j * mpp, (j + 1) * mpp) x [i * mpp, (i + 1) * mpp)``, measured from the
  top-left corner of the slide.
* Mask size: ``width = ceil(level0_width * mpp0_x / mpp)`` and
  ``height = ceil(level0_height * mpp0_y / mpp)`` (:func:`mask_shape`); the
  part of the last column/row that reaches past the slide counts as glass.
* Pixel ``x`` of pyramid level ``L`` covers level-0 µm
  ``[x * mpp_L, (x + 1) * mpp_L)``, so mask pixel ``j`` covers level pixels
  ``[j * f, (j + 1) * f)`` with ``f = mpp / mpp_L``.

Reading and resampling
----------------------
One level is read, ``slide.best_level_for_mpp(mpp)``, and area-averaged onto
the mask grid with ``cv2.resize(..., INTER_AREA)``. OpenCV derives the scale
from the two sizes, so the level is padded with white (or cropped) to
``round(n * f)`` pixels, with ``n`` the first count >= the mask size for which
``n * f`` is within 1/64 px of an integer (the extra mask pixels are then cut
off): the grid is kept to ~1/64 level pixel instead of drifting by up to one
pixel across the slide. The level is read in strips of rows and resampled
strip by strip (the next strip decodes on a second thread meanwhile), so it is
never held whole: memory stays bounded by a few strips plus the mask-sized
result. At ``f >= 16``, and at ``f >= 2`` on levels over :data:`STREAM_PIXELS`,
strips are first box-shrunk by ``k = f // 8`` (resp. the integer part of
``f``): exact block means on OpenCV's fast integer path, but a block
straddling a mask-pixel edge is weighed by area, an error of at most ``k / f``
of a pixel there. Otherwise each strip of mask rows ends where ``m * f`` is
within ~1/64 of a whole level row and is area-averaged from exactly its level
rows. When the mask is finer than the slide's finest level (``f < 1``, e.g.
a 16.8 µm/px DICOM at an 8 µm mask), the level is classified at its own
resolution and each label copied to the mask pixels whose centres it holds.

Methods
-------
``"od"`` (default) — optical density, stain-aware, with ink and debris classes
    1. Glass white point ``I0`` per channel: the median of the brightest
       tenth of the slide, clipped to [200, 255] (so a slide without glass, e.g. marrow with
       fat, takes its brightest content, fat, as "glass").
    2. ``OD_c = log10(I0_c / I_c)``; tissue candidates: mean OD over the three
       channels ``>= min_od`` (0.08; glass is ~0, JPEG noise ~0.01, faint
       eosin or DAB ~0.1). No Otsu: OD is physical, the threshold holds
       across stains, faint and dense alike, and on empty fields.
    3. Ink: a pen stroke is a film of one dye, so it is (a) **uniform** —
       local coefficient of variation of the OD (5 x 5 mask px) below
       ``ink_max_cv``, where tissue has cells and nuclei; (b) **dense** —
       mean OD ``>= ink_min_od``; (c) **off the slide's own stain**: its OD
       colour (unit OD vector) is more than ``ink_min_angle_deg`` away from
       the median colour of the textured (non-uniform) tissue of this slide,
       or it is neutral and opaque (black marker). Candidate pixels form
       components; a component is ink only if it is also **stroke-shaped**
       (length / width = area / (2 r)², r the largest inscribed radius, at
       least ``ink_min_elongation``) or lies mostly on glass (>= half of a
       ring around it is background). Blue marrow therefore stays tissue: it
       is the slide's stain and it is textured; a blue marker stroke is
       smooth, denser, bluer than the stain and long. Accepted strokes grow
       by ``ink_grow_um`` into adjacent pixels of a looser colour test and are
       dilated by ``ink_margin_um`` to take their anti-aliased edges. The
       per-pixel tests run on the mask grid; the components, their shape and
       context, and the growth run on a grid ``ink_grid`` (2) mask pixels
       wide (a block holding a candidate pixel is a candidate, areas and
       votes count mask pixels), a quarter of the pixels to label and dilate.
    4. No closing by default (``closing_um`` = 0): holes, lumina and fat
       vacuoles of any size stay background, and the mask agrees with a
       plain OD threshold at tissue edges (closing by 8 µm cost 0.05 IoU on
       CMU-1 against that reference).
    5. Tissue components smaller than ``min_object_um2`` that are
       achromatic (dust and dirt are grey or black, a tissue fragment carries
       the stain's colour), and components of at most 2 px, become
       :data:`DEBRIS`. The components are those of the tissue before the ink
       is taken out (found on a second thread while step 3 runs): a sliver
       of tissue that a stroke cuts off is tissue, not dust. With closing or
       opening they are those of the tissue these leave.
``"otsu"`` — the seed's behaviour
    Grey level (BT.601 luma), 3-class Otsu on its histogram, tissue = at or
    below the upper threshold, closing then opening. Marks ink, dust and
    folds as tissue (all are darker than glass).
``"saturation"``
    HSV saturation, 2-class Otsu, tissue above it, with blue/green hues
    (``pen_hue_deg``) at saturation >= ``pen_min_saturation`` and black
    (``max(R, G, B) < black_max_value``) set to background first. Rejects
    grey debris and blue/green ink on H&E; wipes blue-stained tissue
    (Giemsa, toluidine blue) and pale grey IHC.

``"otsu"`` and ``"saturation"`` fall back to an absolute threshold
(``fallback_grey`` / ``min_saturation``) when the histogram shows no
trustworthy background class, so glass-only slides give an empty mask.
Measured figures per method: ``docs/tissue.md``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mask_first.slides import Slide, open_slide

__all__ = [
    "BACKGROUND",
    "DEBRIS",
    "DEFAULT_MASK_MPP",
    "DEFAULT_METHOD",
    "INK",
    "LABELS",
    "METHODS",
    "TISSUE",
    "TissueMaskResult",
    "default_params",
    "mask_shape",
    "multi_otsu_thresholds",
    "tissue_mask",
    "tissue_mask_with_info",
]

#: mask resolution used by the workflow, µm/px
DEFAULT_MASK_MPP = 8.0
DEFAULT_METHOD = "od"
BACKGROUND = 0
TISSUE = 255
INK = 64
DEBRIS = 32
#: label value -> name, written into the overlay provenance
LABELS = {BACKGROUND: "background", TISSUE: "tissue", INK: "ink", DEBRIS: "debris"}
#: levels with more pixels are box-shrunk by the integer part of f on the way (f >= 2): the fast path
STREAM_PIXELS = 1 << 26
#: rows of a level read at a time when it is box-shrunk on the way
_STRIP_ROWS = 1024

_COMMON = {
    # disk radius (µm) of the closing that fills gaps of a few mask pixels; 0 = off
    "closing_um": 16.0,
    # disk radius (µm) of the opening that removes specks and thin lines; 0 = off
    "opening_um": 8.0,
    # tissue components (8-connected) smaller than this (µm²) are removed; 0 = off
    "min_object_um2": 0.0,
    # enclosed background components smaller than this (µm²) are filled; 0 = off
    "min_hole_um2": 0.0,
}

_METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "od": {
        # no closing by default: it would merge tissue edges with the glass gaps an OD reference keeps
        "closing_um": 0.0,
        "opening_um": 0.0,
        # smaller achromatic tissue components are labelled DEBRIS (µm²; 4000 µm² ~ 62 px at 8 µm/px)
        "min_object_um2": 4000.0,
        # achromatic = spread of the component's unit OD vector (max - min over R, G, B) below this
        "debris_max_chroma": 0.12,
        "min_hole_um2": 0.0,
        # tissue = mean optical density over R, G, B >= this (relative to the glass white point)
        "min_od": 0.08,
        # lowest threshold for slides whose tissue is faint (see _od_threshold); glass noise is ~0.005
        "faint_min_od": 0.03,
        "detect_ink": True,
        # ink: mean OD at least this
        "ink_min_od": 0.25,
        # ink: neutral colour (black marker) at mean OD at least this, whatever the stain
        "ink_black_min_od": 0.8,
        # ink components: most pixels with a local (3 x 3) OD coefficient of variation below this
        "ink_max_cv": 0.15,
        # ink: OD colour at least this far (degrees) from the median colour of the textured tissue
        "ink_min_angle_deg": 15.0,
        # ink components: length/width at least this, unless mostly on glass
        "ink_min_elongation": 5.0,
        # ink components smaller than this (µm²) are ignored
        "ink_min_area_um2": 20000.0,
        # accepted strokes grow this far (µm) into adjacent dense pixels of a looser colour test
        "ink_grow_um": 48.0,
        # dilation of the ink label over its anti-aliased edge (µm)
        "ink_margin_um": 8.0,
        # the ink components, their shape, context and growth are measured on a grid this many mask
        # pixels wide (a block holding a candidate pixel is a candidate); 1 = on the mask grid itself
        "ink_grid": 2,
    },
    "otsu": {
        # number of Otsu classes (2 or 3); tissue = every class below the top one
        "classes": 3,
        # minimum grey-level difference between the background and tissue class means
        "min_contrast": 20.0,
        # the background class must be at least this bright (grey level)
        "min_background_grey": 200.0,
        # absolute threshold when the Otsu split is not trusted: tissue = grey <= this
        "fallback_grey": 220.0,
    },
    "saturation": {
        # floor of the saturation threshold (0..1), also the fallback threshold
        "min_saturation": 0.07,
        # the lower Otsu class is background only if its mean saturation is at most this
        "max_background_saturation": 0.10,
        # minimum difference of the class mean saturations (0..1) to trust the split
        "min_contrast": 0.08,
        # pen ink set to background: hue in pen_hue_deg at saturation >= pen_min_saturation,
        # and black (max(R, G, B) < black_max_value)
        "reject_pen": True,
        "pen_hue_deg": (70.0, 235.0),
        "pen_min_saturation": 0.2,
        "black_max_value": 50,
    },
}

METHODS = tuple(_METHOD_PARAMS)


def default_params(method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """The default parameters of ``method`` (a fresh dict; see the module docstring)."""
    if method not in _METHOD_PARAMS:
        raise ValueError(f"unknown tissue mask method {method!r}; choose one of {', '.join(METHODS)}")
    return {**_COMMON, **_METHOD_PARAMS[method]}


@dataclass
class TissueMaskResult:
    """A label mask and how it was made.

    Attributes
    ----------
    mask : ndarray of uint8, shape (height, width)
        Labels (:data:`LABELS`), (y, x) order, ``mpp`` µm/px.
    mpp : float
        Mask resolution, µm/px (square pixels).
    method, params
        Method and all its parameters (defaults filled in).
    level, level_mpp, level_dimensions
        Pyramid level read, its (x, y) µm/px and (width, height) in its pixels.
    slide, slide_mpp, slide_dimensions
        Slide path, level-0 (x, y) µm/px used, level-0 (width, height).
    stats : dict
        What the method measured (thresholds, white point, label fractions).
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
        """Fraction of mask pixels that are tissue (255)."""
        return float(np.count_nonzero(self.mask == TISSUE)) / max(1, self.mask.size)

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable description (for the overlay's ImageDescription), label table included."""
        counts = np.bincount(self.mask.ravel(), minlength=256)
        return _jsonable(
            {
                "generator": "mask_first.tissue.detection",
                "method": self.method,
                "params": self.params,
                "labels": {str(v): name for v, name in LABELS.items()},
                "label_fractions": {str(v): round(counts[v] / max(1, self.mask.size), 6) for v in LABELS},
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
    if isinstance(value, (list, tuple, np.ndarray)):
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
    """(height, width) in pixels of the ``mpp`` µm/px mask grid of ``slide`` (ceil, 1e-6 px tolerance)."""
    if not mpp > 0:
        raise ValueError(f"mask mpp must be positive, got {mpp}")
    w0, h0 = slide.level_dimensions[0]
    return _ceil(h0 * slide.mpp_y / mpp), _ceil(w0 * slide.mpp_x / mpp)


def _ceil(x: float) -> int:
    return max(1, math.ceil(x - 1e-6))


def tissue_mask(
    slide: Any,
    mpp: Any = DEFAULT_MASK_MPP,
    method: str = DEFAULT_METHOD,
    *,
    mpp_override: float | None = None,
    **params: Any,
) -> Any:
    """Label mask of a slide at ``mpp`` µm/px.

    Parameters
    ----------
    slide : Slide, path-like, or pyvips.Image
        An open :class:`~mask_first.slides.Slide` or a slide file (opened with
        ``mpp_override``): one pyramid level is read and resampled to ``mpp``.
        The seed's form: a ``pyvips.Image`` (RGB or RGBA) already at the mask
        resolution; it is thresholded as it is and ``mpp`` is its resolution.
    mpp : float, or (float, float) with a pyvips.Image
        Mask resolution in µm/px (default 8). With a ``pyvips.Image``, its
        (x, y) µm/px as in the seed (``Res``); it scales the µm parameters.
    method : {"od", "otsu", "saturation"}
        See the module docstring for when to use which.
    mpp_override : float, optional
        Level-0 µm/px for slides without mpp metadata (only with a path).
    **params
        Method parameters, see :func:`default_params` (radii in µm, areas in
        µm², optical densities, grey levels 0-255 or saturations 0-1).

    Returns
    -------
    ndarray of uint8, shape (height, width), or pyvips.Image
        Labels (:data:`LABELS`), axis order (y, x), on the grid described in
        the module docstring; a one-band uchar ``pyvips.Image`` of the input's
        size when a ``pyvips.Image`` was given.

    Raises
    ------
    ValueError
        Unknown method, bad parameter value, non-positive ``mpp``.
    TypeError
        Unknown parameter name.
    mask_first.slides.SlideError
        The slide cannot be opened or has no mpp.
    """
    if type(slide).__module__.startswith("pyvips"):
        return _vips_tissue_mask(slide, mpp, method, params)
    return tissue_mask_with_info(slide, mpp, method, mpp_override=mpp_override, **params).mask


def tissue_mask_with_info(
    slide: Slide | str | os.PathLike,
    mpp: float = DEFAULT_MASK_MPP,
    method: str = DEFAULT_METHOD,
    *,
    mpp_override: float | None = None,
    **params: Any,
) -> TissueMaskResult:
    """Like :func:`tissue_mask` but returns a :class:`TissueMaskResult`; ``.provenance()`` is JSON."""
    resolved = _resolve(method, params)
    mpp = float(mpp)
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mask mpp must be a positive number of µm/px, got {mpp}")
    if isinstance(slide, Slide):
        if mpp_override is not None:
            raise ValueError("mpp_override applies when a path is given; an open Slide already has its mpp")
        return _tissue_mask(slide, mpp, method, resolved)
    with open_slide(slide, mpp_override) as opened:
        return _tissue_mask(opened, mpp, method, resolved)


def _resolve(method: str, params: dict[str, Any]) -> dict[str, Any]:
    resolved = default_params(method)
    unknown = sorted(set(params) - set(resolved))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) for method {method!r}: {', '.join(unknown)}; valid: {', '.join(sorted(resolved))}"
        )
    resolved.update(params)
    for key in ("closing_um", "opening_um", "min_object_um2", "min_hole_um2"):
        if not float(resolved[key]) >= 0:
            raise ValueError(f"{key} must be >= 0, got {resolved[key]}")
    if method == "otsu" and resolved["classes"] not in (2, 3):
        raise ValueError(f"classes must be 2 or 3, got {resolved['classes']}")
    if method == "saturation" and resolved["reject_pen"]:
        lo, hi = (float(v) for v in resolved["pen_hue_deg"])
        if not 60 <= lo <= 180 <= hi <= 300:
            raise ValueError(
                "pen_hue_deg must satisfy 60 <= lo <= 180 <= hi <= 300 degrees (the green and blue hue "
                f"sectors), got {resolved['pen_hue_deg']}"
            )
    if method == "od" and not 0 < float(resolved["min_od"]) < 3:
        raise ValueError(f"min_od must be in (0, 3), got {resolved['min_od']}")
    if method == "od" and not (int(resolved["ink_grid"]) == resolved["ink_grid"] and resolved["ink_grid"] >= 1):
        raise ValueError(f"ink_grid must be a whole number >= 1, got {resolved['ink_grid']}")
    return resolved


def _tissue_mask(slide: Slide, mpp: float, method: str, params: dict[str, Any]) -> TissueMaskResult:
    level = slide.best_level_for_mpp(mpp)
    out_h, out_w = mask_shape(slide, mpp)
    lmx, lmy = slide.level_mpp(level)
    lw, lh = slide.level_dimensions[level]
    if mpp < min(lmx, lmy):
        # mask finer than the slide's finest level: classify the level itself (the finer grid holds no more
        # information, and 4x the pixels would cost 4x the time), then copy each label to the mask pixels
        # whose centres it holds
        labels, stats = _classify(_read_level(slide, level), math.sqrt(lmx * lmy), method, params)
        rows = np.floor((np.arange(out_h) + 0.5) * mpp / lmy).astype(np.int64)
        cols = np.floor((np.arange(out_w) + 0.5) * mpp / lmx).astype(np.int64)
        mask = np.zeros((out_h, out_w), np.uint8)
        # rows and cols increase, so the ones on the level are a prefix; a take of rows, then the columns
        nr, nc = int(np.count_nonzero(rows < lh)), int(np.count_nonzero(cols < lw))
        src, cols = labels.take(rows[:nr], axis=0), cols[:nc]
        # as slices where the mask columns are runs of consecutive level columns (f close to 1: a level column
        # repeated every 1 / (1 - f) columns), a copy per run instead of a gather per pixel
        runs = np.flatnonzero(np.diff(cols, prepend=-2) != 1)
        if 8 * len(runs) <= nc:
            for a, b in zip(runs, [*runs[1:], nc]):
                mask[:nr, a:b] = src[:, cols[a] : cols[a] + b - a]
        else:
            mask[:nr, :nc] = src.take(cols, axis=1)
        stats["classified_at_level_resolution"] = True
    else:
        rgb = level_on_mask_grid(slide, level, (out_h, out_w), (mpp / lmx, mpp / lmy))
        # the statistics (histograms, white point) see only mask pixels wholly on the slide, not the white margin
        inner = (slice(0, max(1, int(lh * lmy / mpp))), slice(0, max(1, int(lw * lmx / mpp))))
        mask, stats = _classify(rgb, mpp, method, params, inner)
    w0, h0 = slide.level_dimensions[0]
    return TissueMaskResult(
        mask=mask, mpp=mpp, method=method, params=dict(params), level=level, level_mpp=(lmx, lmy),
        level_dimensions=slide.level_dimensions[level], slide=str(slide.path),
        slide_mpp=(slide.mpp_x, slide.mpp_y), slide_dimensions=(w0, h0), stats=stats,
    )  # fmt: skip


def _vips_tissue_mask(image: Any, mpp: Any, method: str, params: dict[str, Any]) -> Any:
    """The seed's form: a pyvips image at the mask resolution in, a uchar pyvips label image out."""
    import pyvips

    mx, my = (float(mpp), float(mpp)) if np.ndim(mpp) == 0 else (float(mpp[0]), float(mpp[1]))
    if not (mx > 0 and my > 0):
        raise ValueError(f"mpp must be positive µm/px, got {mpp}")
    rgb = image.numpy()
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    rgb = np.ascontiguousarray(np.broadcast_to(rgb[:, :, :3], (*rgb.shape[:2], 3)) if rgb.shape[2] < 3 else rgb[:, :, :3])
    mask, _ = _classify(rgb.astype(np.uint8), math.sqrt(mx * my), method, _resolve(method, params))
    return pyvips.Image.new_from_array(mask)


# ---------------------------------------------------------------------------
# resampling a level onto the mask grid
# ---------------------------------------------------------------------------


def level_on_mask_grid(slide: Slide, level: int, shape: tuple[int, int], f: tuple[float, float]) -> np.ndarray:
    """RGB of ``level`` area-averaged onto the mask grid.

    Parameters
    ----------
    slide, level
        The slide and the pyramid level to read.
    shape : (height, width)
        Mask size in mask pixels.
    f : (fx, fy)
        Level pixels per mask pixel along x and y (``mpp / level_mpp``).

    Returns
    -------
    ndarray of uint8, shape (height, width, 3)
        Mask pixel ``(i, j)`` is the mean over level pixels
        ``[j fx, (j+1) fx) x [i fy, (i+1) fy)``; outside the level counts as white.
    """
    fx, fy = f
    lw, lh = slide.level_dimensions[level]
    # Shrinking by k x k blocks first is exact for the blocks but weighs a block that straddles a mask-pixel
    # edge by area, as if uniform: an error of up to k / f of a mask pixel at edges. So it is used with
    # f / k >= 8 (OpenCV's fractional INTER_AREA is slow at large factors: CMU-1 at f = 16, 26 ms -> 10 ms,
    # mean change 0.15 grey levels); on big levels by the integer part of f, the fastest.
    k = max(1, int(min(fx, fy) // 8))
    if lw * lh > STREAM_PIXELS:
        k = max(1, int(min(fx, fy)))
    if k == 1:
        return _area_resize_streamed(slide, level, fx, fy, shape)
    return _area_resize(_box_shrink(slide, level, k), fx / k, fy / k, shape)


#: decoder threads for the level the mask reads, and the rows of a band each reads at a time
_READ_THREADS = 2
_BAND_ROWS = 256


def _read_level(slide: Slide, level: int) -> np.ndarray:
    """``slide.read_level(level)`` decoded in bands on :data:`_READ_THREADS` threads (:func:`_read_rows`)."""
    lw, lh = slide.level_dimensions[level]
    return _read_rows(slide, level, 0, lh, lw)


def _read_rows(slide: Slide, level: int, y0: int, y1: int, width: int) -> np.ndarray:
    """Rows ``y0 .. y1`` and columns ``0 .. width`` of ``level`` (white past its edge) as (h, w, 3) uint8.

    Read as bands of about :data:`_BAND_ROWS` rows on :data:`_READ_THREADS`
    threads, the band edges on the stored tile rows where the reader tells
    its tiles (no tile is decoded twice); the decoders (libjpeg-turbo,
    OpenJPEG, OpenSlide) release the GIL. Any reader works this way, not only
    those whose ``read_regions_into`` takes threads; OpenSlide also spends
    less CPU on several short reads than on one long one (DICOM bone level:
    33 ms in one read, 23-29 ms in bands of 256 rows).
    """
    out = np.empty((y1 - y0, width, 3), np.uint8)
    tile_h = (slide.stored_tile_size(level) or (width, 1))[1]
    step = max(1, round(_BAND_ROWS / tile_h)) * tile_h
    # edges on multiples of step (so on tile rows), the first and last band cut to y0 / y1
    edges = [y0, *range((y0 // step + 1) * step, y1, step), y1]
    bands = list(zip(edges[:-1], edges[1:]))

    def read(band: tuple[int, int]) -> None:
        a, b = band
        slide.read_regions_into(level, np.array([0]), np.array([a]), width, b - a, out[None, a - y0 : b - y0])

    if len(bands) == 1:
        read(bands[0])
    else:
        with ThreadPoolExecutor(min(_READ_THREADS, len(bands))) as pool:
            list(pool.map(read, bands))
    return out


def _strips(slide: Slide, level: int, width: int, rows: int):
    """Yield ``(y0, rgb)``: rows ``y0 .. y0 + rows`` of ``level``, ``width`` columns (white past its edge).

    The next strip decodes on a second thread while the caller works on this
    one (the decoder and OpenCV release the GIL), so that work costs little
    wall time over the decode.
    """
    lh = slide.level_dimensions[level][1]
    starts = range(0, lh, rows)

    def read(y0: int) -> np.ndarray:
        return _read_rows(slide, level, y0, min(lh, y0 + rows), width)

    if len(starts) == 1:
        yield 0, read(0)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, 0)
        for y0 in starts:
            strip = pending.result()
            if y0 + rows < lh:
                pending = pool.submit(read, y0 + rows)
            yield y0, strip


def _box_shrink(slide: Slide, level: int, k: int) -> np.ndarray:
    """Exact ``k`` x ``k`` block means of ``level`` (white past its edge), read in strips of rows."""
    lw, lh = slide.level_dimensions[level]
    rows = _STRIP_ROWS // k * k or k
    wk = -(-lw // k) * k
    parts = []
    for _, strip in _strips(slide, level, wk, rows):
        if strip.shape[0] % k:
            strip = np.concatenate([strip, np.full((k - strip.shape[0] % k, wk, 3), 255, np.uint8)])
        # an integer factor takes OpenCV's exact block-mean path of INTER_AREA
        parts.append(cv2.resize(strip, (wk // k, strip.shape[0] // k), interpolation=cv2.INTER_AREA))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _area_resize_streamed(slide: Slide, level: int, fx: float, fy: float, shape: tuple[int, int]) -> np.ndarray:
    """:func:`_area_resize` of the whole level, done strip by strip as the level is read.

    The strips of mask rows end where ``m * fy`` is within ~1/64 of a whole
    level row (the grid's own tolerance), about every :data:`_STRIP_ROWS`
    level rows; each is area-averaged from exactly its level rows, so the
    level is never held whole and resampling overlaps the decode.
    """
    out_h, out_w = shape
    lw, lh = slide.level_dimensions[level]
    if (lh, lw) == (out_h, out_w) and fx == fy == 1:
        return _read_level(slide, level)
    nx, ny = _grid_count(out_w, fx), _grid_count(out_h, fy)
    wp, hp = max(1, round(nx * fx)), max(1, round(ny * fy))
    every = max(1, int(_STRIP_ROWS / fy))
    ends = sorted({ny, *(m for m in (_grid_count(j, fy) for j in range(every, ny, every)) if m < ny)})
    # only the mask's columns are kept, so the result (its rows cut) is contiguous: the od method reads it by
    # flat pixel index, and a copy of a 50 MP mask's RGB costs as much as its classification's first pass
    out = np.empty((ny, min(nx, out_w), 3), np.uint8)
    buf, buf_y0 = np.empty((0, wp, 3), np.uint8), 0  # level rows read and not yet used, from buf_y0
    strips = _strips(slide, level, wp, _STRIP_ROWS)
    m0 = 0
    for m1 in ends:
        r0, r1 = round(m0 * fy), (round(m1 * fy) if m1 < ny else hp)
        while buf_y0 + len(buf) < min(r1, lh):
            buf = np.concatenate([buf, next(strips)[1]])
        seg = buf[r0 - buf_y0 : r1 - buf_y0]
        if len(seg) < r1 - r0:  # past the level's last row: white
            seg = np.concatenate([seg, np.full((r1 - r0 - len(seg), wp, 3), 255, np.uint8)])
        out[m0:m1] = cv2.resize(seg, (nx, m1 - m0), interpolation=cv2.INTER_AREA)[:, :out_w]
        buf, buf_y0, m0 = buf[r1 - buf_y0 :], r1, m1
    strips.close()
    return out[:out_h]


def _grid_count(n: int, f: float) -> int:
    """The first m >= n (within 64) for which m * f is nearest to a whole number of level pixels."""
    m = np.arange(n, n + 64)
    return int(m[np.argmin(np.abs(m * f - np.round(m * f)))])


def _area_resize(img: np.ndarray, fx: float, fy: float, shape: tuple[int, int]) -> np.ndarray:
    out_h, out_w = shape
    if img.shape[:2] == (out_h, out_w) and fx == fy == 1:
        return np.ascontiguousarray(img)
    nx, ny = _grid_count(out_w, fx), _grid_count(out_h, fy)
    wp, hp = max(1, round(nx * fx)), max(1, round(ny * fy))
    padded = np.full((hp, wp, 3), 255, np.uint8)
    h, w = min(hp, img.shape[0]), min(wp, img.shape[1])
    padded[:h, :w] = img[:h, :w]
    return cv2.resize(padded, (nx, ny), interpolation=cv2.INTER_AREA)[:out_h, :out_w]


# ---------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------


def _classify(
    rgb: np.ndarray, mpp: float, method: str, p: dict[str, Any], inner: tuple[slice, slice] = (slice(None),) * 2
) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels (uint8 (H, W)) and stats from the RGB (uint8 (H, W, 3)) on the mask grid of ``mpp`` µm/px.

    ``inner`` selects the mask pixels wholly on the slide, the ones the slide statistics are taken from.
    """
    if method == "od":
        return _od_labels(rgb, mpp, p, inner)
    if method == "otsu":
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        threshold, stats = _grey_threshold(_hist(grey[inner]), p)
        tissue = grey <= threshold
    else:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)  # H, S, V all 0..255
        sat = hsv[:, :, 1]
        threshold, stats = _saturation_threshold(_hist(sat[inner]), p)
        tissue = sat > threshold
        if p["reject_pen"]:
            lo, hi = (float(v) * 256 / 360 for v in p["pen_hue_deg"])
            hue = hsv[:, :, 0]
            pen = (hue >= lo) & (hue <= hi) & (sat >= 255 * float(p["pen_min_saturation"]))
            pen |= hsv[:, :, 2] < int(p["black_max_value"])
            tissue &= ~pen
            stats["pen_fraction"] = round(float(pen.mean()), 6)
    tissue = _close_open(tissue, float(p["closing_um"]) / mpp, float(p["opening_um"]) / mpp)
    tissue = _size_filter(tissue, float(p["min_object_um2"]) / mpp**2, float(p["min_hole_um2"]) / mpp**2)
    return np.where(tissue, np.uint8(TISSUE), np.uint8(BACKGROUND)), stats


def _hist(img: np.ndarray) -> np.ndarray:
    """256-bin histogram of a uint8 image (OpenCV's is much faster than np.bincount here)."""
    return cv2.calcHist([np.ascontiguousarray(img)], [0], None, [256], [0, 256]).ravel().astype(np.int64)


def _disk(radius_px: float) -> np.ndarray | None:
    """Disk structuring element ``dx² + dy² <= r²`` (None when it is a single pixel)."""
    r = int(math.floor(radius_px + 1e-9))
    if r < 1:
        return None
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ((xx * xx + yy * yy) <= radius_px * radius_px + 1e-9).astype(np.uint8)


def _close_open(tissue: np.ndarray, closing_px: float, opening_px: float) -> np.ndarray:
    """Closing then opening with disks; outside the mask neither adds nor removes tissue (OpenCV's default border)."""
    if _disk(closing_px) is None and _disk(opening_px) is None:
        return tissue
    m = tissue.astype(np.uint8)
    for op, radius in ((cv2.MORPH_CLOSE, closing_px), (cv2.MORPH_OPEN, opening_px)):
        se = _disk(radius)
        if se is not None:
            m = cv2.morphologyEx(m, op, se)
    return m.astype(bool)


def _size_filter(tissue: np.ndarray, min_object_px: float, min_hole_px: float) -> np.ndarray:
    """Drop tissue components smaller than ``min_object_px``; fill enclosed holes smaller than ``min_hole_px``."""
    if min_object_px > 0:
        tissue = tissue & ~_small_components(tissue, min_object_px)
    if min_hole_px > 0:
        tissue = tissue | (_small_components(~tissue, min_hole_px, enclosed=True))
    return tissue


def _small_components(m: np.ndarray, min_px: float, enclosed: bool = False) -> np.ndarray:
    """Pixels of 8-connected components of ``m`` under ``min_px`` pixels (with ``enclosed``: not touching the border)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < min_px
    small[0] = False
    if enclosed:
        x, y, w, h = (stats[:, c] for c in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
        small &= (x > 0) & (y > 0) & (x + w < m.shape[1]) & (y + h < m.shape[0])
    return small[labels]


def multi_otsu_thresholds(hist: np.ndarray, classes: int = 3) -> tuple[int, ...]:
    """Otsu thresholds of a 256-bin histogram for 2 or 3 classes.

    Class ``k`` is the bins ``(t_{k-1}, t_k]``; the thresholds maximise the
    between-class variance. OpenCV has the 2-class case only (``THRESH_OTSU``),
    so both are computed here from cumulative sums (all pairs at once for 3).
    """
    h = np.asarray(hist, np.float64)
    if classes not in (2, 3):
        raise ValueError(f"classes must be 2 or 3, got {classes}")
    if h.ndim != 1 or h.size < classes or (h < 0).any():
        raise ValueError(f"need a 1-D non-negative histogram of at least {classes} bins")
    w = np.cumsum(h)
    s = np.cumsum(h * np.arange(h.size))
    total_w, total_s = w[-1], s[-1]
    if total_w <= 0:
        return (0,) * (classes - 1)

    def term(sw: np.ndarray, ss: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sw > 0, ss * ss / np.where(sw > 0, sw, 1), 0.0)

    def middle_of_best(score: np.ndarray) -> int:
        # ties (an empty gap between classes): the middle one, not the first
        ties = np.flatnonzero(score >= score.max() * (1 - 1e-12))
        return int(ties[len(ties) // 2])

    if classes == 2:
        return (middle_of_best(term(w, s)[:-1] + term(total_w - w, total_s - s)[:-1]),)
    t1, t2 = np.triu_indices(h.size - 1, 1)  # t1 < t2 <= last bin - 1
    score = term(w[t1], s[t1]) + term(w[t2] - w[t1], s[t2] - s[t1]) + term(total_w - w[t2], total_s - s[t2])
    best = middle_of_best(score)
    return int(t1[best]), int(t2[best])


def _class_stats(hist: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    """(weight, mean bin) of the histogram bins lo..hi inclusive."""
    h = hist[lo : hi + 1].astype(np.float64)
    n = h.sum()
    return float(n), float((h * np.arange(lo, hi + 1)).sum() / n) if n else float("nan")


def _grey_threshold(hist: np.ndarray, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Upper Otsu threshold of the grey histogram, or ``fallback_grey`` when the split is not trusted."""
    ts = multi_otsu_thresholds(hist, int(p["classes"]))
    t = ts[-1]
    _, bg_mean = _class_stats(hist, t + 1, 255)
    _, fg_mean = _class_stats(hist, 0, t)
    trusted = (
        math.isfinite(bg_mean) and math.isfinite(fg_mean) and bg_mean >= float(p["min_background_grey"])
        and bg_mean - fg_mean >= float(p["min_contrast"])
    )  # fmt: skip
    used = t if trusted else int(p["fallback_grey"])
    return used, {"otsu_thresholds": list(ts), "threshold": used, "fallback": not trusted}


def _saturation_threshold(hist: np.ndarray, p: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Otsu threshold of the saturation histogram (0..255), floored at ``min_saturation``."""
    (t,) = multi_otsu_thresholds(hist, 2)
    _, lo_mean = _class_stats(hist, 0, t)
    _, hi_mean = _class_stats(hist, t + 1, 255)
    floor = int(round(255 * float(p["min_saturation"])))
    trusted = (
        math.isfinite(lo_mean) and math.isfinite(hi_mean)
        and lo_mean <= 255 * float(p["max_background_saturation"])
        and hi_mean - lo_mean >= 255 * float(p["min_contrast"])
    )  # fmt: skip
    used = max(t, floor) if trusted else floor
    return used, {"otsu_threshold": t, "threshold": used, "fallback": not trusted}


# ---------------------------------------------------------------------------
# the "od" method
# ---------------------------------------------------------------------------


#: optical densities are handled as uint8 in steps of 1/OD_SCALE (0.01 OD, up to 2.55): one byte per
#: pixel keeps the full-slide passes memory-light, finer steps would not change a threshold decision
OD_SCALE = 100


#: slide statistics (white point, stain colour) are taken on a grid of about this many pixels
_SAMPLE = 50_000


def _sample_step(n: int, factor: int = 1) -> int:
    """Stride along both axes that leaves about ``factor * _SAMPLE`` of ``n`` pixels."""
    return max(1, math.isqrt(n // (factor * _SAMPLE)))


def _od_labels(
    rgb: np.ndarray, mpp: float, p: dict[str, Any], inner: tuple[slice, slice]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Background / tissue / ink / debris labels from optical density (see the module docstring)."""
    rgb = np.ascontiguousarray(rgb)  # the colour tests read it by flat pixel index (a copy only when cropped)
    # white point: per-channel median of the brightest tenth of the pixels (robust to JPEG ringing)
    # on a grid of about _SAMPLE pixels (a strided view: no copy of the image)
    region = rgb[inner]
    step = _sample_step(region.shape[0] * region.shape[1])
    r, g, b = (np.ascontiguousarray(region[::step, ::step, c]).ravel() for c in range(3))
    grey = r.astype(np.uint16) + g + b
    # pure white (>= 254 everywhere) is fill around a cut-down or stitched image, not glass
    glassy = (grey >= np.percentile(grey, 90)) & (np.minimum(np.minimum(r, g), b) < 254)
    white = np.array([np.median(c[glassy]) for c in (r, g, b)]) if glassy.any() else np.full(3, 255.0)
    white = np.clip(white, 200, 255)
    # OD per channel by lookup, log10(I0 / I) with I >= 1, 0 for pixels brighter than the white point
    levels = np.maximum(np.arange(256, dtype=np.float64), 1)
    lut = np.stack([np.clip(np.rint(OD_SCALE * np.log10(w / levels)), 0, 255) for w in white], axis=1)
    # the OD image itself is never held: the density is made strip by strip, and the colour tests look the
    # OD up at the pixels they read (lut3, :func:`_od_at`)
    lut3 = lut.astype(np.uint8).reshape(256, 1, 3)
    # mean OD over R, G, B (uint8), and where ink can be: the pixels of density >= ink_min_od
    ink_min = round(float(p["ink_min_od"]) * OD_SCALE)
    density, dense = _od_density(rgb, lut3, ink_min if p["detect_ink"] else None)
    step = _sample_step(density[inner].size, 16)
    threshold, stats = _od_threshold(density[inner][::step, ::step], p)
    stats["white_point"] = [round(float(v), 1) for v in white]
    t = round(threshold * OD_SCALE)
    tissue = density >= t
    closing, opening = float(p["closing_um"]) / mpp, float(p["opening_um"]) / mpp
    morphology = _disk(closing) is not None or _disk(opening) is not None
    ink, debris = None, None
    with ThreadPoolExecutor(1) as pool:
        # Without closing / opening (the default) debris is judged on the tissue before the ink is taken out,
        # on a second thread while the ink is found (the two are the largest costs after the decode). A piece
        # of tissue that a stroke cuts off thus stays tissue: it is not dust. With morphology, debris is
        # judged on the tissue it leaves.
        early = bool(p["min_object_um2"]) and not morphology
        # (small masks: in line, a thread costs more than it saves)
        pending = pool.submit(_debris, tissue, rgb, mpp, p, lut3) if early and tissue.size >= 1 << 20 else None
        if p["detect_ink"] and tissue.any():
            ink = _ink(rgb, lut3, density, tissue, dense, t, mpp, p, stats)
        if pending is not None:
            debris = pending.result()
        elif early:
            debris = _debris(tissue, rgb, mpp, p, lut3)
    if ink is not None:
        tissue &= ~ink
    if morphology:
        tissue = _close_open(tissue, closing, opening)
        if ink is not None:
            tissue &= ~ink
        debris = _debris(tissue, rgb, mpp, p, lut3) if p["min_object_um2"] else None
    if p["min_hole_um2"]:
        holes = ~tissue if ink is None else ~tissue & ~ink
        tissue |= _small_components(holes, float(p["min_hole_um2"]) / mpp**2, enclosed=True)
    labels = tissue.view(np.uint8) * np.uint8(TISSUE)
    if debris is not None:
        np.copyto(labels, DEBRIS, where=debris)
    if ink is not None:
        np.copyto(labels, INK, where=ink)
    return labels, stats


def _od_density(rgb: np.ndarray, lut3: np.ndarray, dense_min: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean OD over R, G, B (uint8 (H, W)) of ``rgb`` by the per-channel lookup ``lut3``, in strips of rows.

    Each strip's OD goes through a strip-sized buffer on one of two threads, so the (H, W, 3) OD image (3
    bytes a pixel, fresh pages each call) is never held. With
    ``dense_min``, also the sorted flat indices of the pixels of density ``>= dense_min`` (found while the
    strip is in cache), else None.
    """
    h, w = rgb.shape[:2]
    density = np.empty((h, w), np.uint8)
    mean = np.full((1, 3), 1 / 3, np.float32)

    def strip(y0: int) -> np.ndarray | None:
        y1 = min(h, y0 + _FEATURE_ROWS)
        d = cv2.transform(cv2.LUT(rgb[y0:y1], lut3), mean, dst=density[y0:y1])
        return None if dense_min is None else np.flatnonzero(d >= dense_min) + y0 * w

    starts = range(0, h, _FEATURE_ROWS)
    if len(starts) == 1:
        parts = [strip(0)]
    else:
        with ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(strip, starts))
    return density, None if dense_min is None else np.concatenate(parts)


def _od_at(img: np.ndarray, idx: np.ndarray | None, lut3: np.ndarray | None) -> np.ndarray:
    """(n, 3) uint8 OD of the pixels of ``img`` at the flat indices ``idx`` (None: ``img`` is those (n, 3) pixels).

    ``img`` is RGB looked up by ``lut3``, or (``lut3`` None) the OD image itself.
    """
    pix = img.reshape(-1, 3) if idx is None else np.take(img.reshape(-1, 3), idx, axis=0)
    return pix if lut3 is None or not pix.size else cv2.LUT(pix.reshape(-1, 1, 3), lut3).reshape(-1, 3)


def _od_threshold(density: np.ndarray, p: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """``min_od``, or ``faint_min_od`` on slides whose tissue is mostly faint (``density`` in 1/OD_SCALE).

    Faint: at least half as many pixels lie in ``[faint_min_od, min_od)`` as
    at or above ``min_od`` (on a normal slide the in-between pixels are only
    tissue edges, a few per cent).
    """
    hist = _hist(density)
    lo, hi = round(float(p["faint_min_od"]) * OD_SCALE), round(float(p["min_od"]) * OD_SCALE)
    between, above = int(hist[lo:hi].sum()), int(hist[hi:].sum())
    faint = between >= 0.5 * above and between >= 0.01 * density.size
    used = float(p["faint_min_od"]) if faint else float(p["min_od"])
    return used, {"od_threshold": used, "faint": faint}


def _debris(
    tissue: np.ndarray, od: np.ndarray, mpp: float, p: dict[str, Any], lut3: np.ndarray | None = None
) -> np.ndarray | None:
    """Small components that are dust or specks: under ``min_object_um2`` and achromatic, or of 2 px or less.

    A small tissue fragment is kept: it carries the stain's colour, dust and dirt are grey or black.
    ``od`` is the (H, W, 3) uint8 OD image, or with ``lut3`` the RGB it is looked up from (:func:`_od_at`).
    Returns a boolean image, or None when there is no debris.
    """
    n, labels = _components(tissue)
    area = _label_counts(labels, None, n)
    small = area < float(p["min_object_um2"]) / mpp**2
    small[0] = False
    if not small.any():
        return None
    # one gather over the image; everything after it on the small components' pixels only
    idx = np.flatnonzero(small[labels])  # (np.take would first copy the labels to 64-bit indices)
    lab = labels.ravel()[idx]
    vec = _od_at(od, idx, lut3)
    mean_od = np.stack([np.bincount(lab, weights=vec[:, c], minlength=n) for c in range(3)], axis=1)
    unit = mean_od / np.maximum(np.linalg.norm(mean_od, axis=1, keepdims=True), 1e-9)
    grey = unit.max(axis=1) - unit.min(axis=1) < float(p["debris_max_chroma"])
    debris = np.zeros(tissue.shape, bool)
    debris.ravel()[idx[(grey | (area <= 2))[lab]]] = True
    return debris


def _components(m: np.ndarray) -> tuple[int, np.ndarray]:
    """(count, labels) of the 8-connected components of a boolean image, labels uint16 when they fit.

    Without the per-component statistics (a second pass as long as the labelling), and 16-bit labels
    halve the memory traffic of the gathers that follow; a slide of 65535 components or more (dust) is
    labelled again in 32 bits.
    """
    try:
        return cv2.connectedComponents(m.view(np.uint8), connectivity=8, ltype=cv2.CV_16U)
    except cv2.error:
        return cv2.connectedComponents(m.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)


def _label_counts(labels: np.ndarray, where: np.ndarray | None, n: int) -> np.ndarray:
    """Pixel count of each label 0..n-1 of ``labels`` where ``where`` (uint8, or None: all) is non-zero."""
    if labels.dtype not in (np.uint16, np.float32):  # int32 labels: not a calcHist depth
        return np.bincount(labels.ravel() if where is None else labels[where.view(bool)], minlength=n)
    return cv2.calcHist([labels], [0], where, [n], [0, n]).ravel().astype(np.int64)


#: rows of the mask whose ink features are computed at a time (bounds the float temporaries)
_FEATURE_ROWS = 256
#: squares of 0..255 as uint16, a lookup table for the local variance of the density
_SQUARES = (np.arange(256) ** 2).astype(np.uint16)


def _ink_features(
    rgb: np.ndarray, lut3: np.ndarray, density: np.ndarray, idx: np.ndarray, ref: np.ndarray, p: dict[str, Any]
) -> tuple[np.ndarray, ...]:
    """Per-pixel ink tests at the flat indices ``idx`` (sorted) of the dense tissue pixels.

    Returns boolean vectors over ``idx``: ``smooth`` (local 3 x 3 coefficient
    of variation of the density below ``ink_max_cv``), ``off`` (colour more than
    ``ink_min_angle_deg`` from the stain ``ref``, or neutral and opaque),
    ``cand`` (off, or smooth and twice ``ink_min_od``: ink of the stain's own
    hue), ``loose`` (the growth test: 0.6 x the angle, or smooth). Computed
    in strips of :data:`_FEATURE_ROWS` rows, two at a time on two threads
    (numpy and OpenCV release the GIL), so the float temporaries stay a few
    strips in size.
    """
    h, w = density.shape
    flat_d = density.ravel()
    ref32 = ref.astype(np.float32)
    cos_off = math.cos(math.radians(float(p["ink_min_angle_deg"])))
    cos_loose = math.cos(math.radians(0.6 * float(p["ink_min_angle_deg"])))
    out = tuple(np.empty(idx.size, bool) for _ in range(4))
    bounds = np.searchsorted(idx, np.arange(0, h + _FEATURE_ROWS, _FEATURE_ROWS) * w)

    def strip(k: int) -> None:
        lo, hi = bounds[k], bounds[k + 1]
        if lo == hi:
            return
        i = idx[lo:hi]
        # per channel as contiguous vectors: numpy reduces a trailing axis of 3 slowly
        od = _od_at(rgb, i, lut3)
        o = [od[:, c] for c in range(3)]
        r, g, b = (c.astype(np.float32) for c in o)
        # compared with the OD vector's norm instead of normalising it: cosine to the stain colour
        # dot / norm, spread of the unit vector (0 = neutral grey / black) (max - min) / norm
        norm = np.sqrt(r * r + g * g + b * b)
        dot = r * ref32[0] + g * ref32[1] + b * ref32[2]
        spread = np.maximum(np.maximum(o[0], o[1]), o[2]) - np.minimum(np.minimum(o[0], o[1]), o[2])
        d = flat_d[i]  # density in 1/OD_SCALE
        black = (spread < np.float32(0.15) * norm) & (d >= float(p["ink_black_min_od"]) * OD_SCALE)
        # local (3 x 3) coefficient of variation of the density: a dye film is smooth, tissue has cells.
        # The strip's box filters with one row of its neighbours each side are the whole image's.
        y0 = max(0, k * _FEATURE_ROWS - 1)
        rows = density[y0 : min(h, (k + 1) * _FEATURE_ROWS + 1)]
        j = i - y0 * w
        # In integers: with the 3 x 3 sums s1 of the density and s2 of its squares, std < cv * mean is
        # 9 s2 - s1² < (cv s1)² (a dense pixel has s1 >= ink_min_od > 0); exact, and 2- and 4-byte sums
        # instead of two float images
        s1 = cv2.boxFilter(rows, cv2.CV_16U, (3, 3), normalize=False).ravel()[j].astype(np.int64)
        s2 = cv2.boxFilter(cv2.LUT(rows, _SQUARES), cv2.CV_32S, (3, 3), normalize=False).ravel()[j]
        s1 *= s1
        smooth = 9 * s2 - s1 < float(p["ink_max_cv"]) ** 2 * s1
        off = (dot <= np.float32(cos_off) * norm) | black
        out[0][lo:hi], out[1][lo:hi] = smooth, off
        out[2][lo:hi] = off | (smooth & (d >= 2 * float(p["ink_min_od"]) * OD_SCALE))
        out[3][lo:hi] = (dot <= np.float32(cos_loose) * norm) | smooth

    if len(bounds) <= 2:
        strip(0)
    else:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(strip, range(len(bounds) - 1)))
    return out


def _ink(
    rgb: np.ndarray, lut3: np.ndarray, density: np.ndarray, tissue: np.ndarray, dense: np.ndarray, threshold: int,
    mpp: float, p: dict[str, Any], stats: dict[str, Any],
) -> np.ndarray | None:
    """Pen / marker ink, a boolean image (None when there is none).

    Ink is dense, off the slide's stain colour (or black), uniform, and
    stroke-shaped or on glass. The OD is looked up from ``rgb`` by ``lut3``
    (:func:`_od_at`); it and ``density`` (H, W) are
    uint8 in 1/OD_SCALE steps, ``tissue`` is ``density >= threshold``, ``dense``
    the sorted flat indices of the pixels of density ``>= ink_min_od``.

    The per-pixel tests (:func:`_ink_features`) run on the mask grid; the
    candidate components, their shape and context tests
    (:func:`_stroke_components`) and the growth run on a grid ``k =
    ink_grid`` times coarser. Ink is a large object (``ink_min_area_um2``,
    20000 µm², is 312 px at 8 µm/px), so a coarse pixel holding any candidate
    is a candidate, a component's area and votes are counts of its mask
    pixels, and each full-image pass of that analysis (labelling, distance
    transform, ring, growth) costs 1/k² as much. Back on the mask grid, the
    grown strokes keep their candidate or loose pixels and get the margin.
    """
    # colour features only where ink can be: dense tissue pixels (a fraction of the slide), as flat vectors
    ink_min = round(float(p["ink_min_od"]) * OD_SCALE)
    idx = dense[density.ravel()[dense] >= threshold] if ink_min < threshold else dense
    stats["ink_components"] = 0
    if idx.size == 0:
        return None
    # the slide's own stain colour: median unit OD vector of its tissue (ink is a minority of it)
    step = _sample_step(np.count_nonzero(tissue))
    t_sample = _od_at(rgb[::step, ::step][tissue[::step, ::step]], None, lut3)
    t_r, t_g, t_b = (t_sample[:, c].astype(np.float32) for c in range(3))
    t_inv = 1 / np.maximum(np.sqrt(t_r * t_r + t_g * t_g + t_b * t_b), np.float32(1e-6))
    ref = np.array([np.median(c * t_inv) for c in (t_r, t_g, t_b)])
    ref /= max(float(np.linalg.norm(ref)), 1e-6)
    stats["stain_od_vector"] = [round(float(v), 3) for v in ref]
    smooth_v, off_v, cand_v, loose_v = _ink_features(rgb, lut3, density, idx, ref, p)

    def image(values: np.ndarray) -> np.ndarray:
        out = np.zeros(tissue.size, np.uint8)
        out[idx[values]] = 1
        return out.reshape(tissue.shape)

    def steps_of(grid_mpp: float) -> int:  # the growth in pixels of a grid
        return max(1, round(float(p["ink_grow_um"]) / grid_mpp))

    margin_px = float(p["ink_margin_um"]) / mpp
    h, w = tissue.shape
    k = int(p["ink_grid"])
    hc, wc = h // k, w // k
    if k == 1 or min(hc, wc) < 8:  # on the mask grid itself (also for masks of a few pixels)
        cand = cv2.morphologyEx(image(cand_v), cv2.MORPH_CLOSE, _disk(1.5))
        n, labels = _components(cand)
        lab_v = labels.ravel()[idx]
        votes = (_label_counts(labels, None, n), np.bincount(lab_v[smooth_v], minlength=n),
                 np.bincount(lab_v[off_v], minlength=n))  # fmt: skip
        keep = _stroke_components(labels, n, votes, tissue, 1, mpp, p)
        stats["ink_components"] = int(keep.sum())
        if not keep.any():
            return None
        return _grow_ink(keep[labels].view(np.uint8), image(loose_v), tissue, steps_of(mpp), margin_px).view(bool)
    # each dense mask pixel's coarse pixel (the last h % k rows and w % k columns go to their neighbours');
    # a coarse pixel holding a candidate is one, a component's area and votes count its candidate mask pixels
    flat = idx.astype(np.int32) if tissue.size < 2**31 else idx  # int32 arithmetic is twice as fast
    rows = flat // w
    ci_all = np.minimum(rows // k, hc - 1) * wc + np.minimum((flat - rows * w) // k, wc - 1)
    ci = ci_all[cand_v]
    cand_c = np.zeros(hc * wc, np.uint8)
    cand_c[ci] = 1
    n, labels = _components(cand_c.reshape(hc, wc))
    lab = labels.ravel()[ci]
    votes = (np.bincount(lab, minlength=n), np.bincount(lab[smooth_v[cand_v]], minlength=n),
             np.bincount(lab[off_v[cand_v]], minlength=n))  # fmt: skip
    # the coarse tissue for the context test: the block's majority (rounded mean of 0/1)
    tissue_c = cv2.resize(tissue[: hc * k, : wc * k].view(np.uint8), (wc, hc), interpolation=cv2.INTER_AREA) > 0
    keep = _stroke_components(labels, n, votes, tissue_c, k, mpp, p)
    stats["ink_components"] = int(keep.sum())
    if not keep.any():
        return None
    # the growth (a coarse pixel holding a loose pixel is loose), then on the mask grid the grown strokes'
    # candidate or loose pixels, and the margin
    loose_c = np.zeros(hc * wc, np.uint8)
    loose_c[ci_all[loose_v]] = 1
    grown_c = _grow_ink(keep[labels].view(np.uint8), loose_c.reshape(hc, wc), None, steps_of(mpp * k), 0)
    # a dense pixel is a stroke pixel when its coarse pixel grew and it is a candidate or loose one: read off
    # the coarse grid through each dense pixel's coarse index (no mask-sized upsampling and AND)
    strokes = image(grown_c.ravel()[ci_all].view(bool) & (cand_v | loose_v))
    return _ink_margin(strokes, tissue, margin_px).view(bool)


def _stroke_components(
    labels: np.ndarray, n: int, votes: tuple[np.ndarray, ...], tissue: np.ndarray, k: int, mpp: float,
    p: dict[str, Any],
) -> np.ndarray:
    """Which candidate components are ink strokes (boolean per label; label 0 is never ink).

    ``labels`` (``n`` labels) are the components on a grid of ``k`` mask pixels
    (``mpp`` µm each), ``votes`` = (candidate pixels, smooth ones, off-stain
    ones) per component counted on the mask grid, ``tissue`` the tissue on the
    components' grid. A stroke is big (``ink_min_area_um2``), off the stain or
    smooth for most of its pixels, and elongated or lying mostly on glass.
    Shape and context are measured for the big candidates alone, in their
    bounding box; no per-component statistics pass over the whole labelling
    (it cost as much as the labelling itself).
    """
    area, smooth_n, off_n = votes
    big = area >= float(p["ink_min_area_um2"]) / mpp**2
    big[0] = False
    # off the stain (or black) for most of its pixels, or else smooth: ink of the stain's own hue
    uniform = smooth_n >= 0.5 * area
    off = off_n >= 0.5 * area
    # only those can be ink: shape and context are measured for them alone
    big &= off | uniform
    if not big.any():
        return big
    # the big components renumbered 1..nb in their order (so a dilation's max picks the same one)
    big_ids = np.flatnonzero(big)
    nb = big_ids.size + 1
    compact = np.zeros(n, np.uint16 if nb <= 65535 else np.float32)
    compact[big_ids] = np.arange(1, nb)
    blabels = compact[labels]
    x, y, bw, bh = cv2.boundingRect(cv2.compare(blabels, 0, cv2.CMP_GT))
    box = (slice(max(0, y - 3), y + bh + 3), slice(max(0, x - 3), x + bw + 3))
    blabels = blabels[box]
    inside = cv2.compare(blabels, 0, cv2.CMP_GT)  # 255 on the big components
    # stroke shape: length / width = area / (2 r)², r = largest inscribed radius (distance transform),
    # the maximum taken per component over its pixels; both on the components' own grid
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    # a component's largest distance is a local maximum (its neighbours are its own pixels or glass, at 0), so
    # only the local maxima are scattered: a few per cent of the pixels, ufunc.at being slow per element
    at = (dist > 0) & (dist >= cv2.dilate(dist, np.ones((3, 3), np.uint8)))
    r_big = np.zeros(nb)
    np.maximum.at(r_big, blabels[at].astype(np.intp), dist[at])
    del dist, at  # a float per pixel of the box: free it before the ring's temporaries
    elongation = _label_counts(blabels, None, nb)[1:] / np.maximum(2 * r_big[1:], 1) ** 2
    # context: share of a ring of 3 mask pixels around the component that is background (a dilation of
    # the labels gives each ring pixel the label of a component it is next to)
    ring_px = 2 * max(1, round(3 / k)) + 1
    ring_labels = cv2.dilate(blabels, np.ones((ring_px, ring_px), np.uint8))
    ring = cv2.bitwise_and(cv2.compare(ring_labels, 0, cv2.CMP_GT), cv2.compare(inside, 0, cv2.CMP_EQ))
    ring_n = _label_counts(ring_labels, ring, nb)[1:]
    ring_bg = _label_counts(ring_labels, cv2.bitwise_and(ring, cv2.compare(tissue[box].view(np.uint8), 0, cv2.CMP_EQ)), nb)[1:]
    keep = np.zeros(n, bool)
    keep[big_ids] = (elongation >= float(p["ink_min_elongation"])) | (ring_bg >= 0.5 * np.maximum(ring_n, 1))
    return keep


def _grow_ink(
    strokes: np.ndarray, loose: np.ndarray | None, tissue: np.ndarray | None, steps: int, margin_px: float
) -> np.ndarray:
    """Accepted strokes (uint8 0/1) grown ``steps`` times into adjacent pixels of ``loose`` (uint8 0/1), then by a disk.

    Hysteresis: ink over tissue mixes with the stain, so the strokes grow into
    adjacent dense pixels of the looser colour test, one pixel at a time so
    that it cannot flood the tissue; then a disk of ``margin_px`` covers the
    stroke's soft edge (``tissue`` pixels only). Both in the strokes' bounding
    box plus the growth. Returns uint8 0/1 of the strokes' shape.
    """
    margin = _disk(margin_px)
    pad = steps + (margin.shape[0] // 2 if margin is not None else 0) + 1
    x, y, bw, bh = cv2.boundingRect(strokes)
    box = (slice(max(0, y - pad), y + bh + pad), slice(max(0, x - pad), x + bw + pad))
    ink = np.ascontiguousarray(strokes[box])
    if steps:
        loose = loose[box]
        grown = np.empty_like(ink)
        for _ in range(steps):
            cv2.dilate(ink, np.ones((3, 3), np.uint8), dst=grown)
            cv2.bitwise_or(cv2.bitwise_and(grown, loose, dst=grown), ink, dst=ink)
    if margin is not None:
        ink = cv2.dilate(ink, margin) & tissue[box].view(np.uint8)
    out = np.zeros(strokes.shape, np.uint8)
    out[box] = ink
    return out


def _ink_margin(strokes: np.ndarray, tissue: np.ndarray, margin_px: float) -> np.ndarray:
    """:func:`_grow_ink` without the growth, in place: ``strokes`` (uint8 0/1) dilated by a disk of ``margin_px``, on ``tissue``.

    Only the strokes' bounding box plus the disk radius is dilated, and the
    result is written back into that box of ``strokes`` (no mask-sized copies).
    """
    margin = _disk(margin_px)
    if margin is None:
        return strokes
    pad = margin.shape[0] // 2 + 1
    x, y, bw, bh = cv2.boundingRect(strokes)
    if bw == 0:
        return strokes
    box = (slice(max(0, y - pad), y + bh + pad), slice(max(0, x - pad), x + bw + pad))
    cv2.bitwise_and(cv2.dilate(strokes[box], margin), tissue[box].view(np.uint8), dst=strokes[box])
    return strokes
