"""The default ``"od"`` method: optical density, stain-aware, with ink and debris classes.

It works on the RGB already on the mask grid (:mod:`mask_first.tissue.resample`), ``(H, W, 3)`` uint8,
and returns the label image (:mod:`mask_first.tissue.labels`) and what it measured.

1. Glass white point ``I0`` per channel: the median of the brightest
   tenth of the slide, clipped to [200, 255] (so a slide without glass, e.g. marrow with
   fat, takes its brightest content, fat, as "glass").
2. ``OD_c = log10(I0_c / I_c)``; tissue candidates: mean OD over the three
   channels ``>= min_od`` (0.08; glass is ~0, JPEG noise ~0.01, faint
   eosin or DAB ~0.1). No Otsu: OD is physical, the threshold holds
   across stains, faint and dense alike, and on empty fields.
3. Ink: a pen stroke is a film of one dye, so it is (a) **uniform** —
   local coefficient of variation of the OD (3 x 3 mask px) below
   ``ink_max_cv``, where tissue has cells and nuclei; (b) **dense** —
   mean OD ``>= ink_min_od``; (c) **off the slide's own stain**: its OD
   colour (unit OD vector) is more than ``ink_min_angle_deg`` away from
   the median colour of this slide's tissue (ink is a minority of it), or
   it is neutral and opaque (black marker). A pixel much denser than the
   slide's tissue (twice ``ink_min_od``, and ``ink_same_hue_min_ratio``
   times its median) is a candidate already when it is smooth or
   0.6 x ``ink_min_angle_deg`` off the stain: a marker over tissue adds
   its OD to the tissue's, which draws its hue toward the stain (a red
   marker over pink tissue lies 10-15° from it). Candidate pixels form
   components; a component is ink only if it is also **stroke-shaped**
   (length / width = area / (2 r)², r the largest inscribed radius, at
   least ``ink_min_elongation``) or lies mostly on glass (>= half of a
   ring around it is background). Blue marrow therefore stays tissue: it
   is the slide's stain and it is textured; a blue marker stroke is
   smooth, denser, bluer than the stain and long. Accepted strokes grow
   by ``ink_grow_um`` into adjacent pixels of a looser colour test; of the
   tissue pixels within ``ink_margin_um`` of them (their anti-aliased edge),
   those at least 40 % covered by ink, judged by the light they let through
   against the stroke's and the surroundings', become ink. The
   per-pixel tests run on the mask grid; the components, their shape and
   context, and the growth run on a grid ``ink_grid`` (2) mask pixels
   wide (a block holding a candidate pixel is a candidate, areas and
   votes count mask pixels), a quarter of the pixels to label and dilate.
   On masks finer than ``ink_mpp`` (8 µm/px), where cells are resolved and
   the tissue's texture shows through a stroke over it, all of this runs on
   the RGB averaged over blocks of about ``ink_mpp``, and only the strokes'
   edge is decided on the mask grid (:func:`_ink_at_ink_mpp`).
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

Parameters (µm, µm², optical densities): ``default_params("od")`` in
:mod:`mask_first.tissue.detection`.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from .labels import DEBRIS, INK, TISSUE
from .morphology import _box, _close_open, _components, _components_with_boxes, _disk, _label_counts, _lookup, _small_components
from .threshold import _hist


#: optical densities are handled as uint8 in steps of 1/OD_SCALE (0.01 OD, up to 2.55): one byte per
#: pixel keeps the full-slide passes memory-light, finer steps would not change a threshold decision
OD_SCALE = 100


def _od_steps(od: Any) -> int:
    """An optical density (a parameter) in the 1/OD_SCALE steps of the density image."""
    return round(float(od) * OD_SCALE)


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
    ink_min = _od_steps(p["ink_min_od"])
    density, dense = _od_density(rgb, lut3, ink_min if p["detect_ink"] else None)
    step = _sample_step(density[inner].size, 16)
    threshold, stats = _od_threshold(density[inner][::step, ::step], p)
    stats["white_point"] = [round(float(v), 1) for v in white]
    t = _od_steps(threshold)
    tissue = density >= t
    closing, opening = float(p["closing_um"]) / mpp, float(p["opening_um"]) / mpp
    morphology = _disk(closing) is not None or _disk(opening) is not None
    # Without closing / opening (the default) debris is judged on the tissue before the ink is taken out, on a
    # second thread while the ink is found (after the decode, the two largest costs): a piece of tissue that a
    # stroke cuts off stays tissue, it is not dust. With morphology, it is judged on the tissue that leaves.
    debris_first = bool(p["min_object_um2"]) and not morphology
    threaded = debris_first and tissue.size >= 1 << 18  # on smaller masks a thread costs more than it saves
    ink, debris = None, None
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_debris, tissue, rgb, mpp, p, lut3) if threaded else None
        if p["detect_ink"] and tissue.any():
            ink = _ink_at_ink_mpp(rgb, lut3, density, tissue, dense, t, mpp, p, stats)
        if debris_first:
            debris = pending.result() if threaded else _debris(tissue, rgb, mpp, p, lut3)
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


def _ink_at_ink_mpp(
    rgb: np.ndarray, lut3: np.ndarray, density: np.ndarray, tissue: np.ndarray, dense: np.ndarray, threshold: int,
    mpp: float, p: dict[str, Any], stats: dict[str, Any],
) -> np.ndarray | None:
    """:func:`_ink` on a grid of about ``ink_mpp`` µm/px when the mask is finer, the strokes' edge on the mask grid.

    The ink tests are tuned where the dye film is smooth and the tissue textured at the scale of a pixel:
    ``ink_mpp`` (8 µm). On a finer mask (4 µm/px: cells resolved, the tissue's texture showing through a
    stroke over it) they miss strokes they find at 8 µm/px: on the evaluation's four-marker H&E slide at
    4 µm/px, 8.5 % of the ink stayed tissue on the mask grid, 0.9 % this way. So the RGB is area-averaged
    over blocks of ``k = round(ink_mpp / mpp)`` mask pixels (the last ``h % k`` rows and ``w % k`` columns
    go with the blocks before them), ink is found there (edge included, :func:`_ink_margin`), copied back
    to its blocks' tissue pixels, and the pixels next to it are judged on the mask grid by the same edge
    test. With ``k`` = 1 it is :func:`_ink` itself.
    """
    k = max(1, round(float(p["ink_mpp"]) / mpp))
    h, w = tissue.shape
    hc, wc = h // k, w // k
    if k == 1 or min(hc, wc) < 8:
        found = _ink(rgb, lut3, density, tissue, dense, threshold, mpp, p, stats)
        return None if found is None else found[0]
    block = cv2.resize(rgb[: hc * k, : wc * k], (wc, hc), interpolation=cv2.INTER_AREA)
    ink_min = _od_steps(p["ink_min_od"])
    density_c, dense_c = _od_density(block, lut3, ink_min)
    found = _ink(block, lut3, density_c, density_c >= threshold, dense_c, threshold, mpp * k, p, stats)
    if found is None:
        return None
    coarse, held = found
    up = np.zeros((h, w), np.uint8)
    up[: hc * k, : wc * k] = cv2.resize(coarse.view(np.uint8), (wc * k, hc * k), interpolation=cv2.INTER_NEAREST)
    up[hc * k :, : wc * k] = up[hc * k - 1 : hc * k, : wc * k]
    up[:, wc * k :] = up[:, wc * k - 1 : wc * k]
    held = [_on_finer_grid(b, k, (hc, wc), (h, w)) for b in held]
    return _ink_margin(cv2.bitwise_and(up, tissue.view(np.uint8)), tissue, density, 1.0, held).view(bool)


def _od_density(rgb: np.ndarray, lut3: np.ndarray, dense_min: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean OD over R, G, B (uint8 (H, W)) of ``rgb`` by the per-channel lookup ``lut3``, in strips of rows.

    Each strip's OD goes through a strip-sized buffer on one of two threads, so the (H, W, 3) OD image (3
    bytes a pixel, fresh pages each call) is never held. With
    ``dense_min``, also the sorted flat indices of the pixels of density ``>= dense_min`` (found while the
    strip is in cache), else None.
    """
    h, w = rgb.shape[:2]
    density = np.empty((h, w), np.uint8)
    luts = [np.ascontiguousarray(lut3[:, 0, c]) for c in range(3)]
    rows = _strip_rows(h)

    def strip(y0: int) -> np.ndarray | None:
        y1 = min(h, y0 + rows)
        # three one-channel lookups summed in 16 bits, then round(sum / 3): the same bytes as a 3-channel
        # cv2.LUT and cv2.transform by (1/3, 1/3, 1/3) (a sum / 3 is never within 0.16 of a half), in 0.8x
        # the time (OpenCV has no vectorised path for either on 3 channels)
        r, g, b = cv2.split(rgb[y0:y1])
        total = cv2.add(cv2.LUT(r, luts[0]), cv2.LUT(g, luts[1]), dtype=cv2.CV_16U)
        cv2.add(total, cv2.LUT(b, luts[2]), dst=total, dtype=cv2.CV_16U)
        d = cv2.convertScaleAbs(total, alpha=1 / 3, dst=density[y0:y1])
        return None if dense_min is None else np.flatnonzero(d >= dense_min) + y0 * w

    starts = range(0, h, rows)
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
    lo, hi = _od_steps(p["faint_min_od"]), _od_steps(p["min_od"])
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
    idx = np.flatnonzero(_lookup(small, labels))
    lab = labels.ravel()[idx]
    vec = _od_at(od, idx, lut3)
    mean_od = np.stack([np.bincount(lab, weights=vec[:, c], minlength=n) for c in range(3)], axis=1)
    unit = mean_od / np.maximum(np.linalg.norm(mean_od, axis=1, keepdims=True), 1e-9)
    grey = unit.max(axis=1) - unit.min(axis=1) < float(p["debris_max_chroma"])
    debris = np.zeros(tissue.shape, bool)
    debris.ravel()[idx[(grey | (area <= 2))[lab]]] = True
    return debris


