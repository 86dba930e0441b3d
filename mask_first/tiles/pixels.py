"""RGB pixels of selected tiles: batched reads, a pixel-statistics filter, Parquet storage.

Reads go through :func:`mask_first.slides.open_slide`, which decodes the stored
TIFF tiles directly for SVS / generic / OME TIFF and uses OpenSlide otherwise.
Within a batch every stored tile is decoded once, however many requested tiles
overlap it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np

from mask_first.io import as_table, atomic_path, drop_behind
from mask_first.slides import Slide, open_slide
from mask_first.columns import broadcast, column_length, group_rows, take, xy_pair

__all__ = [
    "read_slide_tiles",
    "iter_slide_tiles",
    "tile_pixel_std",
    "write_tile_pixels",
    "load_tile_pixels",
]

log = logging.getLogger("mask_first")

#: requested tiles decoded together: bounds memory to batch x tile bytes
DEFAULT_BATCH = 64


def _coords(tile_x, tile_y) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(tile_x, np.int64).ravel()
    ys = np.asarray(tile_y, np.int64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"tile_x has {xs.size} entries, tile_y {ys.size}")
    return xs, ys


def iter_slide_tiles(
    slide: Slide | str | os.PathLike,
    tile_x,
    tile_y,
    tile_extent_x: int,
    tile_extent_y: int,
    level: int,
    *,
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
    mpp_override: float | None = None,
    resample_to: tuple[int, int] | None = None,
    buffers: int = 1,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Stream tiles in batches (arguments as :func:`read_slide_tiles`).

    ``buffers`` arrays are cycled through, so a consumer may still be using
    the previous ``buffers - 1`` batches while the next one is decoded.

    Yields
    ------
    (slice, ndarray of uint8, shape (B, H, W, 3))
        The positions of the batch in the input arrays and its pixels, (H, W)
        = ``(tile_extent_y, tile_extent_x)`` or ``resample_to`` reversed. The
        array is reused ``buffers`` batches later: copy it if you keep it.
    """
    xs, ys = _coords(tile_x, tile_y)
    out_w, out_h = (tile_extent_x, tile_extent_y) if resample_to is None else xy_pair(resample_to, int)
    own = not isinstance(slide, Slide)
    s = open_slide(slide, mpp_override, require_mpp=False) if own else slide
    try:
        bufs = _batch_buffers(len(xs), batch_size, out_w, out_h, buffers)
        for k, start in enumerate(range(0, len(xs), batch_size)):
            stop = min(start + batch_size, len(xs))
            out = bufs[k % len(bufs)][: stop - start]
            s.read_resampled_into(level, xs[start:stop], ys[start:stop], tile_extent_x, tile_extent_y, out,
                                  threads=threads)
            yield slice(start, stop), out
    finally:
        if own:
            s.close()


