"""Open whole-slide images, read their pyramid metadata and pixels, build the slide table.

Two backends sit behind one :class:`Slide` interface:

* :class:`TiffSlide` for the TIFF family (Aperio SVS, generic tiled or stripped
  TIFF, OME-TIFF with SubIFD pyramids). It decodes the stored tiles directly
  with tifffile + imagecodecs (JPEG tiles with libjpeg-turbo's TurboJPEG,
  straight into the output, when libturbojpeg is installed: :mod:`mask_first.jpeg`),
  which is several times faster than OpenSlide's ``read_region`` and also reads
  files OpenSlide rejects (strip TIFFs, OME SubIFD pyramids).
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
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mask_first.columns import is_column, to_numpy
from mask_first.columns import xy_pair
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

#: native pixels held at once while resampling (bytes): small enough to stay
#: cache-warm between decode and resize (8 MB beat 64 MB by ~15 % in bench runs)
RESAMPLE_CHUNK_BYTES = 8 << 20


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

    def stored_jpeg(self, level: int, xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> list:
        """The stored JPEG stream of each request that is exactly one stored tile, else None.

        A request qualifies when its region, in pixels of ``level``, is one
        whole stored JPEG tile inside the image; its stream is made complete
        (the page's JPEGTables, an Adobe RGB marker for RGB-coded tiles), so
        any JPEG decoder gives the pixels :meth:`read_regions_into` gives.
        This base class (OpenSlide's formats) has none.
        """
        return [None] * len(xs)

    def read_resampled_into(
        self,
        level: int,
        xs: np.ndarray,
        ys: np.ndarray,
        width: int,
        height: int,
        out: np.ndarray,
        threads: int = 1,
    ) -> None:
        """Fill ``out[i]`` with the region at ``(xs[i], ys[i])`` of ``level``, area-averaged to ``out``'s size.

        Parameters
        ----------
        level : int
        xs, ys : array of int, shape (N,)
            Top-left corners in pixels of ``level``.
        width, height : int
            Region read, in pixels of ``level``.
        out : ndarray of uint8, shape (N, out_h, out_w, 3)
            Delivered tiles; when ``(out_h, out_w) == (height, width)`` this is
            :meth:`read_regions_into`.
        threads : int

        Notes
        -----
        Shrinking uses OpenCV's ``INTER_AREA``: each output pixel is the
        area-weighted mean of the level pixels it covers (for integer factors
        exactly the block mean, rounded), so no aliasing and no invented
        detail. Regions are read in chunks of :data:`RESAMPLE_CHUNK_BYTES`.
        """
        n, out_h, out_w = out.shape[:3]
        if (out_h, out_w) == (height, width):
            self.read_regions_into(level, xs, ys, width, height, out, threads=threads)
            return
        import cv2

        xs, ys = np.asarray(xs), np.asarray(ys)
        chunk = max(1, min(n, RESAMPLE_CHUNK_BYTES // (width * height * 3)))
        buf = np.empty((chunk, height, width, 3), np.uint8)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            native = buf[: b - a]
            self.read_regions_into(level, xs[a:b], ys[a:b], width, height, native, threads=threads)
            for k in range(b - a):
                dst = out[a + k]
                res = cv2.resize(native[k], (out_w, out_h), dst=dst, interpolation=cv2.INTER_AREA)
                if res is not dst and not np.may_share_memory(res, dst):
                    dst[...] = res

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
    """Decodes the stored tiles (or strips) of one TIFF page.

    The page is seen as a grid of segments of ``seg_h x seg_w`` pixels (tiles,
    or strips of ``rowsperstrip`` rows spanning the width). A batch of
    requested regions is served segment by segment: every segment the batch
    touches is decoded exactly once, straight into the output when a request
    is exactly that segment, otherwise into a per-thread scratch buffer from
    which each request that overlaps it copies its part.
    """

    def __init__(self, page, fd: int, name: str = "", level: int = 0):
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
        self.tiled = bool(page.is_tiled)
        self.n_x = -(-self.width // self.seg_w)
        self.n_y = -(-self.height // self.seg_h)
        self.offsets = np.asarray(page.dataoffsets, np.int64)
        self.counts = np.asarray(page.databytecounts, np.int64)
        self.samples = int(page.samplesperpixel)
        self._decode = page.decode
        self._jpegtables = page.jpegtables
        # 8-bit RGB JPEG segments are decoded by libjpeg straight into a
        # contiguous array we own (the output or a scratch buffer): no
        # intermediate allocation, none of tifffile's per-call overhead
        self._jpeg_colorspaces = None
        if page.compression == 7 and page.bitspersample == 8 and self.samples == 3 and not page.extrasamples:
            if page.photometric == 6:  # YCbCr stored, RGB out: libjpeg converts
                self._jpeg_colorspaces = (None, 2)
            elif page.photometric == 2:  # RGB stored; Aperio writes it without a JFIF marker
                self._jpeg_colorspaces = (None if page.is_jfif else 2, 2)
        # those tiles made complete JPEG streams (JPEGTables, Adobe RGB marker): with
        # libturbojpeg they are decoded straight into a region of the output whatever
        # its row pitch, and stored_jpeg hands them out as they are
        self._jpeg_prefix = None
        self._turbo = False
        if self._jpeg_colorspaces is not None and self.tiled:
            from mask_first import jpeg

            self._jpeg_prefix = jpeg.abbreviated_prefix(self._jpegtables, self._jpeg_colorspaces[0] == 2)
            self._turbo = jpeg.available()

    def segment_rows(self, index: int) -> int:
        """Rows of image data in segment ``index`` (a last strip can be short)."""
        if self.tiled:
            return self.seg_h
        return min(self.seg_h, self.height - (index // self.n_x) * self.seg_h)

    def decode(self, index: int, buf: np.ndarray) -> np.ndarray:
        """Segment ``index`` as (rows, seg_w, 3) uint8 RGB, into ``buf`` when the codec allows.

        Parameters
        ----------
        index : int
            Row-major segment index.
        buf : ndarray of uint8, shape (seg_h, seg_w, 3), C-contiguous
            Written to by the JPEG fast path; other codecs return a new array.

        Returns
        -------
        ndarray
            ``rows = segment_rows(index)``; a segment never written (sparse
            TIFF) is white background.
        """
        count = int(self.counts[index])
        rows = self.segment_rows(index)
        if count == 0:
            buf[:rows] = WHITE
            return buf[:rows]
        data = os.pread(self.fd, count, int(self.offsets[index]))
        try:
            if self._jpeg_colorspaces is not None:
                import imagecodecs

                cs, ocs = self._jpeg_colorspaces
                return imagecodecs.jpeg8_decode(
                    data, tables=self._jpegtables, colorspace=cs, outcolorspace=ocs, out=buf[:rows]
                )
            arr = self._decode(data, index, jpegtables=self._jpegtables)[0]
        except Exception as exc:
            raise self._corrupt(index, exc) from None
        arr = arr.reshape(arr.shape[-3:])
        return _to_rgb(arr)

    def decode_direct(self, index: int, dst: np.ndarray, turbo) -> bool:
        """Decode full segment ``index`` into ``dst`` (seg_h, seg_w, 3), a view into the output.

        Returns False when this segment cannot be decoded in place (no
        TurboJPEG and ``dst`` not contiguous, an empty segment, or a TurboJPEG
        error or warning); the caller then goes through :meth:`decode`, which
        raises on data that is really corrupt.
        """
        count = int(self.counts[index])
        if count == 0:
            return False
        if turbo is not None and self._turbo:
            data = os.pread(self.fd, count, int(self.offsets[index]))
            if data[:2] != b"\xff\xd8":
                return False
            return turbo.decode_into(self._jpeg_prefix + data[2:], dst) is None
        if self._jpeg_colorspaces is not None and dst.flags.c_contiguous:
            seg = self.decode(index, dst)
            if not np.may_share_memory(seg, dst):
                dst[...] = seg
            return True
        return False

    def stored_jpeg(self, xs, ys, width: int, height: int) -> list:
        """Complete JPEG streams of requests that are exactly a stored tile; see ``Slide.stored_jpeg``."""
        out: list = [None] * len(xs)
        if self._jpeg_prefix is None or (width, height) != (self.seg_w, self.seg_h):
            return out
        prefix, sw, sh = self._jpeg_prefix, self.seg_w, self.seg_h
        for k, (x, y) in enumerate(zip(np.asarray(xs).tolist(), np.asarray(ys).tolist())):
            if x % sw or y % sh or x < 0 or y < 0 or x + sw > self.width or y + sh > self.height:
                continue
            index = (y // sh) * self.n_x + x // sw
            count = int(self.counts[index])
            if count == 0:
                continue
            data = os.pread(self.fd, count, int(self.offsets[index]))
            if data[:2] == b"\xff\xd8":  # anything else goes through the decoder, which names the damage
                out[k] = prefix + data[2:]
        return out

    def _corrupt(self, index: int, exc: Exception) -> "SlideError":
        j, i = divmod(index, self.n_x)
        return SlideError(
            f"{self.name}: corrupt image data in level {self.level} at stored tile "
            f"(x={i * self.seg_w}, y={j * self.seg_h}): {type(exc).__name__}: {exc}".replace("\n", " ")
        )

    def plan(self, xs: list[int], ys: list[int], width: int, height: int):
        """Which requests need which segment.

        Returns
        -------
        segments : dict of int -> list of int
            Row-major segment index -> indices of the requests overlapping it,
            segments in file order.
        direct : dict of int -> int
            Segments lying wholly inside the image and inside the one request
            that needs them, where they can be decoded in place.
        partial : list of int
            Requests reaching outside the image (pre-filled white).
        """
        segments: dict[int, list[int]] = {}
        direct: dict[int, int] = {}
        partial: list[int] = []
        W, H, sw, sh, nx = self.width, self.height, self.seg_w, self.seg_h, self.n_x
        for k, (x, y) in enumerate(zip(xs, ys)):
            x1, y1 = x + width, y + height
            if not (x >= 0 and y >= 0 and x1 <= W and y1 <= H):
                partial.append(k)
            cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x1, W), min(y1, H)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            i0, i1 = cx0 // sw, (cx1 - 1) // sw
            j0, j1 = cy0 // sh, (cy1 - 1) // sh
            for j in range(j0, j1 + 1):
                sy0 = j * sh
                rows_in = sy0 >= y and sy0 + sh <= min(y1, H)
                for i in range(i0, i1 + 1):
                    s = j * nx + i
                    segments.setdefault(s, []).append(k)
                    if rows_in and s not in direct and i * sw >= x and (i + 1) * sw <= min(x1, W):
                        direct[s] = k
        # a segment shared by several requests is decoded into the (cache-warm)
        # scratch buffer and copied to each: copying out of one request's pixels,
        # cold by then, measured 2x slower for a stride of half the tile
        direct = {s: k for s, k in direct.items() if len(segments[s]) == 1}
        return dict(sorted(segments.items())), direct, partial

    def paste(self, index: int, seg: np.ndarray, x: int, y: int, out: np.ndarray) -> None:
        """Copy the part of decoded segment ``index`` that lies in the region at (x, y) into ``out``."""
        j, i = divmod(index, self.n_x)
        sx0, sy0 = i * self.seg_w, j * self.seg_h
        # clip to the segment, the image and the requested region at once
        ax0 = max(sx0, x)
        ay0 = max(sy0, y)
        ax1 = min(sx0 + self.seg_w, self.width, x + out.shape[1])
        ay1 = min(sy0 + seg.shape[0], self.height, y + out.shape[0])
        if ax0 >= ax1 or ay0 >= ay1:
            return
        out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = seg[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]

    def read_into(self, xs, ys, width: int, height: int, out: np.ndarray, threads: int = 1) -> None:
        """Fill ``out[k]`` with the region (xs[k], ys[k], width, height); see ``Slide.read_regions_into``."""
        xs = np.asarray(xs, np.int64).tolist()
        ys = np.asarray(ys, np.int64).tolist()
        segments, direct, partial = self.plan(xs, ys, width, height)
        for k in partial:
            out[k] = WHITE
        order = list(segments)
        if not order:
            return
        sw, sh, nx = self.seg_w, self.seg_h, self.n_x

        def work(chunk: list[int]) -> None:
            from mask_first import jpeg

            scratch = np.empty((sh, sw, 3), np.uint8)
            turbo = jpeg.decoder() if self._turbo else None
            try:
                for s in chunk:
                    k0 = direct.get(s)
                    seg = None
                    if k0 is not None:
                        j, i = divmod(s, nx)
                        dy, dx = j * sh - ys[k0], i * sw - xs[k0]
                        dst = out[k0][dy : dy + sh, dx : dx + sw]
                        if dst.strides[1:] == (3, 1) and self.decode_direct(s, dst, turbo):
                            seg = dst
                    if seg is None:
                        k0 = None
                        if not self.decode_direct(s, scratch, turbo):  # the faster decoder, when there
                            seg = self.decode(s, scratch)
                        else:
                            seg = scratch
                    for k in segments[s]:
                        if k != k0:  # other requests sharing the segment copy their part of it
                            self.paste(s, seg, xs[k], ys[k], out[k])
            finally:
                if turbo is not None:
                    turbo.close()

        n = min(threads, len(order))
        if n <= 1:
            work(order)
            return
        # contiguous chunks keep each thread's reads sequential in the file;
        # the decoders release the GIL, and different segments write disjoint
        # pixels of the output, so threads never collide
        bounds = np.linspace(0, len(order), n + 1).astype(int)
        with ThreadPoolExecutor(n) as pool:
            for f in [pool.submit(work, order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]:
                f.result()


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
        self._readers[level].read_into(xs, ys, width, height, out, threads=threads)

    def stored_jpeg(self, level, xs, ys, width, height) -> list:
        return self._readers[level].stored_jpeg(xs, ys, width, height)

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
    tx, ty = xy_pair(tile_extent, int)
    sx, sy = xy_pair(stride, int)
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
