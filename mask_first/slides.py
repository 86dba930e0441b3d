"""Open whole-slide images, read their pyramid metadata and pixels, build the slide table.

Two backends sit behind one :class:`Slide` interface:

* :class:`TiffSlide` for the TIFF family (Aperio SVS, generic tiled or stripped
  TIFF, OME-TIFF with SubIFD pyramids). It decodes the stored tiles directly
  with tifffile + imagecodecs, which is several times faster than OpenSlide's
  ``read_region`` and also reads files OpenSlide rejects (strip TIFFs, OME
  SubIFD pyramids).
* :class:`OpenSlideSlide` for vendor formats and DICOM through OpenSlide 4.

Conventions used throughout the package
---------------------------------------
* Coordinates are pixels at a named pyramid level, ``x`` to the right and ``y``
  down, origin at the top-left corner of the slide.
* Images are numpy arrays in (y, x, channel) order, ``uint8`` RGB.
* ``mpp`` is microns per pixel (µm/px); ``mpp_x`` is the physical width of one
  pixel, ``mpp_y`` its height.
* Level ``k`` has per-axis downsamples ``width_0 / width_k`` and
  ``height_0 / height_k`` relative to level 0, so its mpp is ``mpp_0 * downsample``.
"""

from __future__ import annotations

import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mask_first.columns import is_column, to_numpy
from mask_first.ids import stable_id

__all__ = [
    "SlideError",
    "Slide",
    "TiffSlide",
    "OpenSlideSlide",
    "open_slide",
    "choose_level",
    "read_slides",
]

#: mpp above this (µm/px) is treated as "no mpp": it is what 72/96 dpi defaults
#: written by image editors look like, not a microscope resolution.
_MAX_PLAUSIBLE_MPP = 100.0

#: a level counts as "not coarser than the target" when its mpp is within this
#: relative tolerance, so a 0.2527 µm/px scan serves a 0.25 µm/px request.
MPP_TOLERANCE = 0.1

WHITE = 255


class SlideError(ValueError):
    """A slide cannot be used; the message names the file and the cause."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and downsample relative to level 0."""

    width: int
    height: int
    downsample_x: float
    downsample_y: float