def _batch_buffers(n: int, batch_size: int, width: int, height: int, buffers: int) -> list[np.ndarray]:
    """``buffers`` (at most one per batch) uint8 arrays of (batch, height, width, 3) for ``n`` tiles."""
    shape = (min(batch_size, max(n, 1)), height, width, 3)
    return [np.empty(shape, np.uint8) for _ in range(max(1, min(buffers, -(-n // batch_size))))]


def _read_into(slide: Slide, level: int, xs, ys, ex: int, ey: int, out: np.ndarray, threads: int) -> None:
    # one call: every stored tile is decoded once for the whole request, straight
    # into the result where a request is exactly a stored tile; out's (H, W)
    # other than (ey, ex) means area-average to it
    slide.read_resampled_into(level, xs, ys, ex, ey, out, threads=threads)


def read_slide_tiles(
    path,
    tile_x,
    tile_y,
    tile_extent_x,
    tile_extent_y,
    level,
    *,
    threads: int = 1,
    mpp_override=None,
    resample_to: tuple[int, int] | None = None,
) -> np.ndarray:
    """RGB pixels of many tiles, of one slide or of a tile table spanning many.

    Every per-tile argument is a scalar (shared by all tiles) or a column of
    length N (numpy array, pandas Series, pyarrow Array, list), as in the
    seed's ``read_slide_tiles(col("path"), col("tile_x"), col("tile_y"),
    col("tile_extent_x"), col("tile_extent_y"), col("level"))``. Rows are
    grouped by slide (each file opened once) and, within a slide, by (level,
    extent); results are in input order. No mpp is needed: pixels are read at
    a stored level, so slides without mpp metadata read fine.

    Parameters
    ----------
    path : path-like, Slide, or column of path-likes, shape (N,)
    tile_x, tile_y : int or column of int, shape (N,)
        Top-left corners in pixels of each tile's ``level``.
    tile_extent_x, tile_extent_y : int or column of int, shape (N,)
        Tile width and height in pixels of ``level``.
    level : int or column of int, shape (N,)
        Pyramid level of each tile.
    threads : int
        Decoder threads (JPEG / JPEG 2000 decoding releases the GIL).
    mpp_override : float or column of float, optional
        Passed to :func:`~mask_first.slides.open_slide` (one value per slide);
        only changes the slide's reported mpp, never the pixels read.
    resample_to : (int, int), optional
        Delivered tile (width, height) in pixels for every tile: each
        ``tile_extent`` region of ``level`` is area-averaged to this size
        (OpenCV ``INTER_AREA``), so a 512-px region at 0.25 µm/px becomes a
        256-px tile at 0.5 µm/px. None: native pixels of ``level``.

    Returns
    -------
    ndarray of uint8, shape (N, tile_extent_y, tile_extent_x, 3)
        (tile, y, x, RGB) when every tile has the same extent (or
        ``resample_to`` reversed, whatever the extents); area outside
        the slide is white, matching OpenSlide's ``read_region`` composited on
        white. When extents differ between rows, an object ndarray of shape
        (N,) holding one (tile_extent_y_i, tile_extent_x_i, 3) array per tile
        (the seed's ragged tensor column). Use :func:`iter_slide_tiles` to
        stream instead of holding all tiles.
    """
    n = column_length(path=path, tile_x=tile_x, tile_y=tile_y, tile_extent_x=tile_extent_x,
                      tile_extent_y=tile_extent_y, level=level, mpp_override=mpp_override)
    n = 1 if n is None else n
    xs = np.broadcast_to(broadcast(tile_x, n, np.int64), (n,))
    ys = np.broadcast_to(broadcast(tile_y, n, np.int64), (n,))
    ex, ey, lv = (broadcast(v, n, np.int64) for v in (tile_extent_x, tile_extent_y, level))
    ex, ey = _uniform(ex), _uniform(ey)
    rs = None if resample_to is None else xy_pair(resample_to, int)
    ragged = rs is None and (isinstance(ex, np.ndarray) or isinstance(ey, np.ndarray))
    out_wh = rs if rs is not None else (None if ragged else (int(ex), int(ey)))
    out = np.empty(n, object) if ragged else np.empty((n, out_wh[1], out_wh[0], 3), np.uint8)
    overrides = broadcast(mpp_override, n, None) if mpp_override is not None else None
    groups = [(path, slice(0, n))] if isinstance(path, Slide) else group_rows(path, n)
    for key, index in groups:
        own = not isinstance(key, Slide)
        override = take(overrides, index) if overrides is not None else None
        if isinstance(override, np.ndarray):
            override = override[0] if len(override) else None
        slide = open_slide(key, override, require_mpp=False) if own else key
        try:
            gx, gy = xs[index], ys[index]
            for (g_lv, g_ex, g_ey), sub in _read_groups(take(lv, index), take(ex, index), take(ey, index), len(gx)):
                if ragged:
                    tiles = np.empty((len(gx[sub]), g_ey, g_ex, 3), np.uint8)
                    _read_into(slide, g_lv, gx[sub], gy[sub], g_ex, g_ey, tiles, threads)
                    rows = np.arange(n)[index][sub]
                    for k, t in zip(rows.tolist(), tiles):
                        out[k] = t
                elif isinstance(index, slice) and isinstance(sub, slice):
                    # a contiguous run: decode straight into the result
                    start = index.start + sub.start
                    _read_into(slide, g_lv, gx[sub], gy[sub], g_ex, g_ey, out[start : start + (sub.stop - sub.start)], threads)
                else:
                    tiles = np.empty((len(gx[sub]), out_wh[1], out_wh[0], 3), np.uint8)
                    _read_into(slide, g_lv, gx[sub], gy[sub], g_ex, g_ey, tiles, threads)
                    out[np.arange(n)[index][sub]] = tiles
        finally:
            if own:
                slide.close()
    return out


def _uniform(v):
    """A column whose values are all equal as that scalar; otherwise unchanged."""
    if isinstance(v, np.ndarray) and len(v) and (v == v[0]).all():
        return v[0]
    return v


def _read_groups(lv, ex, ey, n: int) -> list[tuple[tuple[int, int, int], slice | np.ndarray]]:
    """Rows of one slide grouped by (level, extent_x, extent_y), each group in input order."""
    if not any(isinstance(v, np.ndarray) for v in (lv, ex, ey)):
        return [((int(lv), int(ex), int(ey)), slice(0, n))]
    keys = np.empty((n, 3), np.int64)
    keys[:, 0], keys[:, 1], keys[:, 2] = lv, ex, ey
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    if len(uniq) == 1:
        return [(tuple(int(v) for v in uniq[0]), slice(0, n))]
    return [(tuple(int(v) for v in u), np.flatnonzero(inverse == k)) for k, u in enumerate(uniq)]


def tile_pixel_std(tiles: np.ndarray) -> np.ndarray:
    """Standard deviation of the grey level of each tile, the mask-free background filter.

    Glass is nearly uniform, tissue is textured, so a low standard deviation
    marks background. This needs every tile's pixels decoded: it is the
    baseline the mask-first path avoids.

    Parameters
    ----------
    tiles : ndarray of uint8, shape (N, H, W, 3)

    Returns
    -------
    ndarray of float64, shape (N,)
        Standard deviation of ``(R + G + B) / 3`` over each tile, in grey levels.
    """
    # grey*3 fits uint16 exactly; adding the three channel planes beats a reduction
    # over the short last axis, and var = E[g^2] - E[g]^2 with float64 sums avoids
    # materialising every pixel minus its mean (together ~5x faster than .std)
    grey3 = tiles[..., 0].astype(np.uint16)
    grey3 += tiles[..., 1]
    grey3 += tiles[..., 2]
    grey3 = grey3.reshape(tiles.shape[0], -1)
    n = grey3.shape[1]
    mean = grey3.sum(axis=1, dtype=np.uint64).astype(np.float64) / n
    as_float = grey3.astype(np.float32)
    mean_sq = np.einsum("ij,ij->i", as_float, as_float, dtype=np.float64) / n
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)) / 3.0


# ---------------------------------------------------------------------------
# Parquet storage of tile pixels
# ---------------------------------------------------------------------------


#: Parquet codecs for the raw pixel column. Measured on the real H&E tiles of
#: ../shared/data/slides (benchmarks/bench_pixels.py): none 1.00x smaller at
#: ~1,100 MB/s, snappy 1.25x at ~860 MB/s, lz4 1.25x at ~560 MB/s, zstd level 1
#: 1.33x at ~500 MB/s. Stained tissue is noisy; general-purpose codecs buy little.
PIXEL_COMPRESSIONS = ("none", "snappy", "lz4", "zstd")


def _encode(tiles: np.ndarray, encoding: str, quality: int):
    """The pixel column of one batch as a pyarrow array (raw: zero-copy over the tile bytes)."""
    import pyarrow as pa

    if encoding == "raw":
        n, size = len(tiles), tiles[0].nbytes if len(tiles) else 0
        offsets = np.arange(n + 1, dtype=np.int32) * size
        data = np.ascontiguousarray(tiles).reshape(-1)
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    if encoding == "jpeg":
        import imagecodecs

        return pa.array([bytes(imagecodecs.jpeg8_encode(t, level=quality)) for t in tiles], pa.binary())
    raise ValueError(f"pixel encoding must be 'raw' or 'jpeg', got {encoding!r}")


def write_tile_pixels(
    out_path: str | os.PathLike,
    slide_path: str | os.PathLike,
    tiles,
    *,
    level: int,
    tile_extent_x: int,
    tile_extent_y: int,
    resample_to: tuple[int, int] | None = None,
    encoding: str = "raw",
    jpeg_quality: int = 90,
    compression: str = "none",
    batch_size: int = DEFAULT_BATCH,
    row_group_tiles: int = 16,
    threads: int = 1,
    mpp_override: float | None = None,
    corrupt_tiles: str = "fail",
) -> int:
    """Decode the given tiles and stream them into a Parquet file.

    Parameters
    ----------
    out_path : path-like
        Written to a hidden temporary sibling and renamed when complete, so an
        interrupted run never leaves a file that looks finished.
    slide_path : path-like
    tiles : pyarrow.Table, pandas.DataFrame or mapping of column arrays
        Must have ``x`` and ``y`` columns (pixels of ``level``); every other
        column is copied into the output as metadata.
    level, tile_extent_x, tile_extent_y : int
        Level read and the region of each tile in its pixels.
    resample_to : (int, int), optional
        Delivered (width, height) in pixels; see :func:`read_slide_tiles`.
    encoding : {"raw", "jpeg"}
        ``"raw"`` stores the uint8 (H, W, 3) bytes losslessly; ``"jpeg"``
        stores baseline JPEG at ``jpeg_quality``, several times smaller but lossy.
        With ``"jpeg"``, a tile that is exactly one stored JPEG tile of the
        slide (aligned, same size, no resampling) keeps the scanner's stream:
        no decoding, no second loss (see :func:`_jpeg_batches`).
    compression : {"none", "snappy", "lz4", "zstd"}
        Parquet codec of the pixel column (lossless; see
        :data:`PIXEL_COMPRESSIONS` for measured ratios and speeds); zstd runs
        at level 1. JPEG bytes are stored as they are.
    row_group_tiles : int
        Tiles per Parquet row group: memory holds one row group, never the slide.
    corrupt_tiles : {"fail", "skip"}
        A tile whose stored data cannot be decoded (:class:`~mask_first.slides.SlideError`):
        ``"fail"`` raises; ``"skip"`` leaves it out (see :func:`_read_batches`).
        The file's key-value metadata ``mask_first.stats`` records ``tiles_requested``,
        ``tiles_written``, ``tiles_skipped``, ``tiles_passed_through`` and ``skipped`` (``tile_id``, ``x``,
        ``y``, ``error`` of each). Progress (tiles done / total, MB written)
        goes to the ``mask_first`` logger.

    Returns
    -------
    int
        Number of tiles written.

    Notes
    -----
    The output describes the delivered pixels: ``tile_extent_x/y`` are their
    size in pixels, ``mpp_x/mpp_y`` their resolution in µm/px (level mpp x
    region / delivered size), ``read_extent_x/y`` the region read in pixels of
    ``level`` at ``x``, ``y``. Metadata columns of those names are replaced.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = as_table(tiles)
    xs, ys = _coords(meta.column("x").to_numpy(), meta.column("y").to_numpy())
    n = meta.num_rows
    out_w, out_h = (tile_extent_x, tile_extent_y) if resample_to is None else xy_pair(resample_to, int)
    if encoding not in ("raw", "jpeg"):
        raise ValueError(f"pixel encoding must be 'raw' or 'jpeg', got {encoding!r}")
    if compression not in PIXEL_COMPRESSIONS:
        raise ValueError(f"pixel compression must be one of {PIXEL_COMPRESSIONS}, got {compression!r}")
    with open_slide(slide_path, mpp_override, require_mpp=False) as slide:
        lmx, lmy = slide.level_mpp(level)
        constants = {
            "level": pa.scalar(level, pa.int64()),
            "tile_extent_x": pa.scalar(out_w, pa.int64()),
            "tile_extent_y": pa.scalar(out_h, pa.int64()),
            "mpp_x": pa.scalar(lmx * tile_extent_x / out_w, pa.float64()),
            "mpp_y": pa.scalar(lmy * tile_extent_y / out_h, pa.float64()),
            "read_extent_x": pa.scalar(tile_extent_x, pa.int64()),
            "read_extent_y": pa.scalar(tile_extent_y, pa.int64()),
            "encoding": pa.scalar(encoding, pa.string()),
        }
        replaced = [c for c in ("tile_extent_x", "tile_extent_y", "mpp_x", "mpp_y", "read_extent_x",
                                "read_extent_y", "encoding") if c in meta.column_names]
        meta = meta.drop_columns(replaced)
        if "level" in meta.column_names:
            constants.pop("level")
        schema = meta.schema
        for name, value in constants.items():
            schema = schema.append(pa.field(name, value.type))
        schema = schema.append(pa.field("pixels", pa.binary()))
        small = [f.name for f in schema if f.name != "pixels"]

        skipped: list[dict] = []
        counts = {"passed_through": 0}
        written = 0
        with atomic_path(out_path) as tmp, ExitStack() as stack:
            progress = _Progress(n, tmp)
            # dictionary encoding and min/max statistics over the pixel bytes cost
            # more than the compression itself (3.6x slower writes when on); JPEG
            # bytes do not compress further; small columns get zstd either way
            codecs = {name: "zstd" for name in small}
            codecs["pixels"] = "none" if encoding == "jpeg" else compression
            writer = pq.ParquetWriter(tmp, schema, compression=codecs,
                                      compression_level={n: 1 for n, c in codecs.items() if c == "zstd"},
                                      use_dictionary=small, write_statistics=small)
            release = stack.enter_context(drop_behind(tmp))
            # one writer thread: a row group is encoded and written (pyarrow and
            # libjpeg release the GIL) while the next one is decoded into the
            # other of two buffers; at most one write is pending
            pool = ThreadPoolExecutor(1)
            pending = None
            try:
                def write(rows: np.ndarray, batch) -> None:
                    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # contiguous: no copy
                        chunk = meta.slice(int(rows[0]), len(rows))
                    else:  # tiles skipped in this batch (or none)
                        chunk = meta.take(pa.array(rows, pa.int64()))
                    for name, value in constants.items():
                        chunk = chunk.append_column(name, pa.array([value.as_py()] * len(rows), value.type))
                    if batch is None:
                        pixels = pa.array([], pa.binary())
                    elif isinstance(batch, list):  # JPEG streams already
                        pixels = pa.array(batch, pa.binary())
                    else:
                        pixels = _encode(batch, encoding, jpeg_quality)
                    writer.write_table(chunk.append_column("pixels", pixels))
                    release()  # the row group is on its way to disk: free its pages for the next

                if n == 0:
                    write(np.zeros(0, np.int64), None)
                if encoding == "jpeg" and (out_w, out_h) == (tile_extent_x, tile_extent_y):
                    batches = _jpeg_batches(slide, xs, ys, tile_extent_x, tile_extent_y, level,
                                            batch_size=row_group_tiles, threads=threads, quality=jpeg_quality,
                                            corrupt_tiles=corrupt_tiles, skipped=skipped, counts=counts)
                else:
                    batches = _read_batches(slide, xs, ys, tile_extent_x, tile_extent_y, level,
                                            batch_size=row_group_tiles, threads=threads,
                                            resample_to=(out_w, out_h), corrupt_tiles=corrupt_tiles,
                                            skipped=skipped, buffers=2)
                for rows, batch in batches:
                    if pending is not None:
                        pending.result()  # frees the buffer the next batch is decoded into
                    pending = pool.submit(write, rows, batch)
                    written += len(rows)
                    progress.update(int(rows[-1]) + 1)
                if pending is not None:
                    pending.result()
                    pending = None
                if skipped:
                    ids = meta.column("tile_id").to_numpy() if "tile_id" in meta.column_names else np.arange(n)
                    for t in skipped:
                        t["tile_id"] = int(ids[t.pop("row")])
                # known only now, so in the footer's key-value metadata (pq.read_metadata(path).metadata)
                writer.add_key_value_metadata({"mask_first.stats": json.dumps(
                    {"tiles_requested": n, "tiles_written": written, "tiles_skipped": len(skipped),
                     "tiles_passed_through": counts["passed_through"], "skipped": skipped})})
            finally:
                if pending is not None:  # an error while reading: let the write finish before closing
                    pending.exception()
                pool.shutdown()
                writer.close()
            if skipped:
                log.warning("%d corrupt tile(s) skipped (pixels.corrupt_tiles: skip): %s", len(skipped),
                            "; ".join(f"tile {t['tile_id']} at x={t['x']} y={t['y']}: {t['error']}"
                                      for t in skipped[:50]))
            progress.done(written)
    return written


class _Progress:
    """Logs tiles done / total and MB written about every 10 % or 30 s (to the rule log)."""

    def __init__(self, total: int, path) -> None:
        import time

        self.total, self.path, self.clock = total, path, time.monotonic
        self.t0 = self.last_t = self.clock()
        self.last_done = 0

    def _mb(self) -> float:
        try:
            return os.path.getsize(self.path) / 1e6
        except OSError:
            return 0.0

    def update(self, done: int | None) -> None:
        if done is None:
            return
        now = self.clock()
        if done - self.last_done >= max(1, self.total // 10) or now - self.last_t >= 30:
            log.info("pixels: %d / %d tiles read (%.0f %%), %.1f MB written, %.1f s", done, self.total,
                     100.0 * done / max(self.total, 1), self._mb(), now - self.t0)
            self.last_done, self.last_t = done, now

    def done(self, written: int) -> None:
        log.info("pixels: %d / %d tiles written, %.1f MB, %.1f s", written, self.total, self._mb(),
                 self.clock() - self.t0)


def _jpeg_batches(slide: Slide, xs, ys, tile_extent_x: int, tile_extent_y: int, level: int, *, batch_size: int,
                  threads: int, quality: int, corrupt_tiles: str, skipped: list,
                  counts: dict) -> Iterator[tuple[np.ndarray, list]]:
    """Batches of JPEG streams: a tile that is exactly a stored JPEG tile keeps its stored bytes.

    Passing the scanner's stream through costs no decoding and no encoding, and
    loses nothing: it decodes to exactly the pixels of the slide, where decoding
    and encoding again at ``quality`` would add a second loss. Other tiles are
    decoded (``corrupt_tiles`` applies to them) and encoded at ``quality``.
    ``counts["passed_through"]`` counts the stored streams used.
    """
    import imagecodecs

    for start in range(0, len(xs), batch_size):
        stop = min(start + batch_size, len(xs))
        streams = slide.stored_jpeg(level, xs[start:stop], ys[start:stop], tile_extent_x, tile_extent_y)
        need = np.flatnonzero([b is None for b in streams])
        counts["passed_through"] += len(streams) - len(need)
        if len(need):
            local: list[dict] = []
            for rows, batch in _read_batches(slide, xs[start:stop][need], ys[start:stop][need], tile_extent_x,
                                             tile_extent_y, level, batch_size=len(need), threads=threads,
                                             resample_to=None, corrupt_tiles=corrupt_tiles, skipped=local):
                for r, tile in zip(rows.tolist(), batch):
                    streams[need[r]] = bytes(imagecodecs.jpeg8_encode(tile, level=quality))
            for t in local:  # rows of the decoded subset -> rows of the whole request
                t["row"] = start + int(need[t["row"]])
                skipped.append(t)
        kept = [i for i, b in enumerate(streams) if b is not None]
        if kept:
            yield np.asarray(kept, np.int64) + start, [streams[i] for i in kept]


def _read_batches(slide: Slide, xs, ys, tile_extent_x: int, tile_extent_y: int, level: int, *,
                  batch_size: int, threads: int, resample_to: tuple[int, int] | None, corrupt_tiles: str,
                  skipped: list, buffers: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of decoded tiles with their row numbers in ``xs``/``ys``.

    ``corrupt_tiles="fail"``: a :class:`~mask_first.slides.SlideError` ends the
    read. ``"skip"``: a batch that raises is read again one tile at a time;
    tiles that still raise are left out and appended to ``skipped`` as
    ``{"row", "x", "y", "error"}`` (pixels of ``level``).
    """
    from mask_first.slides import SlideError

    if corrupt_tiles not in ("fail", "skip"):
        raise ValueError(f"corrupt_tiles must be 'fail' or 'skip', got {corrupt_tiles!r}")
    if corrupt_tiles == "fail":
        for sl, batch in iter_slide_tiles(slide, xs, ys, tile_extent_x, tile_extent_y, level,
                                          batch_size=batch_size, threads=threads, resample_to=resample_to,
                                          buffers=buffers):
            yield np.arange(sl.start, sl.stop), batch
        return
    out_w, out_h = (tile_extent_x, tile_extent_y) if resample_to is None else xy_pair(resample_to, int)
    bufs = _batch_buffers(len(xs), batch_size, out_w, out_h, buffers)
    for k, start in enumerate(range(0, len(xs), batch_size)):
        stop = min(start + batch_size, len(xs))
        out = bufs[k % len(bufs)][: stop - start]
        try:
            slide.read_resampled_into(level, xs[start:stop], ys[start:stop], tile_extent_x, tile_extent_y, out,
                                      threads=threads)
            yield np.arange(start, stop), out
            continue
        except SlideError:
            pass
        good = []
        for k in range(start, stop):
            try:
                slide.read_resampled_into(level, xs[k:k + 1], ys[k:k + 1], tile_extent_x, tile_extent_y,
                                          out[len(good):len(good) + 1])
            except SlideError as exc:
                skipped.append({"row": k, "x": int(xs[k]), "y": int(ys[k]), "error": str(exc).splitlines()[0]})
                continue
            good.append(k)
        if good:
            yield np.asarray(good, np.int64), out[: len(good)]


def load_tile_pixels(path: str | os.PathLike, columns: list[str] | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """Iterate over a pixel Parquet file written by :func:`write_tile_pixels`.

    Yields
    ------
    (dict, ndarray of uint8, shape (tile_extent_y, tile_extent_x, 3))
        The tile's metadata row (without the pixel bytes) and its RGB pixels.
        One row group is in memory at a time.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g, columns=None if columns is None else columns + ["pixels", "encoding", "tile_extent_x", "tile_extent_y"])
        rows = table.drop_columns(["pixels"]).to_pylist()
        for row, data in zip(rows, table.column("pixels").to_pylist()):
            h, w = int(row["tile_extent_y"]), int(row["tile_extent_x"])
            if row["encoding"] == "jpeg":
                import imagecodecs

                arr = np.asarray(imagecodecs.jpeg8_decode(data))
            else:
                arr = np.frombuffer(data, np.uint8).reshape(h, w, 3)
            yield row, arr
