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
the mask grid in strips as it decodes (:mod:`mask_first.tissue.resample`).
When the mask is finer than the slide's finest level (``f < 1``, e.g. a
16.8 µm/px DICOM at an 8 µm mask), the level is classified at its own
resolution and each label copied to the mask pixels whose centres it holds.

Methods
-------
``"od"`` (default) — optical density, stain-aware, with ink and debris classes
    Tissue is a mean optical density over R, G, B of at least ``min_od``
    against the slide's own glass white point; pen ink is dense, uniform,
    off the slide's stain colour and stroke-shaped (or on glass); small
    achromatic components are debris. The steps, and why: :mod:`mask_first.tissue.od`.
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

Modules, in the order data flows: this one (entry points, parameters,
result), :mod:`~mask_first.tissue.resample` (a level onto the mask grid),
:mod:`~mask_first.tissue.od` (the default method),
:mod:`~mask_first.tissue.threshold` (the Otsu thresholds of ``otsu`` and
``saturation``), :mod:`~mask_first.tissue.morphology` (closing, opening,
components), :mod:`~mask_first.tissue.labels` (the label values).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mask_first.slides import Slide, open_slide

from .labels import BACKGROUND, DEBRIS, INK, LABELS, TISSUE
from .morphology import _close_open, _size_filter
from .od import _od_labels
from .resample import _read_level, level_on_mask_grid
from .threshold import _grey_threshold, _hist, _saturation_threshold, multi_otsu_thresholds

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
        # ink of the stain's own hue: smooth and at least this many times the slide's median tissue density
        # (and twice ink_min_od)
        "ink_same_hue_min_ratio": 1.5,
        # ink: neutral colour (black marker) at mean OD at least this, whatever the stain
        "ink_black_min_od": 0.8,
        # ink components: most pixels with a local (3 x 3) OD coefficient of variation below this
        "ink_max_cv": 0.15,
        # ink: OD colour at least this far (degrees) from the median colour of the slide's tissue
        "ink_min_angle_deg": 15.0,
        # ink components: length/width at least this, unless mostly on glass
        "ink_min_elongation": 5.0,
        # ink components smaller than this (µm²) are ignored
        "ink_min_area_um2": 8000.0,
        # accepted strokes grow this far (µm) into adjacent dense pixels of a looser colour test
        "ink_grow_um": 48.0,
        # the strokes' anti-aliased edge (µm, at least the pixels next to a stroke): tissue pixels this close
        # that are mostly ink join the ink; 0 = off
        "ink_margin_um": 8.0,
        # the ink components, their shape, context and growth are measured on a grid this many mask
        # pixels wide (a block holding a candidate pixel is a candidate); 1 = on the mask grid itself
        "ink_grid": 2,
        # on masks finer than this (µm/px) ink is found on blocks of about this size, its edge on the mask
        "ink_mpp": 8.0,
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
    if method == "od" and not float(resolved["ink_same_hue_min_ratio"]) >= 0:
        raise ValueError(f"ink_same_hue_min_ratio must be >= 0, got {resolved['ink_same_hue_min_ratio']}")
    if method == "od" and not float(resolved["ink_mpp"]) > 0:
        raise ValueError(f"ink_mpp must be a positive number of µm/px, got {resolved['ink_mpp']}")
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
