"""The workflow's steps, one function per Snakemake rule: files in, files out.

Each function reads its inputs, calls the array-level functions of the
package, and writes its output atomically (temporary name, then rename), so a
killed job never leaves a file that looks finished. The Snakemake scripts in
``workflow/scripts`` only unpack ``snakemake.input/params/output`` and call one
of these; :func:`run_step` gives every step the same logging and the same
one-line error naming the slide.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mask_first.slides import SlideError, open_slide, slide_row
from mask_first.tiling.grid import grid_tiles
from mask_first.tiling.overlap import overlap_fractions

log = logging.getLogger("mask_first")

__all__ = [
    "run_step",
    "atomic_path",
    "write_slide_info",
    "concat_tables",
    "make_tissue_mask",
    "import_user_mask",
    "copy_or_import_mask",
    "write_tile_table",
    "filter_tiles_by_mask",
    "filter_tiles_by_pixel_std",
    "write_retained_pixels",
    "write_qc_image",
    "write_summary",
    "write_heatmap",
    "write_demo_slide",
]


# ---------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling of ``path``; rename it to ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, compression="zstd")


def run_step(slide_id: str | None, log_path: str | None, func: Callable, /, *args, **kwargs) -> Any:
    """Run one workflow step with logging and a one-line error that names the slide.

    A :class:`~mask_first.slides.SlideError` or ``ValueError`` (bad input) is
    reported as ``mask-first: slide <id>: <cause>`` on stderr and in the log,
    then the process exits with status 1, so Snakemake marks only this job
    failed and ``--keep-going`` carries on with the other slides.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)
    where = f"slide {slide_id}" if slide_id else func.__name__
    t0 = time.perf_counter()
    try:
        result = func(*args, **kwargs)
    except (SlideError, ValueError, FileNotFoundError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("mask-first: %s: %s", where, msg)
        logging.shutdown()
        sys.exit(1)
    log.info("%s: %s done in %.2f s", where, func.__name__, time.perf_counter() - t0)
    return result


# ---------------------------------------------------------------------------
# slide table and tiles
# ---------------------------------------------------------------------------


def write_slide_info(
    slide_path: str,
    out: str,
    *,
    slide_id: str,
    mpp: float | None,
    level: int | None,
    tile_extent: int,
    stride: int,
    mpp_override: float | None = None,
) -> pd.DataFrame:
    """One-row slide table (see :func:`mask_first.slides.read_slides`) with ``slide_id`` first."""
    row = slide_row(slide_path, mpp=mpp, level=level, tile_extent=tile_extent, stride=stride,
                    mpp_override=mpp_override)
    df = pd.DataFrame([{"slide_id": slide_id, **row, "mpp_override": mpp_override}])
    _write_parquet(df, out)
    return df


def concat_tables(inputs: Sequence[str], out: str) -> None:
    """Stack per-slide Parquet tables into one (the cohort slide table)."""
    frames = [pd.read_parquet(p) for p in inputs]
    _write_parquet(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), out)


def write_tile_table(slide_info: str, out: str, *, last: str = "keep") -> int:
    """Every grid tile of the slide's chosen level.

    Columns: ``slide_id``, ``tile_id`` (row-major index), ``level``, ``x``, ``y``
    (top-left, pixels of ``level``), ``tile_extent_x/y``, ``mpp_x/y`` (µm/px).
    """
    info = pd.read_parquet(slide_info).iloc[0]
    xy = grid_tiles(
        (int(info.extent_x), int(info.extent_y)),
        (int(info.tile_extent_x), int(info.tile_extent_y)),
        (int(info.stride_x), int(info.stride_y)),
        last=last,
    )
    n = len(xy)
    df = pd.DataFrame(
        {
            "slide_id": pd.Series([info.slide_id] * n, dtype="string"),
            "tile_id": np.arange(n, dtype=np.int64),
            "level": np.full(n, int(info.level), np.int32),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "tile_extent_x": np.full(n, int(info.tile_extent_x), np.int32),
            "tile_extent_y": np.full(n, int(info.tile_extent_y), np.int32),
            "mpp_x": np.full(n, float(info.mpp_x)),
            "mpp_y": np.full(n, float(info.mpp_y)),
        }
    )
    _write_parquet(df, out)
    return n


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


