"""Deterministic synthetic H&E-like whole-slide images with analytic ground truth.

The generator writes tiled, pyramidal, JPEG-compressed *generic TIFF* files
that OpenSlide 4 (``openslide.vendor == "generic-tiff"``), tifffile and
libtiff-based readers open directly.  Its purposes are

* a demo cohort the workflow can make on a fresh checkout without any
  download (:func:`write_demo_cohort`, ``python -m mask_first.synthetic``),
* small slides made on the fly by tests (:func:`write_synthetic_slide`),
* huge (>= 100000 x 100000 pixel), mostly-glass slides for bounded-memory
  tests: the writer streams tile by tile and never holds a full level.

Conventions
-----------
* Coordinates are in **level-0 pixels** unless stated otherwise; ``x`` grows to
  the right (columns), ``y`` downwards (rows).  Arrays are indexed
  ``[y, x]`` (rows first) and RGB images have shape ``(height, width, 3)``.
* Pyramid level ``L`` has downsample ``2**L`` and size
  ``(max(1, width // 2**L), max(1, height // 2**L))``.  Pixel ``(i, j)`` of
  level ``L`` (column ``i``, row ``j``) is rendered from the analytic scene at
  its centre, level-0 position ``((i + 0.5) * 2**L, (j + 0.5) * 2**L)``.  The
  ground-truth rasterisers (:func:`synthetic_tissue_mask`,
  :func:`synthetic_pen_mask`) sample exactly the same points, so a level and
  the mask at the same downsample agree pixel for pixel (up to JPEG loss in the
  colours and floating-point ties exactly on a boundary).
* Physical size: ``mpp`` is micrometres per level-0 pixel (µm/px); level ``L``
  has ``mpp * 2**L`` µm/px.

Scene
-----
``kind="he"``: a few tissue regions, each a union of ellipses whose boundary is
perturbed by a low-frequency analytic noise field (a sum of plane waves), with
holes (lumina/fat, also noisy ellipses) cut out and a few small fragments
nearby.  Tissue colour follows a Beer-Lambert model: eosin + hematoxylin
optical densities whose concentrations vary smoothly, plus nuclei (dark purple
discs on a jittered micrometre grid).  An optional pen mark is a thick
blue or green ink stroke (an open loop around the first region) lying mostly on
the glass and partly over tissue.  ``kind="tissue"`` fills the whole slide with
tissue; ``kind="blank"`` has no tissue at all.  The glass background is about
(240, 240, 240) with a faint texture that is periodic with the tile size, so
every all-glass tile is the same JPEG bytes (encoded once, reused).

Everything is a pure function of the arguments: no clocks, no global random
state, no timestamps in tags; the same arguments give byte-identical files
regardless of the number of worker threads.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import imagecodecs
import numpy as np
import tifffile

__all__ = [
    "GENERATOR",
    "FORMAT_VERSION",
    "demo_cohort_specs",
    "render_synthetic_region",
    "synthetic_level_dimensions",
    "synthetic_pen_mask",
    "synthetic_tissue_mask",
    "write_demo_cohort",
    "write_synthetic_slide",
]

GENERATOR = "mask_first.synthetic"
#: Bumped whenever the same arguments would produce different pixels.
FORMAT_VERSION = 1

Kind = Literal["he", "blank", "tissue"]
_KINDS = ("he", "blank", "tissue")
PathLike = str | os.PathLike[str]

# --- appearance constants ----------------------------------------------------
# Intensities are modelled as glass * exp(-OD) (Beer-Lambert), so stains and
# ink combine physically instead of by ad-hoc alpha blending, and any pixel
# with zero optical density is *exactly* the glass value (which is what makes
# the reuse of pre-encoded glass tiles exact).
_GLASS_LEVEL = 240.0
_GLASS_TEXTURE_STD = 1.5  # grey levels, low-frequency (survives JPEG q85)
_GLASS_GRAIN_STD = 0.8  # grey levels, per pixel
# Unit optical densities (per channel R, G, B).  Eosin is derived from a
# target stroma colour of ~(236, 165, 205) on 240 glass; hematoxylin is the
# Ruifrok & Johnston vector.
_OD_EOSIN = np.array([0.017, 0.375, 0.158], np.float32)
_OD_HEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
_OD_PEN = {
    "blue": np.array([1.67, 1.04, 0.26], np.float32),  # ~(45, 85, 185) on glass
    "green": np.array([1.57, 0.47, 0.93], np.float32),  # ~(50, 150, 95) on glass
    "black": np.array([1.90, 1.85, 1.70], np.float32),  # ~(36, 38, 44) on glass
    "red": np.array([0.16, 1.45, 1.05], np.float32),  # ~(205, 56, 84) on glass
}
#: stains (``stain=``): (counterstain unit OD, nuclear stain unit OD, density scale); "he" is
#: the original eosin/hematoxylin scene. Giemsa / toluidine-like "blue" tissue is as blue as
#: the blue pen (hue within a few degrees) and differs from it only by texture and shape.
_STAINS = {
    "he": (_OD_EOSIN, _OD_HEMATOXYLIN, 1.0),
    "hematoxylin": (np.zeros(3, np.float32), _OD_HEMATOXYLIN, 1.0),
    "blue": (np.array([0.55, 0.33, 0.08], np.float32), np.array([0.80, 0.50, 0.13], np.float32), 1.0),
    "pale": (_OD_EOSIN, _OD_HEMATOXYLIN, 0.3),
    "ihc": (np.array([0.27, 0.57, 0.78], np.float32) * 0.7, _OD_HEMATOXYLIN * 0.5, 1.0),  # DAB brown + light counterstain
}
_DUST_OD = np.array([0.9, 0.9, 0.85], np.float32)  # grey-black specks
# Nuclei live on a jittered grid defined in micrometres so that their physical
# size is right for any mpp.
_NUCLEUS_CELL_UM = 10.0
_NUCLEUS_R_MIN_UM = 2.2
_NUCLEUS_R_MAX_UM = 4.0
_NUCLEUS_OD = 1.6  # hematoxylin concentration inside a nucleus
_MEAN_NUCLEUS_AREA_FRACTION = (
    math.pi
    * (_NUCLEUS_R_MAX_UM**3 - _NUCLEUS_R_MIN_UM**3)
    / (3.0 * (_NUCLEUS_R_MAX_UM - _NUCLEUS_R_MIN_UM))
    / _NUCLEUS_CELL_UM**2
)

# Default scene parameters per kind.
_DEFAULT_TISSUE_FRACTION = 0.3
_DEFAULT_N_REGIONS = 3

# Salts for independent random streams: each scene component draws from its
# own generator so that e.g. switching holes off does not move the regions.
_STREAM_REGIONS, _STREAM_HOLES, _STREAM_PEN, _STREAM_COLOUR, _STREAM_GLASS, _STREAM_INK, _STREAM_DUST = range(7)

_U64 = np.uint64
_MASK_BLOCK = 1024  # output pixels per side of a ground-truth raster block


# --- small analytic building blocks ------------------------------------------


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**64, stream, FORMAT_VERSION])


def _uniform(rng: np.random.Generator, lo: float, hi: float, size: int | None = None) -> Any:
    # Only Generator.random() is used: its stream is the most stable one
    # across numpy versions, which keeps files reproducible for longer.
    return lo + (hi - lo) * rng.random(size)


@dataclass(frozen=True)
class _WaveField:
    """Sum of plane waves ``sum_k amp_k * sin(kx_k * x + ky_k * y + phase_k)``.

    Wave numbers are in radians per level-0 pixel.  Evaluation on a tile grid
    is separable, ``sin(a + b) = sin a cos b + cos a sin b``, so the whole
    field is a single (ny, 2K) @ (2K, nx) matrix product instead of K
    full-size ``sin`` evaluations.
    """

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        n_waves: int,
        wavelength_range: tuple[float, float],
        total_amplitude: float,
    ) -> _WaveField:
        angle = _uniform(rng, 0.0, 2.0 * math.pi, n_waves)
        lo, hi = wavelength_range
        wavelength = np.exp(_uniform(rng, math.log(lo), math.log(hi), n_waves))
        phase = _uniform(rng, 0.0, 2.0 * math.pi, n_waves)
        weight = _uniform(rng, 0.5, 1.0, n_waves)
        k = 2.0 * math.pi / wavelength
        return cls(
            kx=k * np.cos(angle),
            ky=k * np.sin(angle),
            phase=phase,
            amp=total_amplitude * weight / weight.sum(),
        )

    @property
    def bound(self) -> float:
        """Upper bound of ``|field|`` anywhere."""
        return float(np.abs(self.amp).sum())

    def __call__(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Evaluate on the grid ``ys x xs`` (level-0 px) -> float32 (ny, nx)."""
        a = np.outer(xs, self.kx)
        b = np.outer(ys, self.ky) + self.phase
        x_part = np.concatenate([np.sin(a) * self.amp, np.cos(a) * self.amp], axis=1)
        y_part = np.concatenate([np.cos(b), np.sin(b)], axis=1)
        # einsum rather than `@`: for these tiny inner dimensions a threaded
        # BLAS spends milliseconds on thread hand-off (measured 4-8 ms vs
        # 0.1 ms per 256x256 tile with multithreaded OpenBLAS).
        return np.einsum("yk,xk->yx", y_part.astype(np.float32), x_part.astype(np.float32))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in level-0 px