class Slide:
    """A whole-slide image pyramid (abstract base).

    Attributes
    ----------
    path : pathlib.Path
    vendor : str
        ``"aperio"``, ``"ome"``, ``"generic-tiff"`` or OpenSlide's vendor name.
    levels : list of Level
        Level 0 first, each coarser than the previous.
    mpp_x, mpp_y : float
        Level-0 resolution in µm/px.
    """

    path: Path
    vendor: str
    levels: list[Level]
    mpp_x: float
    mpp_y: float

    # -- metadata ---------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) in pixels of every level."""
        return [(lv.width, lv.height) for lv in self.levels]

    def level_mpp(self, level: int) -> tuple[float, float]:
        """(mpp_x, mpp_y) in µm/px of ``level``."""
        lv = self.levels[level]
        return self.mpp_x * lv.downsample_x, self.mpp_y * lv.downsample_y

    def stored_tile_size(self, level: int) -> tuple[int, int] | None:
        """(width, height) in pixels of the stored tiles (or strips) of ``level``.

        Reading a region that is exactly one stored tile is the cheapest read
        there is (decoded straight into the caller's array). None when the
        backend does not expose its storage (OpenSlide).
        """
        return None

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose resolution is not coarser than ``mpp``; see :func:`choose_level`."""
        return choose_level([self.level_mpp(k) for k in range(self.level_count)], mpp)

    # -- pixels -----------------------------------------------------------
    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of a rectangle of ``level``.

        Parameters
        ----------
        level : int
        x, y : int
            Top-left corner in pixels of ``level`` (may be negative or past the edge).
        width, height : int
            Size in pixels of ``level``.

        Returns
        -------
        ndarray of uint8, shape (height, width, 3)
            Area outside the slide is white (255), like OpenSlide's
            ``read_region`` composited on a white background.
        """
        out = np.empty((1, height, width, 3), np.uint8)
        self.read_regions_into(level, np.array([x]), np.array([y]), width, height, out)
        return out[0]

    def read_level(self, level: int) -> np.ndarray:
        """The whole of ``level`` as (height, width, 3) uint8 RGB."""
        lv = self.levels[level]
        return self.read_region(level, 0, 0, lv.width, lv.height)

    def read_regions_into(
        self,
        level: int,
        xs: np.ndarray,
        ys: np.ndarray,
        width: int,
        height: int,
        out: np.ndarray,
        threads: int = 1,
    ) -> None:
        """Fill ``out[i]`` (height, width, 3) with the region at ``(xs[i], ys[i])`` of ``level``.

        ``xs``, ``ys`` are pixels of ``level``; ``threads`` decoder threads may be used.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# TIFF family: decode stored tiles directly
# ---------------------------------------------------------------------------


class _TiffLevelReader:
    """Decodes the stored tiles (or strips) of one TIFF page on demand.

    The page is seen as a grid of segments of ``seg_h x seg_w`` pixels (tiles,
    or strips of ``rowsperstrip`` rows spanning the width). Decoded segments
    are kept in a small LRU cache because neighbouring requests (overlapping
    strides, tiles straddling segment borders) need the same segments.
    """

    def __init__(self, page, fd: int, cache_segments: int = 256, name: str = "", level: int = 0):
        self.page = page
        self.name = name
        self.level = level
        self.fd = fd
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        if page.is_tiled:
            self.seg_w, self.seg_h = int(page.tilewidth), int(page.tilelength)
        else:
            self.seg_w, self.seg_h = self.width, int(min(page.rowsperstrip or self.height, self.height))
        self.n_x = -(-self.width // self.seg_w)
        self.n_y = -(-self.height // self.seg_h)
        self.offsets = np.asarray(page.dataoffsets, np.int64)
        self.counts = np.asarray(page.databytecounts, np.int64)
        self.samples = int(page.samplesperpixel)
        self._decode = page.decode
        self._jpegtables = page.jpegtables
        # 8-bit RGB JPEG segments can be decoded by libjpeg straight into the
        # caller's array: no intermediate array, no copy
        self._jpeg_colorspaces = None
        if page.compression == 7 and page.bitspersample == 8 and self.samples == 3 and not page.extrasamples:
            if page.photometric == 6:  # YCbCr stored, RGB out: libjpeg converts
                self._jpeg_colorspaces = (None, 2)
            elif page.photometric == 2:  # RGB stored; Aperio writes it without a JFIF marker
                self._jpeg_colorspaces = (None if page.is_jfif else 2, 2)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_segments
        self._lock = threading.Lock()

    def decode_segment(self, index: int) -> np.ndarray:
        """Segment ``index`` (row-major) as (seg_h, seg_w, 3) uint8; blank segments are white."""
        with self._lock:
            hit = self._cache.get(index)
            if hit is not None:
                self._cache.move_to_end(index)
                return hit
        count = int(self.counts[index])
        if count == 0:  # sparse TIFF: a segment never written is background
            arr = np.full((self.seg_h, self.seg_w, 3), WHITE, np.uint8)
        else:
            data = os.pread(self.fd, count, int(self.offsets[index]))
            try:
                arr = self._decode(data, index, jpegtables=self._jpegtables)[0]
            except Exception as exc:
                raise self._corrupt(index, exc) from None
            arr = arr.reshape(arr.shape[-3:])
            arr = _to_rgb(arr)
        with self._lock:
            self._cache[index] = arr
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return arr

    def is_whole_segment(self, index: int, x: int, y: int, width: int, height: int) -> bool:
        """True when the region is exactly segment ``index`` and lies inside the image."""
        j, i = divmod(index, self.n_x)
        sx0, sy0 = i * self.seg_w, j * self.seg_h
        return (
            x == sx0 and y == sy0 and width == self.seg_w and height == self.seg_h
            and sx0 + width <= self.width and sy0 + height <= self.height
        )

    def decode_into(self, index: int, out: np.ndarray) -> None:
        """Decode segment ``index`` into ``out`` (seg_h, seg_w, 3), bypassing the cache."""
        count = int(self.counts[index])
        if self._jpeg_colorspaces is None or count == 0:
            out[...] = self.decode_segment(index)
            return
        import imagecodecs

        data = os.pread(self.fd, count, int(self.offsets[index]))
        cs, ocs = self._jpeg_colorspaces
        try:
            imagecodecs.jpeg8_decode(data, tables=self._jpegtables, colorspace=cs, outcolorspace=ocs, out=out)
        except Exception as exc:
            raise self._corrupt(index, exc) from None

    def _corrupt(self, index: int, exc: Exception) -> "SlideError":
        j, i = divmod(index, self.n_x)
        return SlideError(
            f"{self.name}: corrupt image data in level {self.level} at stored tile "
            f"(x={i * self.seg_w}, y={j * self.seg_h}): {type(exc).__name__}: {exc}".replace("\n", " ")
        )

    def segments_for(self, x0: int, y0: int, x1: int, y1: int) -> list[int]:
        """Row-major indices of the segments touching the clipped box [x0, x1) x [y0, y1)."""
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1, self.width), min(y1, self.height)
        if cx0 >= cx1 or cy0 >= cy1:
            return []
        sx = range(cx0 // self.seg_w, (cx1 - 1) // self.seg_w + 1)
        sy = range(cy0 // self.seg_h, (cy1 - 1) // self.seg_h + 1)
        return [j * self.n_x + i for j in sy for i in sx]

    def paste(self, index: int, seg: np.ndarray, x: int, y: int, out: np.ndarray) -> None:
        """Copy the part of segment ``index`` that lies in the region at (x, y) into ``out``."""
        j, i = divmod(index, self.n_x)
        sx0, sy0 = i * self.seg_w, j * self.seg_h
        # clip to the segment, the image and the requested region at once
        ax0 = max(sx0, x)
        ay0 = max(sy0, y)
        ax1 = min(sx0 + self.seg_w, self.width, x + out.shape[1])
        ay1 = min(sy0 + self.seg_h, self.height, y + out.shape[0])
        if ax0 >= ax1 or ay0 >= ay1:
            return
        out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = seg[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """(h, w, s) uint8 -> (h, w, 3): grey replicated, alpha composited on white."""
    if arr.dtype != np.uint8:
        raise TypeError(f"only 8-bit samples are supported, got {arr.dtype}")
    s = arr.shape[-1]
    if s == 3:
        return arr
    if s == 1:
        return np.repeat(arr, 3, axis=-1)
    if s == 4:
        a = arr[..., 3:4].astype(np.uint16)
        rgb = (arr[..., :3] * a + WHITE * (255 - a) + 127) // 255
        return rgb.astype(np.uint8)
    raise TypeError(f"unsupported samples per pixel: {s}")


def _parse_tiff_mpp(tif, page) -> tuple[float | None, float | None]:
    """Level-0 mpp from Aperio description, OME-XML or TIFF resolution tags."""
    if tif.is_svs:
        m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if m:
            v = float(m.group(1))
            return v, v
    if tif.is_ome:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pix = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            factors = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
            vals = []
            for ax in ("X", "Y"):
                size = pix.get(f"PhysicalSize{ax}")
                unit = pix.get(f"PhysicalSize{ax}Unit", "µm")
                vals.append(float(size) * factors[unit] if size and unit in factors else None)
            if vals[0]:
                return vals[0], vals[1] or vals[0]
        except (ET.ParseError, StopIteration, ValueError):
            pass
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        unit = int(tags["ResolutionUnit"].value)
        per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
        if per_unit_um:
            out = []
            for name in ("XResolution", "YResolution"):
                num, den = tags[name].value if name in tags else tags["XResolution"].value
                out.append(per_unit_um * den / num if num else None)
            if out[0] and out[0] < _MAX_PLAUSIBLE_MPP:
                return out[0], out[1] or out[0]
    return None, None


class TiffSlide(Slide):
    """Slide backed by tifffile; pixels come from the stored tiles or strips."""

    def __init__(self, path: str | os.PathLike, tif, mpp_override: float | None = None, require_mpp: bool = True):
        import tifffile  # noqa: F401  (imported for the type of ``tif``)

        self.path = Path(path)
        self._tif = tif
        series = tif.series[0]
        self.vendor = "aperio" if tif.is_svs else "ome" if tif.is_ome else "generic-tiff"
        pages = [lv.keyframe for lv in series.levels]
        for p in pages:
            if p.dtype != np.uint8 or p.samplesperpixel not in (1, 3, 4) or p.planarconfig != 1:
                raise SlideError(
                    f"{self.path.name}: unsupported TIFF layout (dtype {p.dtype}, "
                    f"{p.samplesperpixel} samples, planar config {p.planarconfig}); 8-bit RGB expected"
                )
        w0, h0 = pages[0].imagewidth, pages[0].imagelength
        self.levels = [
            Level(int(p.imagewidth), int(p.imagelength), w0 / p.imagewidth, h0 / p.imagelength) for p in pages
        ]
        mx, my = _parse_tiff_mpp(tif, pages[0])
        self.mpp_x, self.mpp_y = _resolve_mpp(self.path, mx, my, mpp_override, require_mpp)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._readers = [_TiffLevelReader(p, self._fd, name=self.path.name, level=k) for k, p in enumerate(pages)]

    def stored_tile_size(self, level: int) -> tuple[int, int]:
        r = self._readers[level]
        return r.seg_w, r.seg_h

    def read_regions_into(self, level, xs, ys, width, height, out, threads: int = 1) -> None:
        reader = self._readers[level]
        xs = np.asarray(xs, np.int64).tolist()
        ys = np.asarray(ys, np.int64).tolist()
        direct: list[tuple[int, int]] = []  # (request, segment) decoded straight into out
        pasted: list[tuple[int, list[int]]] = []  # requests assembled from cached segments
        for k, (x, y) in enumerate(zip(xs, ys)):
            segs = reader.segments_for(x, y, x + width, y + height)
            if len(segs) == 1 and reader.is_whole_segment(segs[0], x, y, width, height):
                direct.append((k, segs[0]))
            else:
                pasted.append((k, segs))
        unique = sorted({s for _, segs in pasted for s in segs})
        jobs = [lambda k=k, s=s: reader.decode_into(s, out[k]) for k, s in direct]
        jobs += [lambda s=s: reader.decode_segment(s) for s in unique]
        if threads > 1 and len(jobs) > 1:
            # imagecodecs releases the GIL while decoding, so threads scale
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(lambda job: job(), jobs))
        else:
            results = [job() for job in jobs]
        decoded = dict(zip(unique, results[len(direct):]))
        for k, segs in pasted:
            x, y, tile = xs[k], ys[k], out[k]
            if not (x >= 0 and y >= 0 and x + width <= reader.width and y + height <= reader.height):
                tile[...] = WHITE
            for s in segs:
                reader.paste(s, decoded[s], x, y, tile)

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()


# ---------------------------------------------------------------------------
# OpenSlide: vendor formats and DICOM
# ---------------------------------------------------------------------------


class OpenSlideSlide(Slide):
    """Slide backed by OpenSlide 4 (``openslide-bin``); regions are composited on white."""

    def __init__(self, path: str | os.PathLike, osr, mpp_override: float | None = None, require_mpp: bool = True):
        self.path = Path(path)
        self._osr = osr
        props = osr.properties
        self.vendor = props.get("openslide.vendor", "unknown")
        w0, h0 = osr.level_dimensions[0]
        self.levels = [Level(int(w), int(h), w0 / w, h0 / h) for w, h in osr.level_dimensions]
        mx = props.get("openslide.mpp-x")
        my = props.get("openslide.mpp-y")
        self.mpp_x, self.mpp_y = _resolve_mpp(
            self.path, float(mx) if mx else None, float(my) if my else None, mpp_override, require_mpp
        )

    def read_regions_into(self, level, xs, ys, width, height, out, threads: int = 1) -> None:
        lv = self.levels[level]
        for k, (x, y) in enumerate(zip(np.asarray(xs).tolist(), np.asarray(ys).tolist())):
            # OpenSlide takes the origin in level-0 pixels
            x0 = int(round(x * lv.downsample_x))
            y0 = int(round(y * lv.downsample_y))
            try:
                rgba = np.asarray(self._osr.read_region((x0, y0), level, (width, height)))
            except Exception as exc:  # OpenSlide reports corrupt tiles as OpenSlideError
                raise SlideError(f"{self.path.name}: cannot read level {level} at ({x}, {y}): {exc}") from None
            out[k] = _to_rgb(rgba)

    def close(self) -> None:
        self._osr.close()


# ---------------------------------------------------------------------------
# opening
# ---------------------------------------------------------------------------


def _resolve_mpp(path: Path, mx, my, override, require_mpp: bool = True) -> tuple[float, float]:
    if override is not None and not (isinstance(override, float) and np.isnan(override)):
        v = float(override)
        if not v > 0:
            raise SlideError(f"{path.name}: mpp override must be positive, got {override}")
        return v, v
    if not mx and not require_mpp:
        return float("nan"), float("nan")  # pixel reads at a level need no mpp
    if not mx:
        raise SlideError(
            f"{path.name}: no microns-per-pixel (mpp) in the slide metadata; "
            "give an mpp override (sample sheet column 'mpp')"
        )
    return float(mx), float(my or mx)


#: TIFF-based vendor formats whose pyramids tifffile would read differently from OpenSlide
_OPENSLIDE_TIFF_FLAVOURS = ("is_ndpi", "is_scn", "is_philips", "is_bif", "is_qpi")


def open_slide(path: str | os.PathLike, mpp_override: float | None = None, *, require_mpp: bool = True) -> Slide:
    """Open a whole-slide image with the fastest backend that reads it.

    Parameters
    ----------
    path : path-like
    mpp_override : float, optional
        Level-0 resolution in µm/px to use instead of the file's metadata
        (for slides whose metadata lacks it).
    require_mpp : bool
        When False, a slide without mpp metadata (and no override) opens with
        ``mpp_x = mpp_y = nan`` instead of raising: reading stored pixels at a
        level needs no physical resolution (used by the pixel readers).

    Returns
    -------
    Slide
        :class:`TiffSlide` for SVS, generic and OME TIFF; :class:`OpenSlideSlide`
        for everything OpenSlide reads otherwise (DICOM, vendor formats).

    Raises
    ------
    SlideError
        One line naming the file and the cause: missing, unreadable, no mpp.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: slide file not found")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    if path.stat().st_size == 0:
        raise SlideError(f"{path.name}: file is empty")
    tiff_error = None
    try:
        import tifffile

        tif = tifffile.TiffFile(path)
    except Exception as exc:  # not a TIFF: try OpenSlide next
        tif, tiff_error = None, exc
    if tif is not None:
        if not any(getattr(tif, flag, False) for flag in _OPENSLIDE_TIFF_FLAVOURS) and tif.series:
            try:
                slide = TiffSlide(path, tif, mpp_override, require_mpp)
                _check_tiff_complete(slide)
                return slide
            except SlideError:
                tif.close()
                raise
            except Exception as exc:
                tif.close()
                raise SlideError(f"{path.name}: unreadable TIFF slide ({type(exc).__name__}: {exc})") from exc
        tif.close()
    try:
        import openslide

        osr = openslide.OpenSlide(str(path))
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        if tiff_error is not None:
            cause = f"not a TIFF ({tiff_error}) and OpenSlide cannot read it ({cause})"
        raise SlideError(f"{path.name}: not a readable slide: {cause}") from None
    return OpenSlideSlide(path, osr, mpp_override, require_mpp)


