"""Per-tile predictions -> slide-aligned heatmap TIFF and a QC picture.

The heatmap is assembled with :class:`~mask_first.assembly.mask_builders.MaskBuilder`
from scalar per-tile values (one column per channel). One heatmap pixel is one
mask cell of the builder, ``gcd(tile, stride)`` pixels of the tiled slide level,
so its resolution in µm/px is exact and written into the TIFF resolution tags:
the heatmap overlays the slide in any viewer that honours them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mask_first.assembly.mask_builders import MaskBuilder, MaxAggregator, MeanAggregator
from mask_first.io import atomic_path, write_png

__all__ = ["assemble_heatmap", "build_heatmap", "write_heatmap_tiff", "read_heatmap_tiff", "colourise"]


def build_heatmap(
    predictions: "pandas.DataFrame",
    info: "pandas.Series",
    columns: Sequence[str],
    *,
    storage: str = "inmemory",
    aggregation: str = "mean",
    batch_size: int = 4096,
    max_pixels: int = 1 << 28,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Assemble scalar per-tile predictions into a (C, H, W) float32 heatmap.

    Parameters
    ----------
    predictions : DataFrame
        Columns ``x``, ``y`` (tile top-left in pixels of the tiled level) and
        one column per channel.
    info : Series
        A slide-table row: ``extent_x/y``, ``tile_extent_x/y``, ``stride_x/y``
        (pixels of the tiled level), ``mpp_x/y`` (µm/px of that level).
    columns : sequence of str
        Prediction columns, in channel order.

    Returns
    -------
    (ndarray of float32, shape (C, H, W), (mpp_x, mpp_y))
        The heatmap, NaN where no tile contributed, and its resolution in µm/px.
    """
    missing = [c for c in ["x", "y", *columns] if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions table lacks column(s) {', '.join(missing)}")
    tile = (int(info.tile_extent_y), int(info.tile_extent_x))
    stride = (int(info.stride_y), int(info.stride_x))
    # One heatmap pixel per stride cell; tiles off the stride lattice (a grid made
    # with last="shift") need a finer cell that divides their coordinates too.
    cell = [
        math.gcd(t, s, *np.unique(predictions[c]).astype(int).tolist())
        for t, s, c in zip(tile, stride, ("y", "x"))
    ]
    if cell != [math.gcd(t, s) for t, s in zip(tile, stride)]:
        n_px = int(info.extent_x) // cell[1] * (int(info.extent_y) // cell[0]) * len(columns)
        if n_px > max_pixels:
            raise ValueError(
                f"tiles off the stride grid need a heatmap of {n_px} values (cell {cell} px); "
                "use tiling last: keep or drop"
            )
    builder = MaskBuilder(
        source_extents=(int(info.extent_y), int(info.extent_x)),
        source_tile_extent=tile,
        output_tile_extent=(tile[0] // cell[0], tile[1] // cell[1]),
        stride=stride,
        n_channels=len(columns),
        storage=storage,
        # cells no tile covered are NaN ("no prediction"), not 0 (a prediction of 0)
        aggregation=MeanAggregator(fill_value=np.nan) if aggregation == "mean" else MaxAggregator(fill_value=np.nan),
        dtype=np.float32,
    )
    try:
        values = predictions[list(columns)].to_numpy(np.float32)
        coords = predictions[["y", "x"]].to_numpy(np.int64)
        for start in range(0, len(values), batch_size):
            builder.update_batch(values[start : start + batch_size], coords[start : start + batch_size])
        result = builder.finalize()
        heat = np.array(result["mask"] if isinstance(result, dict) else result, np.float32)
        cell_y, cell_x = (float(c) for c in builder.geometry.cell_size)  # source px per heatmap px
    finally:
        builder.cleanup()
    return heat, (float(info.mpp_x) * cell_x, float(info.mpp_y) * cell_y)


def _nanmean_2x2(a: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (ceil(H/2), ceil(W/2), C) mean of the non-NaN values of each 2x2 block."""
    h, w = a.shape[:2]
    p = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=np.nan)
    blocks = p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2, -1)
    valid = ~np.isnan(blocks)
    total = np.where(valid, blocks, 0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def write_heatmap_tiff(
    path: str | os.PathLike, heat: np.ndarray, mpp: tuple[float, float], *, description: dict | None = None,
    tile: int = 256,
) -> None:
    """Write a (C, H, W) float32 heatmap as a tiled pyramidal TIFF with resolution tags.

    Level 0 holds the values exactly (float32, zlib); each further level is the
    NaN-aware 2x2 mean of the previous one. Written to a temporary name and
    renamed when complete.
    """
    import tifffile

    level = np.ascontiguousarray(np.moveaxis(heat, 0, -1).astype(np.float32))
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            k = 0
            while True:
                res = (1e4 / (mpp[0] * 2**k), 1e4 / (mpp[1] * 2**k))
                data = level[..., 0] if level.shape[-1] == 1 else level
                tw.write(
                    data, tile=(tile, tile), compression="zlib", photometric="minisblack",
                    planarconfig=None if data.ndim == 2 else "contig", subfiletype=1 if k else 0, resolution=res,
                    resolutionunit="CENTIMETER", metadata=None,
                    description=json.dumps(description or {}) if k == 0 else None,
                )
                if max(level.shape[:2]) <= tile:
                    break
                level = _nanmean_2x2(level)
                k += 1


def read_heatmap_tiff(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float], dict]:
    """(heatmap (C, H, W) float32, (mpp_x, mpp_y), description dict) of level 0."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        arr = page.asarray()
        (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
        desc = json.loads(page.description or "{}")
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.moveaxis(arr, -1, 0), (1e4 * xd / xn, 1e4 * yd / yn), desc


# perceptually ordered colour ramp (dark blue -> teal -> yellow), values in [0, 1]
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def colourise(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 on a viridis-like ramp; NaN -> white."""
    t = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    pos = np.nan_to_num(t, nan=0.0) * (len(_RAMP) - 1)
    i = np.minimum(pos.astype(int), len(_RAMP) - 2)
    f = (pos - i)[..., None]
    rgb = _RAMP[i] * (1 - f) + _RAMP[i + 1] * f
    rgb[np.isnan(values)] = 255
    return rgb.astype(np.uint8)


def assemble_heatmap(
    predictions: str, slide_info: str, out_tiff: str, out_png: str, *, columns: Sequence[str],
    storage: str = "memmap", aggregation: str = "mean", size: int = 1024,
) -> None:
    """File-level step: predictions Parquet + slide-table row -> heatmap TIFF + PNG of channel 0."""
    import pyvips

    import pandas as pd

    info = pd.read_parquet(slide_info).iloc[0]
    preds = pd.read_parquet(predictions)
    heat, mpp = build_heatmap(preds, info, columns, storage=storage, aggregation=aggregation)
    write_heatmap_tiff(
        out_tiff, heat, mpp,
        description={"generator": "mask_first.assembly.heatmaps", "columns": list(columns), "aggregation": aggregation,
                     "slide_id": str(info.slide_id), "mpp": list(mpp), "source": Path(predictions).name},
    )
    finite = heat[0][np.isfinite(heat[0])]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rgb = colourise(heat[0], vmin, vmax if vmax > vmin else vmin + 1)
    scale = size / max(rgb.shape[:2])
    img = pyvips.Image.new_from_array(rgb)
    if scale != 1:
        img = img.resize(scale, kernel="nearest")
    write_png(out_png, img.numpy())