def _boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


@dataclass(frozen=True)
class _Ellipse:
    """Ellipse with centre ``(cx, cy)``, semi-axes ``a, b`` (level-0 px) and
    rotation ``theta`` (radians)."""

    cx: float
    cy: float
    a: float
    b: float
    theta: float

    def box(self, scale: float = 1.0) -> Box:
        c, s = math.cos(self.theta), math.sin(self.theta)
        hx = scale * math.hypot(self.a * c, self.b * s)
        hy = scale * math.hypot(self.a * s, self.b * c)
        return (self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy)

    def r2(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Squared normalised radius on the grid ``ys x xs`` -> float32 (ny, nx);
        < 1 inside the ellipse."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx = (xs - self.cx).astype(np.float32)
        dy = (ys - self.cy).astype(np.float32)
        # Rotate into the ellipse frame with the 1/a, 1/b scaling folded into
        # the 1-D factors so that only two broadcasts are full-size.
        u = (dx * np.float32(c / self.a))[None, :] + (dy * np.float32(s / self.a))[:, None]
        v = (dy * np.float32(c / self.b))[:, None] - (dx * np.float32(s / self.b))[None, :]
        u *= u
        v *= v
        u += v
        return u


@dataclass(frozen=True)
class _Blob:
    """Union of ellipses with a boundary perturbed by a noise field: a point is
    inside when ``min_i r2_i < (1 + noise)**2``."""

    ellipses: tuple[_Ellipse, ...]
    noise: _WaveField

    def boxes(self) -> list[Box]:
        scale = 1.0 + self.noise.bound
        return [e.box(scale) for e in self.ellipses]

    def inside(self, xs: np.ndarray, ys: np.ndarray, box: Box) -> np.ndarray | None:
        """Membership on the grid ``ys x xs``; None if ``box`` (the grid's
        level-0 extent) cannot touch the blob."""
        g = None
        for ellipse, ebox in zip(self.ellipses, self.boxes(), strict=True):
            if not _boxes_overlap(ebox, box):
                continue
            r2 = ellipse.r2(xs, ys)
            g = r2 if g is None else np.minimum(g, r2, out=g)
        if g is None:
            return None
        limit = self.noise(xs, ys)
        limit += 1.0
        limit *= limit
        return g < limit


@dataclass(frozen=True)
class _Pen:
    """Thick ink stroke along a polyline (level-0 px)."""

    points: np.ndarray  # (N, 2) float64, x then y
    half_width: float
    od: np.ndarray  # (3,) optical density of the ink at full coverage
    streaks: _WaveField  # opacity variation along/across the stroke

    def segment_boxes(self, pad: float) -> list[Box]:
        p, q = self.points[:-1], self.points[1:]
        lo = np.minimum(p, q) - (self.half_width + pad)
        hi = np.maximum(p, q) + (self.half_width + pad)
        return [(float(a[0]), float(a[1]), float(b[0]), float(b[1])) for a, b in zip(lo, hi, strict=True)]

    def distance(self, xs: np.ndarray, ys: np.ndarray, box: Box, pad: float) -> np.ndarray | None:
        """Distance (level-0 px) from grid points to the stroke's centre line,
        float32 (ny, nx); None if no segment comes within half_width + pad of
        ``box``."""
        best = None
        for k, sbox in enumerate(self.segment_boxes(pad)):
            if not _boxes_overlap(sbox, box):
                continue
            (ax, ay), (bx, by) = self.points[k], self.points[k + 1]
            ex, ey = bx - ax, by - ay
            len2 = ex * ex + ey * ey
            dx = (xs - ax).astype(np.float32)[None, :]
            dy = (ys - ay).astype(np.float32)[:, None]
            if len2 > 0:
                t = dx * np.float32(ex / len2) + dy * np.float32(ey / len2)
                np.clip(t, 0.0, 1.0, out=t)
            else:
                t = np.zeros((ys.size, xs.size), np.float32)
            px = dx - t * np.float32(ex)
            py = dy - t * np.float32(ey)
            d2 = px * px + py * py
            best = d2 if best is None else np.minimum(best, d2, out=best)
        if best is None:
            return None
        return np.sqrt(best, out=best)


@dataclass(frozen=True)
class _Layout:
    """The analytic scene of one slide; everything in level-0 pixels."""

    width: int
    height: int
    seed: int
    kind: str
    all_tissue: bool
    regions: tuple[_Blob, ...]
    holes: tuple[_Blob, ...]
    pen: _Pen | None
    eosin: _WaveField
    hematoxylin: _WaveField
    density: _WaveField
    # scene options added later; their defaults give the original scene, byte for byte
    inks: tuple[_Pen, ...] = ()
    dust: np.ndarray | None = None  # (N, 3) x, y, radius in level-0 px
    stain: str = "he"

    # -- geometry -------------------------------------------------------------

    def tissue(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Tissue membership (holes excluded) on the grid ``ys x xs`` -> bool (ny, nx)."""
        shape = (ys.size, xs.size)
        if self.all_tissue:
            return np.ones(shape, bool)
        box = (float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]))
        out = np.zeros(shape, bool)
        for blob in self.regions:
            m = blob.inside(xs, ys, box)
            if m is not None:
                out |= m
        if out.any():
            for blob in self.holes:
                m = blob.inside(xs, ys, box)
                if m is not None:
                    out &= ~m
        return out

    def ink_coverage(self, xs: np.ndarray, ys: np.ndarray, downsample: float) -> np.ndarray | None:
        """Optical density (ny, nx, 3) of the extra ink strokes and dust; None where there is none."""
        box = (float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]))
        od = None
        for pen in self.inks:
            d = pen.distance(xs, ys, box, pad=downsample)
            if d is None:
                continue
            cov = np.clip((pen.half_width - d) * np.float32(1.0 / downsample) + 0.5, 0.0, 1.0)
            if cov.any():
                opacity = pen.streaks(xs, ys)
                opacity += 0.9
                cov *= opacity
                od = (0 if od is None else od) + cov[:, :, None] * pen.od
        if self.dust is not None:
            for x, y, r in self.dust:
                if x + r + downsample < box[0] or x - r - downsample > box[2] or y + r + downsample < box[1] or y - r - downsample > box[3]:
                    continue
                d = np.sqrt((xs[None, :] - x) ** 2 + (ys[:, None] - y) ** 2).astype(np.float32)
                cov = np.clip((r - d) * np.float32(1.0 / downsample) + 0.5, 0.0, 1.0)
                if cov.any():
                    od = (0 if od is None else od) + cov[:, :, None] * _DUST_OD
        return od

    def pen_distance(self, xs: np.ndarray, ys: np.ndarray, pad: float) -> np.ndarray | None:
        if self.pen is None:
            return None
        box = (float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]))
        return self.pen.distance(xs, ys, box, pad)

    def content_boxes(self, pad: float) -> list[Box]:
        """Level-0 boxes outside of which the slide is plain glass."""
        boxes: list[Box] = []
        for blob in self.regions:
            boxes.extend(blob.boxes())
        if self.pen is not None:
            boxes.extend(self.pen.segment_boxes(pad))
        for pen in self.inks:
            boxes.extend(pen.segment_boxes(pad))
        if self.dust is not None:
            boxes.extend((x - r - pad, y - r - pad, x + r + pad, y + r + pad) for x, y, r in self.dust)
        return boxes

    def candidate_tiles(self, downsample: int, tile_size: int, nx: int, ny: int) -> np.ndarray:
        """bool (ny, nx): tiles of a level that may contain anything but glass."""
        if self.all_tissue:
            return np.ones((ny, nx), bool)
        grid = np.zeros((ny, nx), bool)
        span = float(tile_size * downsample)
        for x0, y0, x1, y1 in self.content_boxes(pad=float(downsample)):
            i0, i1 = max(0, math.floor(x0 / span)), min(nx - 1, math.floor(x1 / span))
            j0, j1 = max(0, math.floor(y0 / span)), min(ny - 1, math.floor(y1 / span))
            if i0 <= i1 and j0 <= j1:
                grid[j0 : j1 + 1, i0 : i1 + 1] = True
        return grid


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")


def _resolve_pen(kind: str, pen_mark: bool | None) -> bool:
    # A pen mark is part of the default H&E scene only; blank and all-tissue
    # slides stay "pure" unless a pen mark is asked for explicitly.
    return kind == "he" if pen_mark is None else bool(pen_mark)


def _make_layout(
    width: int,
    height: int,
    *,
    seed: int = 0,
    kind: str = "he",
    pen_mark: bool | None = None,
    n_regions: int | None = None,
    tissue_fraction: float | None = None,
    holes: bool = True,
    mpp: float = 0.5,
    stain: str = "he",
    inks: Sequence[str] = (),
    dust: int = 0,
) -> _Layout:
    _check_kind(kind)
    if stain not in _STAINS:
        raise ValueError(f"stain must be one of {tuple(_STAINS)}, got {stain!r}")
    bad = [c for c in inks if c not in _OD_PEN]
    if bad:
        raise ValueError(f"ink colours must be among {tuple(_OD_PEN)}, got {bad}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width} x {height}")
    n_regions = _DEFAULT_N_REGIONS if n_regions is None else int(n_regions)
    fraction = _DEFAULT_TISSUE_FRACTION if tissue_fraction is None else float(tissue_fraction)
    if n_regions < 1:
        raise ValueError("n_regions must be >= 1")
    if not 0.0 < fraction <= 0.8:
        raise ValueError("tissue_fraction must be in (0, 0.8]")

    # The regions are always drawn (even for blank/tissue kinds) so that the
    # pen mark, which is placed relative to the first region, does not depend
    # on the kind.
    regions, hole_blobs, anchor = _make_regions(width, height, seed, n_regions, fraction)
    pen = _make_pen(width, height, seed, anchor) if _resolve_pen(kind, pen_mark) else None

    rng = _rng(seed, _STREAM_COLOUR)
    um = 1.0 / mpp  # level-0 px per µm
    eosin = _WaveField.random(rng, 6, (150 * um, 1500 * um), 0.35)
    hematoxylin = _WaveField.random(rng, 5, (100 * um, 1000 * um), 0.10)
    density = _WaveField.random(rng, 8, (80 * um, 2500 * um), 0.45)

    if kind == "he":
        tissue_regions, tissue_holes = regions, (hole_blobs if holes else ())
    else:
        tissue_regions, tissue_holes = (), ()
    return _Layout(
        width=width,
        height=height,
        seed=seed,
        kind=kind,
        all_tissue=kind == "tissue",
        regions=tuple(tissue_regions),
        holes=tuple(tissue_holes),
        pen=pen,
        eosin=eosin,
        hematoxylin=hematoxylin,
        density=density,
        inks=_make_inks(width, height, seed, tuple(inks), regions[:n_regions]),
        dust=_make_dust(width, height, seed, int(dust), mpp),
        stain=stain,
    )


def _make_regions(
    width: int, height: int, seed: int, n_regions: int, fraction: float
) -> tuple[list[_Blob], list[_Blob], tuple[float, float, float]]:
    """Tissue blobs, their holes, and (cx, cy, outer radius) of the first blob."""
    rng = _rng(seed, _STREAM_REGIONS)
    area = fraction * width * height
    # Region "radii" before overlap/holes; the 1.1 compensates roughly for the
    # lobes overlapping the main ellipse and for the holes.
    sizes = _uniform(rng, 0.7, 1.3, n_regions)
    sizes = np.sort(sizes)[::-1]
    radii = np.sqrt(area * sizes**2 / (sizes**2).sum() / math.pi) * 1.1

    centres: list[tuple[float, float]] = []
    for r in radii:
        margin_x = min(1.2 * r, width / 2.0)
        margin_y = min(1.2 * r, height / 2.0)
        best, best_score = (width / 2.0, height / 2.0), -math.inf
        # Deterministic rejection sampling: keep the candidate farthest (in
        # units of the radii) from the regions placed so far.
        for _ in range(64):
            cx = _uniform(rng, margin_x, width - margin_x)
            cy = _uniform(rng, margin_y, height - margin_y)
            score = min(
                (math.hypot(cx - ox, cy - oy) / (r + orr) for (ox, oy), orr in zip(centres, radii, strict=False)),
                default=math.inf,
            )
            if score > best_score:
                best, best_score = (float(cx), float(cy)), score
            if score >= 1.6:
                break
        centres.append(best)

    regions: list[_Blob] = []
    hole_rng = _rng(seed, _STREAM_HOLES)
    hole_blobs: list[_Blob] = []
    for (cx, cy), r in zip(centres, radii, strict=True):
        stretch = float(_uniform(rng, 1.0, 1.5))
        theta0 = float(_uniform(rng, 0.0, math.pi))
        main = _Ellipse(cx, cy, r * stretch * 0.95, r / stretch * 0.95, theta0)
        ellipses = [main]
        for _ in range(int(rng.random() * 3) + 1):
            ang = float(_uniform(rng, 0.0, 2.0 * math.pi))
            dist = float(_uniform(rng, 0.45, 0.8)) * r
            ellipses.append(
                _Ellipse(
                    cx + dist * math.cos(ang),
                    cy + dist * math.sin(ang),
                    r * float(_uniform(rng, 0.35, 0.6)),
                    r * float(_uniform(rng, 0.25, 0.45)),
                    float(_uniform(rng, 0.0, math.pi)),
                )
            )
        noise = _WaveField.random(rng, 7, (0.25 * r, 1.2 * r), 0.22)
        regions.append(_Blob(tuple(ellipses), noise))

        # Holes (lumina / fat): inside the main ellipse, several percent of r.
        for _ in range(int(hole_rng.random() * 4) + 2):
            rho = math.sqrt(float(hole_rng.random())) * 0.6
            ang = float(_uniform(hole_rng, 0.0, 2.0 * math.pi))
            u, v = rho * math.cos(ang) * main.a, rho * math.sin(ang) * main.b
            c, s = math.cos(theta0), math.sin(theta0)
            hr = r * float(_uniform(hole_rng, 0.05, 0.14))
            hole = _Ellipse(
                cx + u * c - v * s,
                cy + u * s + v * c,
                hr * float(_uniform(hole_rng, 1.0, 1.6)),
                hr / float(_uniform(hole_rng, 1.0, 1.6)),
                float(_uniform(hole_rng, 0.0, math.pi)),
            )
            hole_blobs.append(_Blob((hole,), _WaveField.random(hole_rng, 4, (0.6 * hr, 2.0 * hr), 0.15)))

        # Small detached fragments near the region: realistic, and they test
        # that a detector keeps small pieces of tissue.
        for _ in range(int(rng.random() * 3) + 1):
            ang = float(_uniform(rng, 0.0, 2.0 * math.pi))
            dist = float(_uniform(rng, 1.35, 1.7)) * r * stretch
            fr = r * float(_uniform(rng, 0.05, 0.1))
            fx = min(max(cx + dist * math.cos(ang), fr), width - fr)
            fy = min(max(cy + dist * math.sin(ang), fr), height - fr)
            frag = _Ellipse(fx, fy, fr * 1.3, fr / 1.3, float(_uniform(rng, 0.0, math.pi)))
            regions.append(_Blob((frag,), _WaveField.random(rng, 4, (0.5 * fr, 2.0 * fr), 0.2)))

    return regions, hole_blobs, (centres[0][0], centres[0][1], float(radii[0]))


def _make_pen(width: int, height: int, seed: int, anchor: tuple[float, float, float]) -> _Pen:
    """An open loop around the first region, as a pathologist would circle a
    tumour; its radius wobbles around the region's edge so it crosses tissue in
    places but runs mostly on glass."""
    rng = _rng(seed, _STREAM_PEN)
    cx, cy, r = anchor
    half_width = min(max(0.01 * min(width, height), 8.0), 600.0)
    start = float(_uniform(rng, 0.0, 2.0 * math.pi))
    sweep = float(_uniform(rng, 1.1, 1.6)) * math.pi
    t = start + sweep * np.linspace(0.0, 1.0, 97)
    p1, p2 = _uniform(rng, 0.0, 2.0 * math.pi, 2)
    radius = r * (1.12 + 0.15 * np.sin(2.0 * t + p1) + 0.06 * np.sin(5.0 * t + p2))
    xs = np.clip(cx + radius * np.cos(t), half_width, width - half_width)
    ys = np.clip(cy + radius * np.sin(t), half_width, height - half_width)
    colour = "blue" if rng.random() < 0.5 else "green"
    streaks = _WaveField.random(rng, 5, (0.5 * half_width, 8.0 * half_width), 0.12)
    return _Pen(np.stack([xs, ys], axis=1), float(half_width), _OD_PEN[colour], streaks)


def _make_inks(width: int, height: int, seed: int, colours: tuple[str, ...], regions: list[_Blob]) -> tuple[_Pen, ...]:
    """One wavy marker stroke per colour, from the glass across a tissue region and out again."""
    rng = _rng(seed, _STREAM_INK)
    pens = []
    for k, colour in enumerate(colours):
        target = regions[k % len(regions)].ellipses[0]
        half_width = min(max(0.01 * min(width, height), 8.0), 600.0) * float(_uniform(rng, 0.7, 1.3))
        angle = float(_uniform(rng, 0.0, math.pi))
        # long enough to leave the region on both sides, short enough to stay mostly on the slide
        length = min(2.6 * max(max(r.ellipses[0].a, r.ellipses[0].b) for r in regions), 0.6 * min(width, height))
        cx = float(np.clip(target.cx, 0.3 * width, 0.7 * width))
        cy = float(np.clip(target.cy, 0.3 * height, 0.7 * height))
        t = np.linspace(-0.5, 0.5, 41)
        wobble = 0.08 * length * np.sin(2 * math.pi * (t * float(_uniform(rng, 0.7, 1.5)) + float(_uniform(rng, 0, 1))))
        xs = cx + t * length * math.cos(angle) - wobble * math.sin(angle)
        ys = cy + t * length * math.sin(angle) + wobble * math.cos(angle)
        xs = np.clip(xs, half_width, width - half_width)
        ys = np.clip(ys, half_width, height - half_width)
        streaks = _WaveField.random(rng, 5, (0.5 * half_width, 8.0 * half_width), 0.12)
        pens.append(_Pen(np.stack([xs, ys], axis=1), float(half_width), _OD_PEN[colour], streaks))
    return tuple(pens)


def _make_dust(width: int, height: int, seed: int, n: int, mpp: float) -> np.ndarray | None:
    """``n`` dust specks of 5-25 µm radius anywhere on the slide: (n, 3) x, y, radius in level-0 px."""
    if n <= 0:
        return None
    rng = _rng(seed, _STREAM_DUST)
    r = _uniform(rng, 5.0, 25.0, n) / mpp
    return np.stack([_uniform(rng, 0.0, width, n), _uniform(rng, 0.0, height, n), r], axis=1)


# --- rendering ----------------------------------------------------------------


def _hash_uniforms(ix: np.ndarray, iy: np.ndarray, seed: int, n: int) -> list[np.ndarray]:
    """n independent uniforms in [0, 1) per integer grid cell (splitmix64)."""
    with np.errstate(over="ignore"):
        z = ix.astype(_U64) * _U64(0x9E3779B97F4A7C15) + iy.astype(_U64) * _U64(0xC2B2AE3D27D4EB4F)
        z ^= _U64((int(seed) * 0x632BE59BD9B4E019 + 0x1234567) & 0xFFFFFFFFFFFFFFFF)
        out = []
        for _ in range(n):
            z = z + _U64(0x9E3779B97F4A7C15)
            h = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> _U64(27))) * _U64(0x94D049BB133111EB)
            h ^= h >> _U64(31)
            out.append((h >> _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0))
    return out


def _nuclei_coverage(
    layout: _Layout, xs: np.ndarray, ys: np.ndarray, downsample: float, mpp: float, density: np.ndarray
) -> np.ndarray:
    """Fraction of each pixel covered by nuclei, float32 (ny, nx).

    Nuclei are discs on a jittered ``_NUCLEUS_CELL_UM`` grid; a cell holds a
    nucleus with probability ``density``.  When pixels get as large as the
    grid cells, point sampling would alias into salt-and-pepper noise, so the
    coverage fades to its expectation (level of detail).
    """
    cell = _NUCLEUS_CELL_UM / mpp  # level-0 px
    mean = density * np.float32(_MEAN_NUCLEUS_AREA_FRACTION)
    lod = min(max(2.0 * downsample / cell - 1.0, 0.0), 1.0)
    if lod >= 1.0:
        return mean
    ix = np.floor(xs / cell).astype(np.int64)
    iy = np.floor(ys / cell).astype(np.int64)
    gx = np.arange(ix[0], ix[-1] + 1)
    gy = np.arange(iy[0], iy[-1] + 1)
    gxx, gyy = np.meshgrid(gx, gy)
    u_x, u_y, u_r, u_p = _hash_uniforms(gxx, gyy, layout.seed, 4)
    r_um = _NUCLEUS_R_MIN_UM + (_NUCLEUS_R_MAX_UM - _NUCLEUS_R_MIN_UM) * u_r
    r = r_um / mpp
    room = np.maximum(cell - 2.0 * r, 0.0)  # keep each disc inside its cell
    ncx = (gxx * cell + r + room * u_x).astype(np.float32)
    ncy = (gyy * cell + r + room * u_y).astype(np.float32)
    p_here = np.clip(layout.density((gx + 0.5) * cell, (gy + 0.5) * cell) + 0.45, 0.05, 0.95)
    r = np.where(u_p < p_here, r, -2.0 * downsample).astype(np.float32)  # absent -> coverage 0

    li = (ix - ix[0])[None, :]
    lj = (iy - iy[0])[:, None]
    dx = xs.astype(np.float32)[None, :] - ncx[lj, li]
    dy = ys.astype(np.float32)[:, None] - ncy[lj, li]
    dist = np.sqrt(dx * dx + dy * dy)
    # Box-filter antialiasing of the disc edge over one pixel width.
    cov = np.clip((r[lj, li] - dist) * np.float32(1.0 / downsample) + 0.5, 0.0, 1.0)
    if lod > 0.0:
        cov = (1.0 - lod) * cov + lod * mean
    return cov.astype(np.float32, copy=False)


def _glass_tile(tile_size: int, seed: int) -> np.ndarray:
    """Glass intensity, float32 (tile_size, tile_size, 3), periodic with the
    tile size so that every all-glass tile is identical."""
    rng = _rng(seed, _STREAM_GLASS)
    n = tile_size
    white = rng.random((n, n)) - 0.5
    # Smooth periodic texture: white noise low-passed on the torus (FFT), so
    # there are no seams at tile borders.
    f = np.fft.fftfreq(n)
    kernel = np.exp(-((f[:, None] ** 2 + f[None, :] ** 2) * (2.0 * math.pi * 6.0) ** 2) / 2.0)
    smooth = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    smooth *= _GLASS_TEXTURE_STD / max(float(smooth.std()), 1e-12)
    grain = (rng.random((n, n, 3)) - 0.5) * (_GLASS_GRAIN_STD * math.sqrt(12.0))
    glass = _GLASS_LEVEL + smooth[:, :, None] + grain
    return glass.astype(np.float32)


def _to_uint8(intensity: np.ndarray) -> np.ndarray:
    intensity += 0.5
    np.clip(intensity, 0.0, 255.0, out=intensity)
    return intensity.astype(np.uint8)


def _render_grid(
    layout: _Layout, xs: np.ndarray, ys: np.ndarray, downsample: float, mpp: float, glass: np.ndarray
) -> np.ndarray | None:
    """RGB uint8 (ny, nx, 3) of the grid ``ys x xs`` (level-0 pixel centres,
    spaced ``downsample``), or None when the grid holds nothing but glass."""
    tissue = layout.tissue(xs, ys)
    has_tissue = bool(tissue.any())
    pen_dist = layout.pen_distance(xs, ys, pad=float(downsample))
    pen_cov = None
    if pen_dist is not None:
        assert layout.pen is not None
        pen_cov = np.clip((layout.pen.half_width - pen_dist) * np.float32(1.0 / downsample) + 0.5, 0.0, 1.0)
        if not pen_cov.any():
            pen_cov = None
    extra = layout.ink_coverage(xs, ys, float(downsample)) if (layout.inks or layout.dust is not None) else None
    if not has_tissue and pen_cov is None and extra is None:
        return None
    counter_od, nuclear_od, scale = _STAINS[layout.stain]

    od = np.zeros((ys.size, xs.size, 3), np.float32)
    if has_tissue:
        eosin = layout.eosin(xs, ys)
        eosin += 0.95
        hema = layout.hematoxylin(xs, ys)
        hema += 0.12
        density = layout.density(xs, ys)
        density += 0.45
        np.clip(density, 0.05, 0.95, out=density)
        hema += _nuclei_coverage(layout, xs, ys, downsample, mpp, density) * np.float32(_NUCLEUS_OD)
        eosin *= tissue
        hema *= tissue
        if layout.stain == "he":  # the original arithmetic, kept exact
            od += eosin[:, :, None] * _OD_EOSIN
            od += hema[:, :, None] * _OD_HEMATOXYLIN
        else:
            od += eosin[:, :, None] * (counter_od * np.float32(scale))
            od += hema[:, :, None] * (nuclear_od * np.float32(scale))
    if pen_cov is not None:
        assert layout.pen is not None
        opacity = layout.pen.streaks(xs, ys)
        opacity += 0.9
        pen_cov *= opacity
        od += pen_cov[:, :, None] * layout.pen.od
    if extra is not None:
        od += extra
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= glass
    return _to_uint8(od)


def _encode(tile: np.ndarray, quality: int) -> bytes:
    # Same codec call tifffile makes for compression="jpeg" on RGB data with
    # its default subsampling, so the bytes match the tags tifffile writes
    # (Photometric=YCbCr, YCbCrSubSampling=(2, 2), ReferenceBlackWhite).
    return imagecodecs.jpeg8_encode(
        tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
    )


# --- public API ---------------------------------------------------------------


def synthetic_level_dimensions(
    width: int, height: int, *, tile_size: int = 256, n_levels: int | None = None
) -> list[tuple[int, int]]:
    """Pyramid level sizes of a synthetic slide.

    Parameters
    ----------
    width, height
        Level-0 size in pixels.
    tile_size
        Tile edge in pixels; with ``n_levels=None`` levels are added (each 2x
        downsampled) until the level fits in one tile.
    n_levels
        Force this many levels.

    Returns
    -------
    list of (width, height)
        ``(max(1, width // 2**L), max(1, height // 2**L))`` for each level L,
        in pixels of that level, (x, y) order as in OpenSlide's
        ``level_dimensions``.
    """
    if n_levels is None:
        n_levels = 1
        while max(width >> (n_levels - 1), height >> (n_levels - 1)) > tile_size:
            n_levels += 1
    if n_levels < 1:
        raise ValueError("n_levels must be >= 1")
    return [(max(1, width >> k), max(1, height >> k)) for k in range(n_levels)]


def _grid_axes(start: int, size: int, downsample: float) -> np.ndarray:
    return (np.arange(start, start + size, dtype=np.float64) + 0.5) * downsample


def _raster(
    width: int,
    height: int,
    downsample: float,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    if downsample <= 0:
        raise ValueError("downsample must be > 0")
    out_w = max(1, int(width // downsample))
    out_h = max(1, int(height // downsample))
    out = np.zeros((out_h, out_w), bool)
    # Blocks bound the float temporaries for huge slides at fine downsamples.
    for y0 in range(0, out_h, _MASK_BLOCK):
        ys = _grid_axes(y0, min(_MASK_BLOCK, out_h - y0), downsample)
        for x0 in range(0, out_w, _MASK_BLOCK):
            xs = _grid_axes(x0, min(_MASK_BLOCK, out_w - x0), downsample)
            out[y0 : y0 + ys.size, x0 : x0 + xs.size] = fn(xs, ys)
    return out


def synthetic_tissue_mask(
    width: int,
    height: int,
    *,
    downsample: float,
    seed: int = 0,
    kind: Kind = "he",
    n_regions: int | None = None,
    tissue_fraction: float | None = None,
    holes: bool = True,
) -> np.ndarray:
    """Ground-truth tissue mask of a synthetic slide.

    Rasterises the analytic tissue region (holes excluded; the pen mark is
    *not* part of it, see :func:`synthetic_pen_mask`; tissue under ink is
    still tissue) by sampling pixel centres.

    Parameters
    ----------
    width, height
        Level-0 size of the slide in pixels (as passed to
        :func:`write_synthetic_slide`).
    downsample
        Mask pixel size in level-0 pixels.  Mask pixel ``(i, j)`` samples the
        level-0 point ``((i + 0.5) * downsample, (j + 0.5) * downsample)``; for
        ``downsample = 2**L`` this is exactly the grid of pyramid level L.
    seed, kind, n_regions, tissue_fraction, holes
        Must match the values used to write the slide.

    Returns
    -------
    numpy.ndarray
        bool, shape ``(max(1, height // downsample), max(1, width // downsample))``,
        axis order (y, x); True on tissue.
    """
    layout = _make_layout(
        width, height, seed=seed, kind=kind, pen_mark=False, n_regions=n_regions,
        tissue_fraction=tissue_fraction, holes=holes,
    )
    return _raster(width, height, downsample, layout.tissue)


def synthetic_pen_mask(
    width: int,
    height: int,
    *,
    downsample: float,
    seed: int = 0,
    kind: Kind = "he",
    pen_mark: bool | None = None,
    n_regions: int | None = None,
    tissue_fraction: float | None = None,
    inks: Sequence[str] = (),
) -> np.ndarray:
    """Ground-truth pen-ink mask of a synthetic slide (the pen mark and every stroke of ``inks``).

    A pixel is ink when its centre lies within half the stroke width of the
    stroke's centre line (the rendered ink coverage is > 0.5 there).

    Parameters
    ----------
    width, height, downsample
        As for :func:`synthetic_tissue_mask` (level-0 pixels).
    seed, kind, pen_mark, n_regions, tissue_fraction, inks
        Must match the values used to write the slide.

    Returns
    -------
    numpy.ndarray
        bool, shape ``(max(1, height // downsample), max(1, width // downsample))``,
        axis order (y, x); all False when the slide has no pen mark.
    """
    layout = _make_layout(
        width, height, seed=seed, kind=kind, pen_mark=pen_mark, n_regions=n_regions,
        tissue_fraction=tissue_fraction, inks=inks,
    )
    pen = layout.pen

    def fn(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        out = np.zeros((ys.size, xs.size), bool)
        d = layout.pen_distance(xs, ys, pad=0.0)
        if d is not None:
            assert pen is not None
            out |= d < pen.half_width
        box = (float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]))
        for stroke in layout.inks:
            d = stroke.distance(xs, ys, box, pad=0.0)
            if d is not None:
                out |= d < stroke.half_width
        return out

    return _raster(width, height, downsample, fn)


def render_synthetic_region(
    width: int,
    height: int,
    *,
    x: int,
    y: int,
    w: int,
    h: int,
    downsample: int = 1,
    mpp: float = 0.5,
    tile_size: int = 256,
    seed: int = 0,
    kind: Kind = "he",
    pen_mark: bool | None = None,
    n_regions: int | None = None,
    tissue_fraction: float | None = None,
    holes: bool = True,
    stain: str = "he",
    inks: Sequence[str] = (),
    dust: int = 0,
) -> np.ndarray:
    """Exact (pre-JPEG) pixels of a region of a synthetic slide level.

    Parameters
    ----------
    width, height
        Level-0 slide size in pixels.
    x, y, w, h
        Region origin and size **in pixels of the level** whose pixel size is
        ``downsample`` level-0 pixels (not level-0 coordinates, unlike
        OpenSlide's ``read_region`` location).
    downsample
        Level downsample, e.g. ``2**L`` for pyramid level L.
    mpp, tile_size, seed, kind, pen_mark, n_regions, tissue_fraction, holes, stain, inks, dust
        Must match the values used to write the slide (``tile_size`` sets the
        period of the glass texture, ``mpp`` the nucleus scale).

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(h, w, 3)``, axis order (y, x, RGB).
    """
    layout = _make_layout(
        width, height, seed=seed, kind=kind, pen_mark=pen_mark, n_regions=n_regions,
        tissue_fraction=tissue_fraction, holes=holes, mpp=mpp, stain=stain, inks=inks, dust=dust,
    )
    glass_tile = _glass_tile(tile_size, seed)
    rows = np.arange(y, y + h) % tile_size
    cols = np.arange(x, x + w) % tile_size
    glass = glass_tile[rows[:, None], cols[None, :]]
    xs = _grid_axes(x, w, downsample)
    ys = _grid_axes(y, h, downsample)
    rgb = _render_grid(layout, xs, ys, float(downsample), mpp, glass)
    if rgb is None:
        rgb = _to_uint8(glass.copy())
    return rgb


def _describe(params: dict[str, Any]) -> str:
    body = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in params.items())
    return f"{GENERATOR} v{FORMAT_VERSION} synthetic H&E-like slide; {body}"


def _ordered(
    items: Iterator[bytes | Callable[[], bytes]], executor: ThreadPoolExecutor | None, window: int
) -> Iterator[bytes]:
    """Yield bytes in input order; callables run on the executor with at most
    ``window`` in flight (bounded memory)."""
    if executor is None:
        for item in items:
            yield item if isinstance(item, bytes) else item()
        return
    pending: deque[bytes | Future[bytes]] = deque()
    for item in items:
        pending.append(item if isinstance(item, bytes) else executor.submit(item))
        while pending and (isinstance(pending[0], bytes) or len(pending) > window):
            head = pending.popleft()
            yield head if isinstance(head, bytes) else head.result()
    while pending:
        head = pending.popleft()
        yield head if isinstance(head, bytes) else head.result()


def write_synthetic_slide(
    path: PathLike,
    width: int,
    height: int,
    *,
    mpp: float = 0.5,
    tile_size: int = 256,
    n_levels: int | None = None,
    quality: int = 85,
    seed: int = 0,
    kind: Kind = "he",
    pen_mark: bool | None = None,
    n_regions: int | None = None,
    tissue_fraction: float | None = None,
    holes: bool = True,
    stain: str = "he",
    inks: Sequence[str] = (),
    dust: int = 0,
    bigtiff: bool | None = None,
    workers: int | None = None,
) -> Path:
    """Write a deterministic synthetic pyramidal generic-TIFF whole-slide image.

    The file is written to ``path + ".part"`` and renamed into place, so an
    interrupted run never leaves a truncated slide behind.

    Parameters
    ----------
    path
        Output file (``.tiff``/``.tif``).
    width, height
        Level-0 size in pixels.
    mpp
        Level-0 pixel size in µm/px (written as XResolution = YResolution =
        1e4 / mpp pixels per centimetre; level L gets 1e4 / (mpp * 2**L)).
    tile_size
        Tile edge in pixels, a multiple of 16 (JPEG 4:2:0 MCU).
    n_levels
        Number of pyramid levels; default: halve until a level fits in one
        tile (see :func:`synthetic_level_dimensions`).
    quality
        JPEG quality, 1-100.
    seed
        Scene seed; same arguments -> byte-identical file.
    kind
        ``"he"`` (tissue regions with holes on glass), ``"tissue"`` (tissue
        everywhere, no holes) or ``"blank"`` (glass only).
    pen_mark
        Draw a blue/green ink stroke around the first region.  Default: True
        for ``kind="he"``, False otherwise.
    n_regions
        Number of main tissue regions (default 3; small fragments are added).
    tissue_fraction
        Approximate fraction of the slide area covered by the main regions
        (default 0.3); use e.g. 0.02 for a mostly-glass slide.
    holes
        Cut lumina/fat holes into the regions.
    stain
        Tissue colours: ``"he"`` (eosin + hematoxylin), ``"hematoxylin"``
        (nuclear stain only), ``"blue"`` (Giemsa / toluidine-like, as blue as
        the blue pen), ``"pale"`` (H&E at 0.3 of the density), ``"ihc"`` (DAB
        brown with a light hematoxylin counterstain).
    inks
        Extra marker strokes, one per colour (``"blue"``, ``"green"``,
        ``"black"``, ``"red"``), each running from the glass across a tissue
        region; :func:`synthetic_pen_mask` with the same ``inks`` is their truth.
    dust
        Number of grey-black dust specks (5-25 µm radius) anywhere on the slide.
    bigtiff
        Force (True) or forbid (False) BigTIFF; default: BigTIFF when the
        uncompressed pyramid would not fit 4 GiB offsets.
    workers
        Rendering/encoding threads (default: ``min(4, os.cpu_count())``).
        Does not change the output.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    Format: one top-level IFD per level (level 0 first; NewSubfileType = 1
    "reduced image" on levels > 0), tiled ``tile_size`` x ``tile_size``,
    Compression = 7 (JPEG, each tile a complete JPEG stream, quality
    ``quality``), Photometric = YCbCr with YCbCrSubSampling (2, 2) and
    ReferenceBlackWhite, 8-bit RGB, ResolutionUnit = centimeter,
    ImageDescription (level 0) naming the generator and all parameters,
    Software = ``mask_first.synthetic``; no DateTime tag.  All-glass tiles are
    encoded once and their bytes reused.
    """
    path = Path(path)
    _check_kind(kind)
    if tile_size < 16 or tile_size % 16:
        raise ValueError("tile_size must be a positive multiple of 16")
    if not 1 <= quality <= 100:
        raise ValueError("quality must be in 1..100")
    if not mpp > 0:
        raise ValueError("mpp must be > 0")
    layout = _make_layout(
        width, height, seed=seed, kind=kind, pen_mark=pen_mark, n_regions=n_regions,
        tissue_fraction=tissue_fraction, holes=holes, mpp=mpp, stain=stain, inks=inks, dust=dust,
    )
    dims = synthetic_level_dimensions(width, height, tile_size=tile_size, n_levels=n_levels)
    if bigtiff is None:
        # Same threshold tifffile.imwrite uses, applied to the uncompressed
        # pyramid: conservative (JPEG is far smaller) but never wrong.
        bigtiff = sum(w * h * 3 for w, h in dims) > 2**32 - 2**25
    if workers is None:
        workers = min(4, os.cpu_count() or 1)

    glass = _glass_tile(tile_size, seed)
    glass_bytes = _encode(_to_uint8(glass.copy()), quality)
    description = _describe(
        {
            "width": width,
            "height": height,
            "mpp": mpp,
            "tile_size": tile_size,
            "levels": len(dims),
            "quality": quality,
            "seed": seed,
            "kind": kind,
            "pen_mark": layout.pen is not None,
            "n_regions": _DEFAULT_N_REGIONS if n_regions is None else n_regions,
            "tissue_fraction": _DEFAULT_TISSUE_FRACTION if tissue_fraction is None else tissue_fraction,
            "holes": holes,
            # the newer scene options are named only when used, so older slides keep their bytes
            **({"stain": stain} if stain != "he" else {}),
            **({"inks": ",".join(inks)} if inks else {}),
            **({"dust": int(dust)} if dust else {}),
        }
    )

    def level_items(level: int, lw: int, lh: int) -> Iterator[bytes | Callable[[], bytes]]:
        d = 1 << level
        nx, ny = -(-lw // tile_size), -(-lh // tile_size)
        candidates = layout.candidate_tiles(d, tile_size, nx, ny)
        for ty in range(ny):
            for tx in range(nx):
                if not candidates[ty, tx]:
                    yield glass_bytes
                    continue

                def job(tx: int = tx, ty: int = ty) -> bytes:
                    xs = _grid_axes(tx * tile_size, tile_size, d)
                    ys = _grid_axes(ty * tile_size, tile_size, d)
                    rgb = _render_grid(layout, xs, ys, float(d), mpp, glass)
                    return glass_bytes if rgb is None else _encode(rgb, quality)

                yield job

    tmp = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    executor = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            for level, (lw, lh) in enumerate(dims):
                pixels_per_cm = 1e4 / (mpp * (1 << level))
                tif.write(
                    _ordered(level_items(level, lw, lh), executor, window=8 * workers),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(tile_size, tile_size),
                    photometric="rgb",
                    compression="jpeg",
                    subsampling=(2, 2),
                    subfiletype=1 if level else 0,
                    resolution=(pixels_per_cm, pixels_per_cm),
                    resolutionunit="CENTIMETER",
                    description=description if level == 0 else None,
                    software=GENERATOR if level == 0 else False,
                    metadata=None,
                )
        os.replace(tmp, path)
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
        if tmp.exists():
            tmp.unlink()
    return path


def demo_cohort_specs(*, large_size: int = 20480) -> list[dict[str, Any]]:
    """Parameters of the demo cohort written by :func:`write_demo_cohort`.

    Returns
    -------
    list of dict
        One dict per slide with key ``"slide_id"`` (file stem) plus keyword
        arguments of :func:`write_synthetic_slide` (``width``/``height`` in
        level-0 pixels, ``mpp`` in µm/px, ...), so ground truth can be
        recomputed with :func:`synthetic_tissue_mask`.
    """
    return [
        # Small, tissue-rich: holes, fragments and a pen mark crossing tissue.
        dict(slide_id="demo-small-he", width=4096, height=3072, mpp=0.5, seed=101,
             kind="he", pen_mark=True, n_regions=3, tissue_fraction=0.3),
        # Medium at "40x" (0.25 µm/px): exercises mpp-aware level choice.
        dict(slide_id="demo-medium-40x", width=8192, height=6144, mpp=0.25, seed=202,
             kind="he", pen_mark=True, n_regions=4, tissue_fraction=0.2),
        # Large and mostly glass: reading every tile is slow, mask-first is fast.
        dict(slide_id="demo-large-sparse", width=large_size, height=large_size, mpp=0.5,
             seed=303, kind="he", pen_mark=True, n_regions=3, tissue_fraction=0.03),
    ]


def write_demo_cohort(outdir: PathLike, *, large_size: int = 20480, workers: int | None = None) -> list[Path]:
    """Write the demo cohort (3 slides) into ``outdir``.

    Parameters
    ----------
    outdir
        Output directory (created if missing); files are ``<slide_id>.tiff``.
    large_size
        Level-0 width = height of the large sparse slide, in pixels.
    workers
        Threads per slide, see :func:`write_synthetic_slide`.

    Returns
    -------
    list of pathlib.Path
        The written slides, in :func:`demo_cohort_specs` order.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in demo_cohort_specs(large_size=large_size):
        spec = dict(spec)
        slide_id = spec.pop("slide_id")
        width, height = spec.pop("width"), spec.pop("height")
        paths.append(write_synthetic_slide(outdir / f"{slide_id}.tiff", width, height, workers=workers, **spec))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m mask_first.synthetic OUTDIR [--large-size N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mask_first.synthetic", description="Write the synthetic demo cohort."
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--large-size", type=int, default=20480, help="large slide edge in level-0 px")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    for p in write_demo_cohort(args.outdir, large_size=args.large_size, workers=args.workers):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