def make_tissue_mask(
    slide_path: str,
    out: str,
    *,
    slide_id: str,
    mpp: float,
    method: str,
    params: dict | None = None,
    mpp_override: float | None = None,
) -> None:
    """Tissue mask of a slide at ``mpp`` µm/px, written as a pyramidal TIFF overlay."""
    from mask_first.masks.overlay import write_mask_overlay
    from mask_first.masks.tissue import tissue_mask_with_info

    with open_slide(slide_path, mpp_override) as slide:
        result = tissue_mask_with_info(slide, mpp, method=method, **dict(params or {}))
    # method, filled-in parameters, thresholds found, level read, source slide and mpp
    provenance = result.provenance() | {"slide_id": slide_id}
    write_mask_overlay(out, result.mask, mpp, provenance=provenance)


def copy_or_import_mask(
    mask_path: str, slide_path: str, out: str, *, user_mask: bool, mpp_override: float | None = None
) -> None:
    """Publish a slide's mask at its stable path: a cached generated mask, or a checked user mask."""
    if user_mask:
        import_user_mask(mask_path, slide_path, out, mpp_override=mpp_override)
    else:
        # a copy, not a link: the new mtime tells downstream rules the mask changed
        with atomic_path(out) as tmp:
            shutil.copyfile(mask_path, tmp)


def import_user_mask(mask_path: str, slide_path: str, out: str, *, mpp_override: float | None = None) -> None:
    """Check a user-supplied mask against its slide and copy it into the results."""
    from mask_first.masks.overlay import check_mask_alignment, read_mask_overlay

    try:
        mask, mx, my, _ = read_mask_overlay(mask_path)
    except ValueError as exc:
        raise ValueError(f"user mask {Path(mask_path).name}: {exc}") from None
    with open_slide(slide_path, mpp_override) as slide:
        check_mask_alignment(mask.shape, (mx, my), slide, mask_name=Path(mask_path).name)
    with atomic_path(out) as tmp:
        shutil.copyfile(mask_path, tmp)


# ---------------------------------------------------------------------------
# filtering
# ---------------------------------------------------------------------------


def filter_tiles_by_mask(
    tiles: str, mask: str, out: str, *, threshold: float, value: int = 255
) -> pd.DataFrame:
    """Measure each tile's mask coverage and mark the tiles that pass ``threshold``.

    Output: the tile table plus ``fraction_<label>`` columns (fraction of the
    tile covered by each mask label) and the boolean ``retained``
    (``fraction_<value> >= threshold``). Pure arithmetic on the mask: no slide
    pixel is decoded.
    """
    from mask_first.masks.overlay import read_mask_overlay

    df = pd.read_parquet(tiles)
    m, mmx, mmy, _ = read_mask_overlay(mask)
    if len(df):
        fr = overlap_fractions(
            m, (mmx, mmy), (0, 0, int(df.tile_extent_x.iloc[0]), int(df.tile_extent_y.iloc[0])),
            df.x.to_numpy(), df.y.to_numpy(), float(df.mpp_x.iloc[0]), float(df.mpp_y.iloc[0]),
        )
    else:
        fr = {"0": np.zeros(0)}
    for label, frac in fr.items():
        df[f"fraction_{label}"] = frac
    key = f"fraction_{value}"
    if key not in df:
        df[key] = 0.0  # the mask has no such label: nothing passes
    df["retained"] = df[key].to_numpy() >= threshold
    _write_parquet(df, out)
    return df


def filter_tiles_by_pixel_std(
    tiles: str, slide_path: str, out: str, *, threshold: float, threads: int = 1,
    mpp_override: float | None = None,
) -> pd.DataFrame:
    """The mask-free alternative: decode every tile and keep the textured ones.

    Output: the tile table plus ``pixel_std`` (grey-level standard deviation)
    and ``retained`` (``pixel_std >= threshold``).
    """
    from mask_first.tiling.pixels import iter_slide_tiles, tile_pixel_std

    df = pd.read_parquet(tiles)
    std = np.zeros(len(df))
    if len(df):
        level = int(df.level.iloc[0])
        tx, ty = int(df.tile_extent_x.iloc[0]), int(df.tile_extent_y.iloc[0])
        for sl, batch in iter_slide_tiles(slide_path, df.x.to_numpy(), df.y.to_numpy(), tx, ty, level,
                                          threads=threads, mpp_override=mpp_override):
            std[sl] = tile_pixel_std(batch)
    df["pixel_std"] = std
    df["retained"] = std >= threshold
    _write_parquet(df, out)
    return df