def _check_tiff_complete(slide: TiffSlide) -> None:
    """Reject truncated files up front: every stored segment must lie inside the file."""
    size = slide.path.stat().st_size
    for k, r in enumerate(slide._readers):
        ends = r.offsets + r.counts
        if len(ends) and int(ends.max()) > size:
            raise SlideError(
                f"{slide.path.name}: file is truncated (level {k} data ends at byte "
                f"{int(ends.max())}, file has {size} bytes)"
            )


# ---------------------------------------------------------------------------
# level choice and the slide table
# ---------------------------------------------------------------------------


def choose_level(level_mpps: Sequence[tuple[float, float]], mpp: float, tolerance: float = MPP_TOLERANCE) -> int:
    """Pick the pyramid level to read for a target resolution.

    The rule is: the **coarsest level whose mpp is not coarser than the target**
    (``max(mpp_x, mpp_y) <= mpp * (1 + tolerance)``), so pixels are only ever
    downsampled, never invented. If every level is coarser, level 0.

    Parameters
    ----------
    level_mpps : sequence of (mpp_x, mpp_y)
        Resolution of each level in µm/px, level 0 first.
    mpp : float
        Target resolution in µm/px.
    tolerance : float
        Relative slack, so scans at 0.2527 µm/px serve a 0.25 µm/px target.
    """
    best = 0
    for k, (mx, my) in enumerate(level_mpps):
        if max(mx, my) <= mpp * (1 + tolerance):
            best = k
    return best