#: rows of the mask whose density or ink features are computed at a time, at most (bounds the float temporaries)
_FEATURE_ROWS = 256


def _strip_rows(h: int) -> int:
    """Rows per strip for the two-thread passes: at most :data:`_FEATURE_ROWS`, and (past one strip) an even
    number of strips of equal height (715 rows as strips of 256, 256 and 203 left one thread a third idle; as 4
    of 179 both work to the end)."""
    n = -(-h // _FEATURE_ROWS)
    n += n % 2 if n > 1 else 0
    return max(1, -(-h // n))


def _smooth(rows: np.ndarray, j: np.ndarray, density: np.ndarray, i: np.ndarray, cv: float) -> np.ndarray:
    """Whether the 3 x 3 coefficient of variation of the density is below ``cv`` at the pixels ``j`` (flat
    indices into ``rows``, a strip of ``density`` with a row of neighbours each side; ``i`` the same pixels'
    flat indices in ``density``). Borders as OpenCV's box filter (reflected, the edge pixel not repeated).

    With the window's sum ``s1`` and sum of squares ``s2``, std < cv * mean is ``9 s2 - s1² < (cv s1)²``
    (exact in integers; a dense pixel has ``s1 > 0``). ``9 s2 - s1²`` is 81 times the window's variance,
    which its range ``R`` (max - min) bounds: at least ``R² / 18`` (the two extremes, the other seven
    between), at most ``20 R² / 81`` (four at one end, five at the other). So a pixel with ``20 R² < (cv
    s1)²`` is smooth and one with ``4.5 R² >= (cv s1)²`` is not, and ``s2`` is summed only for the
    others (2 % of the dense pixels of the generated slide): a dilation and an erosion of bytes instead of
    a 32-bit box filter of the squares (27 of the 62 ms this function's strips took on it, one thread).
    """
    s1 = cv2.boxFilter(rows, cv2.CV_16U, (3, 3), normalize=False).ravel()[j].astype(np.int64)
    s1 *= s1
    bound = cv * cv * s1

    def strip_s2() -> np.ndarray:  # the window sums of squares of the whole strip, flat
        return cv2.boxFilter(cv2.LUT(rows, _SQUARES_U16), cv2.CV_32S, (3, 3), normalize=False).ravel()

    if j.size > _RANGE_TEST_MAX_SHARE * rows.size:
        # a densely covered strip (the bone DICOM's marrow: 40 % of its pixels, a third of them undecided by the
        # range): the squares' box filter over the strip at once is the cheaper
        return 9 * strip_s2()[j] - s1 < bound
    se = np.ones((3, 3), np.uint8)
    spread = cv2.subtract(cv2.dilate(rows, se), cv2.erode(rows, se)).ravel()[j].astype(np.int64)
    spread *= spread
    smooth = 20 * spread < bound
    unsure = np.flatnonzero(~smooth & (4.5 * spread < bound))
    if unsure.size * _GATHERED_WINDOW_COST > rows.size:
        # many undecided (texture near the bound): the strip's box filter costs less than their windows gathered
        smooth[unsure] = 9 * strip_s2()[j[unsure]] - s1[unsure] < bound[unsure]
    elif unsure.size:
        h, w = density.shape
        at = i[unsure, None] + (np.arange(-1, 2)[:, None] * w + np.arange(-1, 2)).ravel()  # (n, 9) flat indices
        y, x = np.divmod(i[unsure], w)
        edge = np.flatnonzero((y == 0) | (y == h - 1) | (x == 0) | (x == w - 1))
        if edge.size:  # windows over the image's edge: reflected
            ys, xs = (_reflect101(v[edge, None] + np.arange(-1, 2), n) for v, n in ((y, h), (x, w)))
            at[edge] = ((ys * w)[:, :, None] + xs[:, None, :]).reshape(-1, 9)
        # squares and their sums are exact in float32 (at most 9 x 255² < 2^24), and a float product is BLAS
        s2 = (cv2.LUT(density.ravel()[at], _SQUARES) @ np.ones(9, np.float32)).astype(np.int64)
        smooth[unsure] = 9 * s2 - s1[unsure] < bound[unsure]
    return smooth


#: squares of 0..255, lookups for the windows' sums of squares (gathered, and box-filtered in 32 bits)
_SQUARES = (np.arange(256) ** 2).astype(np.float32)
_SQUARES_U16 = (np.arange(256) ** 2).astype(np.uint16)

#: the range decides the smoothness first only on strips where the pixels tested are at most this share
_RANGE_TEST_MAX_SHARE = 0.25

#: a window's sum of squares gathered costs about as much as this many pixels of a strip's box filter
#: (125 against 2.2 ns, measured on the bone DICOM and the generated slide)
_GATHERED_WINDOW_COST = 50


def _reflect101(v: np.ndarray, n: int) -> np.ndarray:
    """Indices ``v`` (at most one past either end) reflected into ``0 .. n - 1`` as OpenCV's BORDER_REFLECT_101."""
    v = np.abs(v)
    return np.clip(np.where(v >= n, 2 * n - 2 - v, v), 0, n - 1)


def _ink_features(
    rgb: np.ndarray, lut3: np.ndarray, density: np.ndarray, idx: np.ndarray, ref: np.ndarray, p: dict[str, Any],
    same_min: float,
) -> tuple[np.ndarray, ...]:
    """Per-pixel ink tests at the flat indices ``idx`` (sorted) of the dense tissue pixels.

    Returns boolean vectors over ``idx``: ``smooth`` (local 3 x 3 coefficient
    of variation of the density below ``ink_max_cv``), ``off`` (colour more than
    ``ink_min_angle_deg`` from the stain ``ref``, or neutral and opaque),
    ``cand`` (off, or of density at least ``same_min``, in 1/OD_SCALE, and smooth or 0.6 x the angle off:
    ink of the stain's own hue, or over tissue), ``loose`` (the growth test: 0.6 x the angle, or smooth). Computed
    in strips of up to :data:`_FEATURE_ROWS` rows (:func:`_strip_rows`), two at a time on two threads
    (numpy and OpenCV release the GIL), so the float temporaries stay a few
    strips in size.
    """
    h, w = density.shape
    flat_d = density.ravel()
    ref32 = ref.astype(np.float32)
    cos_off = math.cos(math.radians(float(p["ink_min_angle_deg"])))
    cos_loose = math.cos(math.radians(0.6 * float(p["ink_min_angle_deg"])))
    out = tuple(np.empty(idx.size, bool) for _ in range(4))
    rows_per = _strip_rows(h)
    bounds = np.searchsorted(idx, np.arange(0, h + rows_per, rows_per) * w)

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
        # The strip's filters with one row of its neighbours each side are the whole image's.
        y0 = max(0, k * rows_per - 1)
        rows = density[y0 : min(h, (k + 1) * rows_per + 1)]
        smooth = _smooth(rows, i - y0 * w, density, i, float(p["ink_max_cv"]))
        off = (dot <= np.float32(cos_off) * norm) | black
        out[0][lo:hi], out[1][lo:hi] = smooth, off
        loose_angle = dot <= np.float32(cos_loose) * norm
        out[2][lo:hi] = off | ((smooth | loose_angle) & (d >= same_min))
        out[3][lo:hi] = loose_angle | smooth

    if len(bounds) <= 2:
        strip(0)
    else:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(strip, range(len(bounds) - 1)))
    return out


def _ink(
    rgb: np.ndarray, lut3: np.ndarray, density: np.ndarray, tissue: np.ndarray, dense: np.ndarray, threshold: int,
    mpp: float, p: dict[str, Any], stats: dict[str, Any],
) -> tuple[np.ndarray, list[tuple[slice, slice]]] | None:
    """Pen / marker ink: a boolean image and the boxes (row, column slices) that hold it, or None when there
    is none.

    Ink is dense, off the slide's stain colour (or black), uniform, and
    stroke-shaped or on glass. The OD is looked up from ``rgb`` by ``lut3``
    (:func:`_od_at`); it and ``density`` (H, W) are
    uint8 in 1/OD_SCALE steps, ``tissue`` is ``density >= threshold``, ``dense``
    the sorted flat indices of the pixels of density ``>= ink_min_od``.

    The per-pixel tests (:func:`_ink_features`) run on the mask grid; the
    candidate components, their shape and context tests
    (:func:`_stroke_components`) and the growth run on a grid ``k =
    ink_grid`` times coarser. Ink is a large object (``ink_min_area_um2``,
    8000 µm², is 125 px at 8 µm/px), so a coarse pixel holding any candidate
    is a candidate, a component's area and votes are counts of its mask
    pixels, and each full-image pass of that analysis (labelling, distance
    transform, ring, growth) costs 1/k² as much. Back on the mask grid, the
    grown strokes keep their candidate or loose pixels and get the margin.
    """
    # colour features only where ink can be: dense tissue pixels (a fraction of the slide), as flat vectors
    ink_min = _od_steps(p["ink_min_od"])
    idx = dense[density.ravel()[dense] >= threshold] if ink_min < threshold else dense
    stats["ink_components"] = 0
    if idx.size == 0:
        return None
    # the slide's own stain colour: median unit OD vector of its tissue (ink is a minority of it)
    step = _sample_step(np.count_nonzero(tissue))
    sampled = tissue[::step, ::step]
    t_sample = _od_at(rgb[::step, ::step][sampled], None, lut3)
    t_r, t_g, t_b = (t_sample[:, c].astype(np.float32) for c in range(3))
    t_inv = 1 / np.maximum(np.sqrt(t_r * t_r + t_g * t_g + t_b * t_b), np.float32(1e-6))
    ref = np.array([np.median(c * t_inv) for c in (t_r, t_g, t_b)])
    ref /= max(float(np.linalg.norm(ref)), 1e-6)
    stats["stain_od_vector"] = [round(float(v), 3) for v in ref]
    # ink of the stain's own hue is told from tissue by being smooth and denser than the slide's tissue: at
    # least twice ink_min_od, and on a densely stained slide ink_same_hue_min_ratio times its median tissue
    # density (a dense core biopsy is smooth at 8 µm/px for half its pixels, elongated and on glass)
    median = float(np.median(density[::step, ::step][sampled]))
    same_min = max(2 * float(p["ink_min_od"]) * OD_SCALE, float(p["ink_same_hue_min_ratio"]) * median)
    smooth_v, off_v, cand_v, loose_v = _ink_features(rgb, lut3, density, idx, ref, p, same_min)

    def image(values: np.ndarray) -> np.ndarray:
        out = np.zeros(tissue.size, np.uint8)
        out[idx[values]] = 1
        return out.reshape(tissue.shape)

    def steps_of(grid_mpp: float) -> int:  # the growth in pixels of a grid
        return max(1, round(float(p["ink_grow_um"]) / grid_mpp))

    # at least the pixels next to a stroke, also on a coarser level (16.8 µm/px DICOM at an 8 µm mask)
    margin_px = max(1.0, float(p["ink_margin_um"]) / mpp) if float(p["ink_margin_um"]) > 0 else 0.0
    h, w = tissue.shape
    k = int(p["ink_grid"])
    hc, wc = h // k, w // k
    if k == 1 or min(hc, wc) < 8:  # on the mask grid itself (also for masks of a few pixels)
        cand = cv2.morphologyEx(image(cand_v), cv2.MORPH_CLOSE, _disk(1.5))
        n, labels, boxes = _components_with_boxes(cand)
        lab_v = labels.ravel()[idx]
        votes = (boxes[:, 4], np.bincount(lab_v[smooth_v], minlength=n), np.bincount(lab_v[off_v], minlength=n))
        ids = np.flatnonzero(_stroke_components(labels, boxes, votes, tissue, 1, mpp, p))
        stats["ink_components"] = int(ids.size)
        if not ids.size:
            return None
        strokes, held = _grow_ink(labels, boxes, ids, image(loose_v), steps_of(mpp))
        return _ink_margin(strokes, tissue, density, margin_px, held).view(bool), held
    # each dense mask pixel's coarse pixel (the last h % k rows and w % k columns go to their neighbours');
    # a coarse pixel holding a candidate is one, a component's area and votes count its candidate mask pixels
    flat = idx.astype(np.int32) if tissue.size < 2**31 else idx  # int32 arithmetic is twice as fast
    rows = flat // w
    ci_all = np.minimum(rows // k, hc - 1) * wc + np.minimum((flat - rows * w) // k, wc - 1)
    ci = ci_all[cand_v]
    cand_c = np.zeros(hc * wc, np.uint8)
    cand_c[ci] = 1
    n, labels, boxes = _components_with_boxes(cand_c.reshape(hc, wc))
    lab = labels.ravel()[ci]
    votes = (np.bincount(lab, minlength=n), np.bincount(lab[smooth_v[cand_v]], minlength=n),
             np.bincount(lab[off_v[cand_v]], minlength=n))  # fmt: skip
    # the coarse tissue for the context test: the block's majority (rounded mean of 0/1)
    tissue_c = cv2.resize(tissue[: hc * k, : wc * k].view(np.uint8), (wc, hc), interpolation=cv2.INTER_AREA) > 0
    ids = np.flatnonzero(_stroke_components(labels, boxes, votes, tissue_c, k, mpp, p))
    stats["ink_components"] = int(ids.size)
    if not ids.size:
        return None
    # the growth (a coarse pixel holding a loose pixel is loose), then on the mask grid the grown strokes'
    # candidate or loose pixels, and the margin
    loose_c = np.zeros(hc * wc, np.uint8)
    loose_c[ci_all[loose_v]] = 1
    grown_c, held = _grow_ink(labels, boxes, ids, loose_c.reshape(hc, wc), steps_of(mpp * k))
    held = [_on_finer_grid(b, k, (hc, wc), (h, w)) for b in held]
    # a dense pixel is a stroke pixel when its coarse pixel grew and it is a candidate or loose one: read off
    # the coarse grid through each dense pixel's coarse index (no mask-sized upsampling and AND)
    strokes = image(grown_c.ravel()[ci_all].view(bool) & (cand_v | loose_v))
    return _ink_margin(strokes, tissue, density, margin_px, held).view(bool), held


def _stroke_components(
    labels: np.ndarray, boxes: np.ndarray, votes: tuple[np.ndarray, ...], tissue: np.ndarray, k: int, mpp: float,
    p: dict[str, Any],
) -> np.ndarray:
    """Which candidate components are ink strokes (boolean per label; label 0 is never ink).

    ``labels`` are the components on a grid of ``k`` mask pixels (``mpp`` µm
    each), ``boxes`` their ``(x, y, width, height, pixels)``
    (:func:`~mask_first.tissue.morphology._components_with_boxes`), ``votes`` =
    (candidate pixels, smooth ones, off-stain ones) per component counted on
    the mask grid, ``tissue`` the tissue on the components' grid. A stroke is
    big (``ink_min_area_um2``), off the stain or smooth for most of its
    pixels, and elongated or lying mostly on glass. Shape and context are
    measured for the big candidates alone, each in its own bounding box: a
    few per cent of the image, where one pass over the box of all of them
    (on the generated slide, 16 strokes across the whole image) cost 45 ms.
    """
    area, smooth_n, off_n = votes
    big = area >= float(p["ink_min_area_um2"]) / mpp**2
    big[0] = False
    # off the stain (or black) for most of its pixels, or else smooth: ink of the stain's own hue
    uniform = smooth_n >= 0.5 * area
    off = off_n >= 0.5 * area
    # only those can be ink: shape and context are measured for them alone
    big &= off | uniform
    keep = np.zeros(big.size, bool)
    # context: share of a ring of 3 mask pixels around the component that is background
    ring_r = max(1, round(3 / k))
    ring_se = np.ones((2 * ring_r + 1, 2 * ring_r + 1), np.uint8)
    for i in np.flatnonzero(big):
        box = _box(boxes[i], ring_r + 1, labels.shape)
        inside = cv2.compare(labels[box], int(i), cv2.CMP_EQ)  # 255 on the component
        # stroke shape: length / width = area / (2 r)², r = largest inscribed radius (distance transform),
        # both on the components' own grid
        r = cv2.minMaxLoc(cv2.distanceTransform(inside, cv2.DIST_L2, 5))[1]
        elongation = int(boxes[i, 4]) / max(2 * r, 1) ** 2
        ring = cv2.subtract(cv2.dilate(inside, ring_se), inside)
        on_glass = cv2.countNonZero(cv2.bitwise_and(ring, cv2.compare(tissue[box].view(np.uint8), 0, cv2.CMP_EQ)))
        keep[i] = elongation >= float(p["ink_min_elongation"]) or on_glass >= 0.5 * max(cv2.countNonZero(ring), 1)
    return keep


def _grow_ink(
    labels: np.ndarray, boxes: np.ndarray, ids: np.ndarray, loose: np.ndarray, steps: int
) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """The components ``ids`` of ``labels`` (accepted strokes) grown ``steps`` times into adjacent pixels of
    ``loose`` (uint8 0/1).

    Hysteresis: ink over tissue mixes with the stain, so the strokes grow into
    adjacent dense pixels of the looser colour test, one pixel at a time so
    that it cannot flood the tissue. Each stroke grows in its own box
    (``boxes``, as for :func:`_stroke_components`) plus the growth: the growth
    of a union is the union of the growths. Returns the grown strokes (uint8
    0/1, the shape of ``labels``) and the boxes (row, column slices) that hold them.
    """
    out = np.zeros(labels.shape, np.uint8)
    held = []
    se = np.ones((3, 3), np.uint8)
    for i in ids:
        box = _box(boxes[i], steps + 1, labels.shape)
        ink = (labels[box] == i).view(np.uint8)
        near = loose[box]
        grown = np.empty_like(ink)
        for _ in range(steps):
            cv2.dilate(ink, se, dst=grown)
            cv2.bitwise_or(cv2.bitwise_and(grown, near, dst=grown), ink, dst=ink)
        np.bitwise_or(out[box], ink, out=out[box])
        held.append(box)
    return out, held


def _on_finer_grid(box: tuple[slice, slice], k: int, coarse: tuple[int, int], fine: tuple[int, int]) -> tuple[slice, slice]:
    """A box on a grid of blocks of ``k`` pixels (of shape ``coarse``) as the box on the pixel grid (``fine``)
    it covers; the last block row and column also take the ``fine % k`` pixels left over."""
    ys, xs = box
    return (slice(ys.start * k, ys.stop * k if ys.stop < coarse[0] else fine[0]),
            slice(xs.start * k, xs.stop * k if xs.stop < coarse[1] else fine[1]))  # fmt: skip


#: transmittance 10^-OD of each density (uint8 in 1/OD_SCALE)
_TRANSMITTANCE = (10.0 ** (-np.arange(256) / OD_SCALE)).astype(np.float32)

#: an edge pixel at least this much covered by a stroke is ink (below a half: a sliver of tissue lost is
#: cheaper than ink kept on a tile, and the blur of the scan spreads the ink's edge over the next pixel)
_EDGE_INK_COVER = 0.4


def _ink_margin(
    strokes: np.ndarray, tissue: np.ndarray, density: np.ndarray, margin_px: float, boxes: list[tuple[slice, slice]]
) -> np.ndarray:
    """The strokes' anti-aliased edge, in place: tissue pixels within a disk of ``margin_px`` of ``strokes``
    (uint8 0/1, contiguous) that are mostly ink become ink.

    A pixel of the level is the area mean of the light the slide lets through, so an edge pixel a fraction
    ``a`` covered by the stroke lets through about ``a`` times the transmittance ``10^-OD`` of the stroke's
    pixels next to it plus ``1 - a`` times that of the other pixels next to it (tissue, or glass). It is ink
    when ``a >=`` :data:`_EDGE_INK_COVER`: when its transmittance, from ``density`` (uint8 (H, W)), is at
    most that mix of the two local means, each over a square of ``2 margin + 3`` px (the edge pixels
    themselves left out of the second). Dilating by the whole disk instead labels the tissue around every
    stroke ink as well (``docs/tissue.md``). Only the ``boxes`` (row, column slices) holding the strokes,
    plus the margin, are looked at.
    """
    margin = _disk(margin_px)
    if margin is None:
        return strokes
    r = margin.shape[0] // 2
    (h, w), flat = strokes.shape, strokes.reshape(-1)
    boxes = [(slice(max(0, ys.start - r), min(h, ys.stop + r)), slice(max(0, xs.start - r), min(w, xs.stop + r)))
             for ys, xs in boxes]  # fmt: skip
    found = []
    for ys, xs in boxes:
        core = strokes[ys, xs]
        edge = cv2.subtract(cv2.bitwise_and(cv2.dilate(core, margin), tissue[ys, xs].view(np.uint8)), core)
        ey, ex = np.divmod(np.flatnonzero(edge.view(bool)), edge.shape[1])  # 0/1 as bool: 5x faster than uint8
        found.append((ey + ys.start) * w + (ex + xs.start))
    # the edge is a few per cent of the boxes (36 k pixels of 12.6 M on the generated slide); a pixel in two
    # overlapping boxes is decided twice, the same way (all windows are read before any is written)
    e = np.concatenate(found)
    if e.size:
        # the window around each edge pixel, gathered: box filters over the boxes cost 4x as long
        dy, dx = (o.ravel() for o in np.mgrid[-r - 1 : r + 2, -r - 1 : r + 2])
        ey, ex = np.divmod(e, w)
        at = e[:, None] + (dy * w + dx)
        inside = np.ones(at.shape, bool)
        near = np.flatnonzero((ey <= r) | (ey >= h - r - 1) | (ex <= r) | (ex >= w - r - 1))
        if near.size:  # windows that leave the image read their centre instead, and do not count it
            yy, xx = ey[near, None] + dy, ex[near, None] + dx
            inside[near] = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            at[near] = np.where(inside[near], at[near], e[near, None])
        flat[e] = 2  # the edge pixels, for the windows: neither stroke (1) nor other (0)
        kind = flat[at]
        light = cv2.LUT(density.ravel()[at], _TRANSMITTANCE)  # (n, window) float32
        is_ink = (kind == 1) & inside
        is_other = (kind == 0) & inside

        ones = np.ones(dy.size, np.float32)

        def window_mean(where: np.ndarray) -> np.ndarray:  # mean transmittance of those pixels around each edge pixel
            # row sums as products with a vector of ones (BLAS): 4x faster than numpy's sum over axis 1
            return ((light * where) @ ones) / np.maximum(where.view(np.uint8) @ ones, 1)

        a = _EDGE_INK_COVER
        flat[e] = light[:, (dy.size - 1) // 2] <= a * window_mean(is_ink) + (1 - a) * window_mean(is_other)
    for ys, xs in boxes:  # ink is a label of tissue pixels (the k = 1 closing adds others)
        cv2.bitwise_and(strokes[ys, xs], tissue[ys, xs].view(np.uint8), dst=strokes[ys, xs])
    return strokes
