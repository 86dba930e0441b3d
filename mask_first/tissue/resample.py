"""Reading one pyramid level onto the mask grid (see :mod:`mask_first.tissue.detection` for the grid).

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
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from mask_first.slides import Slide

#: levels with more pixels are box-shrunk by the integer part of f on the way (f >= 2): the fast path
STREAM_PIXELS = 1 << 26
#: rows of a level read at a time when it is box-shrunk on the way
_STRIP_ROWS = 1024


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