def _pair(v) -> tuple[int, int]:
    if np.ndim(v) == 0:
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def slide_row(
    path: str | os.PathLike,
    *,
    mpp: float | None = None,
    level: int | None = None,
    tile_extent,
    stride,
    mpp_override: float | None = None,
) -> dict:
    """One row of the slide table (see :func:`read_slides`)."""
    if (mpp is None) == (level is None):
        raise ValueError("give exactly one of 'mpp' or 'level'")
    tx, ty = _pair(tile_extent)
    sx, sy = _pair(stride)
    if min(tx, ty, sx, sy) <= 0:
        raise ValueError(f"tile_extent and stride must be positive, got {tile_extent}, {stride}")
    with open_slide(path, mpp_override) as slide:
        if level is None:
            lvl = slide.best_level_for_mpp(mpp)
        else:
            if not 0 <= level < slide.level_count:
                raise SlideError(f"{Path(path).name}: level {level} requested, slide has {slide.level_count}")
            lvl = level
        lmx, lmy = slide.level_mpp(lvl)
        lv = slide.levels[lvl]
        if mpp is not None:
            # tile_extent/stride are given at the target mpp; at the chosen level
            # the same physical area needs this many pixels
            tx, ty = round(tx * mpp / lmx), round(ty * mpp / lmy)
            sx, sy = round(sx * mpp / lmx), round(sy * mpp / lmy)
        row = {
            "path": str(path),
            "level": lvl,
            "downsample": float(np.sqrt(lv.downsample_x * lv.downsample_y)),
            "extent_x": lv.width,
            "extent_y": lv.height,
            "tile_extent_x": tx,
            "tile_extent_y": ty,
            "stride_x": sx,
            "stride_y": sy,
            "mpp_x": lmx,
            "mpp_y": lmy,
            "level0_mpp_x": slide.mpp_x,
            "level0_mpp_y": slide.mpp_y,
            "level_count": slide.level_count,
            "vendor": slide.vendor,
        }
    row["id"] = stable_id(
        {k: row[k] for k in ("path", "level", "tile_extent_x", "tile_extent_y", "stride_x", "stride_y")}
        | {"mpp_x": lmx, "mpp_y": lmy}
    )
    return row