def write_retained_pixels(
    retained: str, slide_path: str, out: str, *, encoding: str = "raw", jpeg_quality: int = 90,
    row_group_tiles: int = 256, threads: int = 1, mpp_override: float | None = None,
) -> int:
    """RGB pixels of the retained tiles only, streamed into Parquet row groups."""
    from mask_first.tiling.pixels import write_tile_pixels

    df = pd.read_parquet(retained)
    kept = df[df.retained].drop(columns=["retained"])
    tx = int(df.tile_extent_x.iloc[0]) if len(df) else 1
    ty = int(df.tile_extent_y.iloc[0]) if len(df) else 1
    level = int(df.level.iloc[0]) if len(df) else 0
    return write_tile_pixels(
        out, slide_path, kept, level=level, tile_extent_x=tx, tile_extent_y=ty, encoding=encoding,
        jpeg_quality=jpeg_quality, row_group_tiles=row_group_tiles, threads=threads, mpp_override=mpp_override,
    )


# ---------------------------------------------------------------------------
# QC, summary, heatmaps, demo data
# ---------------------------------------------------------------------------


def write_qc_image(
    slide_path: str, retained: str, out: str, *, mask: str | None = None, size: int = 1024,
    mpp_override: float | None = None,
) -> None:
    """Thumbnail with the mask outline and the retained tiles drawn on it (PNG)."""
    from mask_first.qc import qc_thumbnail, write_png

    df = pd.read_parquet(retained)
    m = None
    if mask is not None:
        from mask_first.masks.overlay import read_mask_overlay

        arr, mmx, mmy, _ = read_mask_overlay(mask)
        m = (arr, (mmx, mmy))
    with open_slide(slide_path, mpp_override) as slide:
        img = qc_thumbnail(slide, df[df.retained], mask=m, size=size)
    with atomic_path(out) as tmp:
        write_png(tmp, img)


def _benchmark_seconds(files: Sequence[str]) -> dict[str, float]:
    """Wall seconds per step from Snakemake benchmark files named ``<step>/<slide>.tsv``."""
    out = {}
    for f in files:
        try:
            out[Path(f).parent.name] = float(pd.read_csv(f, sep="\t")["s"].iloc[0])
        except (FileNotFoundError, KeyError, IndexError, pd.errors.EmptyDataError):
            continue
    return out


def write_summary(
    slide_ids: Sequence[str],
    retained: Sequence[str],
    masks: Sequence[str | None],
    benchmarks: Sequence[Sequence[str]],
    out: str,
) -> pd.DataFrame:
    """Per-slide summary: tiles total and retained, tissue area in mm², seconds per step."""
    from mask_first.masks.overlay import read_mask_overlay

    rows = []
    for sid, ret, mask, bench in zip(slide_ids, retained, masks, benchmarks):
        df = pd.read_parquet(ret, columns=["retained"])
        row: dict[str, Any] = {
            "slide_id": sid,
            "tiles_total": len(df),
            "tiles_retained": int(df.retained.sum()),
            "retained_fraction": float(df.retained.mean()) if len(df) else 0.0,
        }
        if mask:
            m, mmx, mmy, _ = read_mask_overlay(mask)
            row["tissue_area_mm2"] = float(np.count_nonzero(m == 255)) * mmx * mmy / 1e6
        else:
            row["tissue_area_mm2"] = float("nan")
        for step, s in sorted(_benchmark_seconds(bench).items()):
            row[f"seconds_{step}"] = round(s, 3)
        rows.append(row)
    summary = pd.DataFrame(rows)
    with atomic_path(out) as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return summary


def write_heatmap(
    predictions: str, slide_info: str, out_tiff: str, out_png: str, *, columns: Sequence[str],
    storage: str = "memmap", aggregation: str = "mean", size: int = 1024,
) -> None:
    """Assemble per-tile predictions into a slide-aligned heatmap TIFF and a QC PNG.

    ``predictions`` is a Parquet table with tile ``x``, ``y`` (pixels of the
    slide's tiling level) and one column per channel in ``columns``. The heatmap
    has one value per stride cell (see :class:`mask_first.masks.mask_builders.MaskBuilder`)
    and its resolution tags give its µm/px, so it overlays the slide exactly.
    """
    from mask_first.masks.heatmaps import assemble_heatmap

    assemble_heatmap(predictions, slide_info, out_tiff, out_png, columns=columns, storage=storage,
                     aggregation=aggregation, size=size)


def write_demo_slide(out: str, *, spec: dict) -> None:
    """One slide of the synthetic demo cohort (see :func:`mask_first.synthetic.demo_cohort_specs`)."""
    from mask_first.synthetic import write_synthetic_slide

    spec = dict(spec)
    spec.pop("slide_id", None)
    width, height = spec.pop("width"), spec.pop("height")
    write_synthetic_slide(out, width, height, **spec)
