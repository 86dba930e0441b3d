"""RGB pixels of selected tiles: batched reads, a pixel-statistics filter, Parquet storage.

Reads go through :func:`mask_first.slides.open_slide`, which decodes the stored
TIFF tiles directly for SVS / generic / OME TIFF and uses OpenSlide otherwise.
Within a batch every stored tile is decoded once, however many requested tiles
overlap it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from mask_first.io import as_table, atomic_path
from mask_first.slides import Slide, open_slide
from mask_first.columns import broadcast, column_length, group_rows, take

__all__ = [
    "read_slide_tiles",
    "iter_slide_tiles",
    "tile_pixel_std",
    "write_tile_pixels",
    "load_tile_pixels",
]

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
) -> Iterator[tuple[slice, np.ndarray]]:
    """Stream tiles in batches.

    Yields
    ------
    (slice, ndarray of uint8, shape (B, tile_extent_y, tile_extent_x, 3))
        The positions of the batch in the input arrays and its pixels. The
        array is reused between batches: copy it if you keep it.
    """
    xs, ys = _coords(tile_x, tile_y)
    own = not isinstance(slide, Slide)
    s = open_slide(slide, mpp_override, require_mpp=False) if own else slide
    try:
        buf = np.empty((min(batch_size, max(len(xs), 1)), tile_extent_y, tile_extent_x, 3), np.uint8)
        for start in range(0, len(xs), batch_size):
            stop = min(start + batch_size, len(xs))
            out = buf[: stop - start]
            s.read_regions_into(level, xs[start:stop], ys[start:stop], tile_extent_x, tile_extent_y, out, threads=threads)
            yield slice(start, stop), out
    finally:
        if own:
            s.close()


def _read_into(slide: Slide, level: int, xs, ys, ex: int, ey: int, out: np.ndarray, threads: int) -> None:
    # decode straight into the result, batch by batch (the decoded-segment cache stays small)
    for start in range(0, len(xs), DEFAULT_BATCH):
        sl = slice(start, start + DEFAULT_BATCH)
        slide.read_regions_into(level, xs[sl], ys[sl], ex, ey, out[sl], threads=threads)


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

    Returns
    -------
    ndarray of uint8, shape (N, tile_extent_y, tile_extent_x, 3)
        (tile, y, x, RGB) when every tile has the same extent; area outside
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
    ragged = isinstance(ex, np.ndarray) or isinstance(ey, np.ndarray)
    out = np.empty(n, object) if ragged else np.empty((n, int(ey), int(ex), 3), np.uint8)
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
                    tiles = np.empty((len(gx[sub]), g_ey, g_ex, 3), np.uint8)
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


def _encode(tiles: np.ndarray, encoding: str, quality: int) -> list[bytes]:
    if encoding == "raw":
        return [t.tobytes() for t in tiles]
    if encoding == "jpeg":
        import imagecodecs

        return [bytes(imagecodecs.jpeg8_encode(t, level=quality)) for t in tiles]
    raise ValueError(f"pixel encoding must be 'raw' or 'jpeg', got {encoding!r}")


def write_tile_pixels(
    out_path: str | os.PathLike,
    slide_path: str | os.PathLike,
    tiles,
    *,
    level: int,
    tile_extent_x: int,
    tile_extent_y: int,
    encoding: str = "raw",
    jpeg_quality: int = 90,
    batch_size: int = DEFAULT_BATCH,
    row_group_tiles: int = 256,
    threads: int = 1,
    mpp_override: float | None = None,
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
    encoding : {"raw", "jpeg"}
        ``"raw"`` stores the uint8 (H, W, 3) bytes losslessly (Parquet zstd
        compresses them); ``"jpeg"`` stores baseline JPEG at ``jpeg_quality``,
        about 10x smaller but lossy.
    row_group_tiles : int
        Tiles per Parquet row group: memory holds one row group, never the slide.

    Returns
    -------
    int
        Number of tiles written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = as_table(tiles)
    xs, ys = _coords(meta.column("x").to_numpy(), meta.column("y").to_numpy())
    n = meta.num_rows
    constants = {
        "tile_extent_x": pa.scalar(tile_extent_x, pa.int64()),
        "tile_extent_y": pa.scalar(tile_extent_y, pa.int64()),
        "level": pa.scalar(level, pa.int64()),
        "encoding": pa.scalar(encoding, pa.string()),
    }
    constants = {k: v for k, v in constants.items() if k not in meta.column_names}
    schema = meta.schema
    for name, value in constants.items():
        schema = schema.append(pa.field(name, value.type))
    schema = schema.append(pa.field("pixels", pa.binary()))

    with atomic_path(out_path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            pending: list[bytes] = []
            start = 0

            def flush(upto: int) -> None:
                nonlocal pending, start
                chunk = meta.slice(start, upto - start)
                for name, value in constants.items():
                    chunk = chunk.append_column(name, pa.array([value.as_py()] * (upto - start), value.type))
                chunk = chunk.append_column("pixels", pa.array(pending, pa.binary()))
                writer.write_table(chunk)
                pending, start = [], upto

            with open_slide(slide_path, mpp_override, require_mpp=False) as slide:
                for sl, batch in iter_slide_tiles(
                    slide, xs, ys, tile_extent_x, tile_extent_y, level,
                    batch_size=min(batch_size, row_group_tiles), threads=threads,
                ):
                    pending.extend(_encode(batch, encoding, jpeg_quality))
                    if len(pending) >= row_group_tiles:
                        flush(sl.stop)
            if pending or start == 0:
                flush(n)
        finally:
            writer.close()
    return n


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