#: file name endings read_slides picks from a directory (the seed's list)
SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".dcm", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi",
)


def _slide_paths(paths) -> list:
    """Slide files from a file, a directory, or a list / column of files."""
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and f.name.lower().endswith(SLIDE_EXTENSIONS))
            if not found:
                raise SlideError(f"{p}: directory holds no slide files ({', '.join(SLIDE_EXTENSIONS)})")
            return found
        return [paths]
    if is_column(paths) and not isinstance(paths, (list, tuple)):
        return to_numpy(paths).tolist()
    return list(paths)


def read_slides(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    mpp: float | None = None,
    level: int | None = None,
    tile_extent,
    stride,
    mpp_override: float | None | Sequence[float | None] = None,
) -> "pandas.DataFrame":
    """The slide table: one row per slide with the level to tile and its geometry.

    Parameters
    ----------
    paths : path, directory, or iterable / column of paths
        A slide file, a directory (its files with a slide extension, see
        :data:`SLIDE_EXTENSIONS`, sorted by name, like the seed's
        ``read_slides("data", ...)``), or a list, numpy array, pandas Series
        or pyarrow array of slide files.
    mpp : float, optional
        Target resolution in µm/px. The level read is chosen by :func:`choose_level`
        and ``tile_extent``/``stride`` are rescaled to that level so a tile covers
        ``tile_extent * mpp`` µm. Exactly one of ``mpp``/``level``.
    level : int, optional
        Pyramid level to tile; ``tile_extent``/``stride`` are then in its pixels.
    tile_extent, stride : int or (int, int)
        Tile size and step (x, y) in pixels at the target mpp (or ``level``).
    mpp_override : float or sequence / column of float, optional
        Level-0 µm/px to use instead of the metadata, one value for all slides or
        one per slide (None or NaN where the metadata should be used).

    Returns
    -------
    pandas.DataFrame
        Columns ``id`` (stable hash of path and tiling parameters), ``path``,
        ``level``, ``downsample``, ``extent_x``, ``extent_y`` (level size in
        pixels), ``tile_extent_x/y``, ``stride_x/y`` (pixels of ``level``),
        ``mpp_x``, ``mpp_y`` (µm/px of ``level``), ``level0_mpp_x/y``,
        ``level_count``, ``vendor``.

    Raises
    ------
    SlideError
        For the first slide that cannot be used, naming it and the cause.
    """
    paths = _slide_paths(paths)
    if mpp_override is None or isinstance(mpp_override, (int, float)) or np.ndim(mpp_override) == 0:
        overrides = [mpp_override] * len(paths)
    else:
        overrides = [None if v is None else float(v) for v in to_numpy(mpp_override).tolist()]
    if len(overrides) != len(paths):
        raise ValueError(f"{len(overrides)} mpp overrides for {len(paths)} slides")
    rows = [
        slide_row(p, mpp=mpp, level=level, tile_extent=tile_extent, stride=stride, mpp_override=o)
        for p, o in zip(paths, overrides)
    ]
    columns = [
        "id", "path", "level", "downsample", "extent_x", "extent_y", "tile_extent_x", "tile_extent_y",
        "stride_x", "stride_y", "mpp_x", "mpp_y", "level0_mpp_x", "level0_mpp_y", "level_count", "vendor",
    ]  # fmt: skip
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)
