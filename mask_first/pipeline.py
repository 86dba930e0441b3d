"""The workflow's steps, one function per Snakemake rule: files in, files out.

Each function reads its inputs, calls the array-level functions of the
package and writes its outputs through :func:`mask_first.io.atomic_path`, so a
killed job never leaves a file that looks finished. The Snakemake scripts in
``workflow/scripts`` (``script:`` rules) and :mod:`mask_first.jobs` (the
per-slide ``shell:`` rules) only unpack the job's input, params and output and
call one of these; :func:`run_step` gives every step the same logging and the
same one-line error naming the slide.

Every job is a fresh Python process, so each step imports the modules it
uses inside its body: the tile job never loads the tissue detector, and no
job loads pandas (about 0.6 s).
"""

from __future__ import annotations

import importlib.abc
import logging
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("mask_first")

__all__ = [
    "run_step",
    "write_tiles",
    "make_tissue_mask",
    "filter_tiles",
    "write_retained_pixels",
    "write_slide_table",
    "write_summary",
    "write_heatmap",
    "write_predictions",
    "write_demo_slide",
]

#: Parquet schema-metadata key of the per-slide figures the filter and pixel steps record
STATS_KEY = b"mask_first.stats"
#: Parquet schema-metadata key of the retained table's small QC thumbnail (base64 JPEG)
THUMBNAIL_KEY = b"mask_first.thumbnail"


class _PandasBlocker(importlib.abc.MetaPathFinder):
    """Refuses ``import pandas`` while a step runs.

    pyarrow imports pandas (~0.6 s, twice what the rest of a lean job costs) the
    first time it converts anything, only to ask whether the input is a pandas
    object. When the import fails it records "no pandas" and carries on, which
    is all a per-slide step needs: its tables are built from numpy arrays.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError(f"mask-first: per-slide steps do not load pandas ({name})")
        return None


@contextmanager
def _without_pandas(enabled: bool) -> Iterator[None]:
    if not enabled or "pandas" in sys.modules:
        yield
        return
    blocker = _PandasBlocker()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)


def run_step(slide_id: str | None, log_path: str | None, func: Callable, /, *args, **kwargs) -> Any:
    """Run one workflow step with logging and a one-line error that names the slide.

    A :class:`~mask_first.slides.SlideError`, ``ValueError`` or
    ``FileNotFoundError`` (bad input) is reported as
    ``mask-first: slide <id>: <cause>`` on stderr and in the log, then the
    process exits with status 1, so Snakemake marks only this job failed and
    ``--keep-going`` carries on with the other slides. Any other exception
    keeps its traceback.

    Per-slide steps (``slide_id`` and ``log_path`` given) also keep a failure
    file (:func:`mask_first.cohort.failure_path` of the log): removed when the
    step starts, written atomically with the step, the cause and the log when
    it fails. Snakemake deletes a failed job's outputs but not this file, so
    the cohort tables can say which step failed and why; a rerun that
    succeeds leaves no failure behind.

    Steps run without pandas unless ``func`` has a true ``needs_pandas``
    attribute (see :class:`_PandasBlocker`).
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    failure = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
        if slide_id is not None:
            from mask_first.cohort import failure_path

            failure = failure_path(log_path)
            failure.unlink(missing_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)
    where = f"slide {slide_id}" if slide_id else func.__name__
    t0 = time.perf_counter()
    try:
        with _without_pandas(not getattr(func, "needs_pandas", False)):
            result = func(*args, **kwargs)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        bad_input = isinstance(exc, (ValueError, FileNotFoundError))  # SlideError is a ValueError
        if failure is not None:
            _record_failure(failure, slide_id, log_path, msg if bad_input else f"{type(exc).__name__}: {msg}")
        if not bad_input:
            raise
        log.error("mask-first: %s: %s", where, msg)
        logging.shutdown()
        sys.exit(1)
    # the step's own figure: under warm start Snakemake's benchmark file samples the waiting job process
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("%s: %s done in %.2f s, peak RSS %.0f MiB", where, func.__name__, time.perf_counter() - t0, peak_mib)
    return result


def _record_failure(path: Path, slide_id: str, log_path: str, error: str) -> None:
    """Write a step's failure file (see :func:`run_step`); the step is the log's folder under ``logs``."""
    import json

    from mask_first.io import atomic_path

    parts = Path(log_path).parts
    step = parts[len(parts) - parts[::-1].index("logs")] if "logs" in parts else Path(log_path).parent.name
    record = {"slide_id": slide_id, "step": step, "error": error, "log": str(log_path),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------
# per slide
# ---------------------------------------------------------------------------


def write_tiles(
    slide_path: str,
    out_info: str,
    out_tiles: str,
    *,
    slide_id: str,
    mpp: float | None,
    level: int | None,
    tile_extent: int,
    stride: int,
    last: str,
    mpp_override: float | None = None,
) -> int:
    """The slide's row of the slide table and every tile of its grid.

    ``out_info``: one row, ``slide_id`` then the columns of
    :func:`mask_first.slides.read_slides` and ``mpp_override``.
    ``out_tiles``: ``slide_id``, ``tile_id`` (row-major index), ``level``,
    ``x``, ``y`` (top-left, pixels of ``level``), ``tile_extent_x/y``
    (pixels of ``level``), ``mpp_x/y`` (µm/px of ``level``).

    Returns the number of tiles.
    """
    from mask_first.io import write_table
    from mask_first.slides import slide_row
    from mask_first.tiles.grid import grid_tiles

    row = slide_row(slide_path, mpp=mpp, level=level, tile_extent=tile_extent, stride=stride,
                    mpp_override=mpp_override)
    info = {"slide_id": slide_id, **row, "mpp_override": mpp_override}
    write_table(out_info, {k: [v] for k, v in info.items()})
    xy = grid_tiles((row["extent_x"], row["extent_y"]), (row["tile_extent_x"], row["tile_extent_y"]),
                    (row["stride_x"], row["stride_y"]), last=last)
    n = len(xy)
    write_table(out_tiles, {
        "slide_id": np.full(n, slide_id, object),
        "tile_id": np.arange(n, dtype=np.int64),
        "level": np.full(n, row["level"], np.int32),
        "x": xy[:, 0].astype(np.int64),
        "y": xy[:, 1].astype(np.int64),
        "tile_extent_x": np.full(n, row["tile_extent_x"], np.int32),
        "tile_extent_y": np.full(n, row["tile_extent_y"], np.int32),
        "mpp_x": np.full(n, row["mpp_x"]),
        "mpp_y": np.full(n, row["mpp_y"]),
    })
    log.info("%d tiles of %d x %d px at level %d", n, row["tile_extent_x"], row["tile_extent_y"], row["level"])
    return n


def make_tissue_mask(
    slide_path: str,
    out: str,
    *,
    slide_id: str,
    mpp: float,
    method: str,
    params: dict | None = None,
    mpp_override: float | None = None,
    out_geojson: str | None = None,
    geojson: str | None = None,
    geojson_classes: list[str] | None = None,
) -> None:
    """Tissue mask of a slide at ``mpp`` µm/px, written as a pyramidal TIFF overlay.

    ``geojson``: instead of detecting tissue, rasterise this (QuPath) GeoJSON
    of level-0 pixel polygons on the same grid; ``geojson_classes`` are the
    classifications that count as tissue (empty: all), see
    :func:`mask_first.interop.geojson.geojson_to_mask`. ``out_geojson``: also
    write the mask as a QuPath FeatureCollection, one annotation per label
    (:func:`mask_first.interop.geojson.mask_to_feature_collection`).
    """
    from mask_first.slides import open_slide
    from mask_first.tissue.overlay import write_mask_overlay

    t0 = time.perf_counter()
    with open_slide(slide_path, mpp_override) as slide:
        slide_mpp = (slide.mpp_x, slide.mpp_y)
        log.info("mask: slide %s, %d levels, level 0 %d x %d px; %s mask at %g µm/px", Path(slide_path).name,
                 slide.level_count, *slide.level_dimensions[0], "geojson" if geojson else method, mpp)
        if geojson:
            from mask_first.interop.geojson import geojson_to_mask

            mask, info = geojson_to_mask(geojson, slide.level_dimensions[0], slide_mpp, mpp,
                                         classes=geojson_classes)
            provenance = {"generator": "mask_first.interop.geojson", "source": str(geojson), "mpp": mpp,
                          "labels": {"0": "background", "255": "tissue"}, "slide": Path(slide_path).name,
                          "slide_mpp": list(slide_mpp), "slide_dimensions": list(slide.level_dimensions[0]),
                          **info}
        else:
            from mask_first.tissue.detection import tissue_mask_with_info

            result = tissue_mask_with_info(slide, mpp, method=method, **dict(params or {}))
            # method, filled-in parameters, thresholds found, level read, source slide and mpp
            mask, provenance = result.mask, result.provenance()
    log.info("mask: %d x %d px, tissue %.1f %%, %.1f s", mask.shape[1], mask.shape[0],
             100 * np.count_nonzero(mask == 255) / max(mask.size, 1), time.perf_counter() - t0)
    provenance = provenance | {"slide_id": slide_id}
    write_mask_overlay(out, mask, mpp, provenance=provenance)
    log.info("mask: %.2f MB written to %s, %.1f s", Path(out).stat().st_size / 1e6, out, time.perf_counter() - t0)
    if out_geojson:
        from mask_first.interop.geojson import mask_to_feature_collection, write_feature_collection

        collection = mask_to_feature_collection(mask, mpp, slide_mpp, labels=provenance.get("labels"),
                                                slide_id=slide_id)
        write_feature_collection(out_geojson, collection)


def filter_tiles(
    tiles: str,
    slide_path: str,
    out_retained: str,
    out_qc: str,
    *,
    method: str,
    threshold: float,
    mask: str | None = None,
    value: int = 255,
    user_mask: bool = False,
    qc_size: int = 1024,
    threads: int = 1,
    mpp_override: float | None = None,
    slide_id: str = "",
    out_coords: str | None = None,
    out_tile_objects: str | None = None,
    mask_geojson: str | None = None,
) -> int:
    """Score every tile, mark the retained ones, draw the QC picture.

    ``method="mask"``: each tile's coverage by every label of ``mask`` (exact
    area arithmetic on the mask, no slide pixel decoded) as ``fraction_<label>``
    columns; ``retained`` is ``fraction_<value> >= threshold``
    (:func:`mask_first.tiles.coverage.retain`). A user-supplied mask is checked
    against the slide's size first. ``method="pixel_std"``: the mask-free
    baseline, decoding every tile (``pixel_std``, ``retained = pixel_std >= threshold``).

    The retained table is the tile table plus those columns; its Parquet
    metadata (``mask_first.stats``) records tiles total/retained and, for the
    mask filter, the figures of :func:`mask_first.cohort.mask_stats` (tissue,
    per-label and ink area in mm², share of the mask edge that is tissue),
    which the cohort summary reads without opening the mask again;
    ``mask_first.thumbnail`` carries the contact sheet's small JPEG of the QC picture.
    The QC picture is the slide thumbnail with the mask outline and the retained
    tiles (:func:`mask_first.qc.qc_thumbnail`).

    ``out_coords``: the retained tiles' level-0 (x, y) as a CLAM/TRIDENT HDF5
    (:func:`mask_first.interop.h5.write_coords_h5`). ``out_tile_objects``: a
    QuPath GeoJSON of the annotations in ``mask_geojson`` (if given) plus each
    retained tile as a ``tile`` object with its ``fraction_*`` measurements.

    Returns the number of retained tiles.
    """
    import json

    import pyarrow as pa

    from mask_first.io import read_table, write_png, write_table
    from mask_first.qc import qc_thumbnail
    from mask_first.report import small_jpeg
    from mask_first.slides import open_slide

    table = read_table(tiles)
    n = table.num_rows
    x = table.column("x").to_numpy()
    y = table.column("y").to_numpy()
    if n:
        level = int(table.column("level")[0].as_py())
        tx, ty = int(table.column("tile_extent_x")[0].as_py()), int(table.column("tile_extent_y")[0].as_py())
        mx, my = float(table.column("mpp_x")[0].as_py()), float(table.column("mpp_y")[0].as_py())
    stats: dict[str, Any] = {"tiles_total": n}
    mask_image = None
    with open_slide(slide_path, mpp_override) as slide:
        if method == "mask":
            from mask_first.cohort import ink_label_values, mask_stats
            from mask_first.tiles.coverage import overlap_fractions, retain
            from mask_first.tissue.overlay import check_mask_alignment, read_mask_overlay

            labels, mmx, mmy, provenance = read_mask_overlay(mask)
            if user_mask:
                check_mask_alignment(labels.shape, (mmx, mmy), slide, mask_name=Path(mask).name)
            fractions = (overlap_fractions(labels, (mmx, mmy), (0, 0, tx, ty), x, y, mx, my)
                         if n else {"0": np.zeros(0)})
            for label, frac in fractions.items():
                table = table.append_column(f"fraction_{label}", pa.array(frac))
            if f"fraction_{value}" not in table.column_names:  # no such label in the mask: nothing passes
                table = table.append_column(f"fraction_{value}", pa.array(np.zeros(n)))
            keep = retain(fractions, value, threshold)
            stats |= mask_stats(labels, (mmx, mmy), value, ink_label_values(provenance))
            mask_image = (labels, (mmx, mmy))
        else:
            from mask_first.tiles.pixels import iter_slide_tiles, tile_pixel_std

            std = np.zeros(n)
            if n:
                for sl, batch in iter_slide_tiles(slide, x, y, tx, ty, level, threads=threads):
                    std[sl] = tile_pixel_std(batch)
            table = table.append_column("pixel_std", pa.array(std))
            keep = std >= threshold
            stats["tissue_area_mm2"] = None
        table = table.append_column("retained", pa.array(keep, pa.bool_()))
        stats["tiles_retained"] = int(keep.sum())
        tile_extent, tile_mpp = ((tx, ty), (mx, my)) if n else ((1, 1), (1.0, 1.0))
        picture = qc_thumbnail(slide, x[keep], y[keep], tile_extent, tile_mpp, mask=mask_image, size=qc_size)
        if out_coords or out_tile_objects:
            _write_tile_interop(slide, table, keep, out_coords, out_tile_objects, mask_geojson, slide_id)
    # the contact sheet's thumbnail travels with the stats: the cohort job then
    # opens no picture, however many slides there are
    write_table(out_retained, table, metadata={STATS_KEY: json.dumps(stats), THUMBNAIL_KEY: small_jpeg(picture)})
    write_png(out_qc, picture)
    log.info("%d of %d tiles retained", stats["tiles_retained"], n)
    return stats["tiles_retained"]


def _write_tile_interop(slide, table, keep, out_coords, out_tile_objects, mask_geojson, slide_id) -> None:
    """The filter step's exports of the retained tiles: CLAM/TRIDENT HDF5, QuPath tile objects."""
    n = table.num_rows
    first = table.slice(0, 1).to_pylist()
    level = int(first[0]["level"]) if n else 0
    tw, th = (int(first[0]["tile_extent_x"]), int(first[0]["tile_extent_y"])) if n else (1, 1)
    x = table.column("x").to_numpy()[keep]
    y = table.column("y").to_numpy()[keep]
    steps = np.diff(np.unique(table.column("x").to_numpy())) if n else np.zeros(0)
    stride = (int(np.bincount(steps).argmax()), 0) if len(steps) else None  # the grid step (mode)
    if out_coords:
        from mask_first.interop.h5 import write_coords_h5

        write_coords_h5(out_coords, x, y, level=level, tile_extent=(tw, th), stride=stride, slide=slide,
                        name=slide_id)
    if out_tile_objects:
        import json

        from mask_first.interop.geojson import tile_features, write_feature_collection
        from mask_first.interop.h5 import level0_coords

        lv = slide.levels[level]
        xy0 = level0_coords(x, y, (lv.downsample_x, lv.downsample_y))
        frac = {c: table.column(c).to_numpy()[keep] for c in table.column_names if c.startswith("fraction_")}
        features = json.loads(Path(mask_geojson).read_text())["features"] if mask_geojson else []
        features += tile_features(xy0[:, 0], xy0[:, 1], tw * lv.downsample_x, th * lv.downsample_y, frac,
                                  slide_id=slide_id)
        write_feature_collection(out_tile_objects, {"type": "FeatureCollection", "features": features})


def write_retained_pixels(
    retained: str, slide_path: str, out: str, *, encoding: str = "raw", jpeg_quality: int = 90,
    compression: str = "none", row_group_tiles: int = 16, threads: int = 1, mpp_override: float | None = None,
    resample: bool = True, mpp: float | None = None, tile_extent: int | None = None,
    corrupt_tiles: str = "fail",
) -> int:
    """RGB pixels of the retained tiles only, streamed into Parquet row groups.

    With ``resample`` and a target ``mpp`` (the tiling was given in µm/px, not
    as a level), every tile is delivered as ``tile_extent`` pixels at the
    target resolution, area-averaged from the level read when that level's
    region has another size (no pyramid level at ``mpp``); otherwise the
    native pixels of the level are stored.

    ``corrupt_tiles``: ``fail`` or ``skip`` a tile whose data cannot be decoded
    (see :func:`mask_first.tiles.pixels.write_tile_pixels`); skipped tiles are
    logged and listed in the file's ``mask_first.stats`` metadata.
    """
    from mask_first.io import read_table
    from mask_first.tiles.pixels import write_tile_pixels

    table = read_table(retained)
    kept = table.filter(table.column("retained")).drop_columns(["retained"])
    log.info("pixels: %d retained tiles to read", kept.num_rows)
    first = table.slice(0, 1).to_pylist()
    tx, ty, level = (first[0]["tile_extent_x"], first[0]["tile_extent_y"], first[0]["level"]) if first else (1, 1, 0)
    resample_to = _delivered_size(resample, mpp, tile_extent) if first else None
    n = write_tile_pixels(
        out, slide_path, kept, level=level, tile_extent_x=tx, tile_extent_y=ty, resample_to=resample_to,
        encoding=encoding, jpeg_quality=jpeg_quality, compression=compression, row_group_tiles=row_group_tiles,
        threads=threads,
        mpp_override=mpp_override, corrupt_tiles=corrupt_tiles,
    )
    log.info("%d tiles written%s", n, f", delivered at {resample_to[0]} px" if resample_to else "")
    return n


# ---------------------------------------------------------------------------
# cohort
# ---------------------------------------------------------------------------


def _slide_statuses(slides: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from mask_first.cohort import slide_status

    return [slide_status(s["failures"], s["outputs"]) for s in slides]


def write_slide_table(slides: Sequence[Mapping[str, Any]], out: str) -> None:
    """The cohort slide table: one row per slide of the sheet, failed slides included.

    ``slides``: one mapping per slide of the sheet, in sheet order, with
    ``slide_id``, ``path``, ``mpp_override``, ``mask`` (the mask file the run
    uses, None for ``filter.method: pixel_std``), ``info`` (the tiles step's
    one-row table), ``failures`` and ``outputs`` (see
    :func:`mask_first.cohort.slide_status`). Columns: the slide-info columns
    (null where the tiles step did not finish), ``mask_path``, ``status``,
    ``failed_step``, ``error``.
    """
    import pyarrow as pa

    from mask_first.io import read_table, write_table

    statuses = _slide_statuses(slides)
    tables = []
    for s in slides:
        try:
            tables.append(read_table(s["info"]))
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            tables.append(pa.table({"slide_id": [s["slide_id"]], "path": [str(s["path"])],
                                    "mpp_override": pa.array([s["mpp_override"]], pa.float64())}))
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({"slide_id": pa.array([], pa.string())})
    for name, values in (("mask_path", [s["mask"] for s in slides]),
                         ("status", [st["status"] for st in statuses]),
                         ("failed_step", [st["failed_step"] for st in statuses]),
                         ("error", [st["error"] for st in statuses])):
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(values, pa.string()))
    write_table(out, table)
    failed = [f"{s['slide_id']} ({st['failed_step'] or st['status']})" for s, st in zip(slides, statuses)
              if st["status"] != "done"]
    log.info("%d slides, %d not done%s", len(slides), len(failed), f": {', '.join(failed[:20])}" if failed else "")


def _benchmark_seconds(files: Sequence[str]) -> dict[str, float]:
    """Wall seconds per step from Snakemake benchmark files (``<step>/<slide>.tsv``, ``<step>/<slide>/<key>.tsv``)."""
    out = {}
    for f in files:
        p = Path(f)
        step = p.parent.parent.name if p.parent.parent.name != "benchmarks" else p.parent.name
        try:
            header, values = p.read_text().splitlines()[:2]
            out[step] = float(dict(zip(header.split("\t"), values.split("\t")))["s"])
        except (FileNotFoundError, KeyError, ValueError):
            continue
    return out


def _parquet_metadata(path: str | None) -> dict[bytes, bytes]:
    """A Parquet file's key-value metadata (schema metadata included); {} when it is missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path:
        return {}
    try:
        return pq.read_metadata(path).metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return {}


def write_summary(
    slides: Sequence[Mapping[str, Any]],
    out: str,
    out_sheet: str | None = None,
    *,
    border_fraction: float,
    area_outlier_z: float,
    ink_area_mm2: float,
) -> list[dict[str, Any]]:
    """Per-slide summary of the cohort, every slide of the sheet, and its contact sheet.

    ``slides`` as for :func:`write_slide_table`, plus ``retained`` (the filter
    step's table), ``pixels`` (the pixel table, None when pixels are off) and
    ``benchmarks`` (the steps' benchmark files). Columns: ``slide_id``,
    ``status`` (done / failed / incomplete), ``failed_step``, ``error`` (one
    line), ``flags`` (``; ``-separated words, see
    :func:`mask_first.cohort.qc_flags`), tiles total / retained /
    ``retained_fraction``, ``tissue_area_mm2`` (mask pixels of the tissue label
    times their area), ``border_tissue_fraction``, ``ink_area_mm2``,
    ``tiles_skipped`` and ``skipped_tiles`` (corrupt tiles left out by
    ``pixels.corrupt_tiles: skip``, as ``tile_id@x,y``), ``mpp_override``,
    ``seconds_<step>``. Figures are read from the retained and pixel tables'
    Parquet metadata, never from the masks. ``out_sheet``: the HTML contact
    sheet (:func:`mask_first.report.write_contact_sheet`). Returns the rows.
    """
    import json

    from mask_first.cohort import FLAGS, area_outliers, qc_flags
    from mask_first.io import write_tsv

    statuses = _slide_statuses(slides)
    rows, thumbs = [], []
    for s, st in zip(slides, statuses):
        meta = _parquet_metadata(s["retained"])
        stats = json.loads(meta[STATS_KEY]) if STATS_KEY in meta else {}
        pixel_meta = _parquet_metadata(s.get("pixels"))
        pixel_stats = json.loads(pixel_meta[STATS_KEY]) if STATS_KEY in pixel_meta else {}
        thumb = meta.get(THUMBNAIL_KEY)
        thumbs.append(thumb.decode() if thumb else None)
        total, kept = stats.get("tiles_total"), stats.get("tiles_retained")
        skipped = pixel_stats.get("skipped", [])
        row: dict[str, Any] = {
            "slide_id": s["slide_id"],
            "status": st["status"],
            "failed_step": st["failed_step"],
            "error": st["error"],
            "flags": "",
            "tiles_total": total,
            "tiles_retained": kept,
            "retained_fraction": (kept / total if total else 0.0) if total is not None else None,
            "tissue_area_mm2": stats.get("tissue_area_mm2"),
            "border_tissue_fraction": stats.get("border_tissue_fraction"),
            "ink_area_mm2": stats.get("ink_area_mm2"),
            "tiles_skipped": pixel_stats.get("tiles_skipped", 0 if pixel_stats else None),
            "skipped_tiles": " ".join(f"{t['tile_id']}@{t['x']},{t['y']}" for t in skipped) or None,
            "mpp_override": s["mpp_override"],
        }
        for step, sec in sorted(_benchmark_seconds(s["benchmarks"]).items()):
            row[f"seconds_{step}"] = round(sec, 3)
        rows.append(row)
    outliers = area_outliers([r["tissue_area_mm2"] if r["status"] == "done" else None for r in rows], area_outlier_z)
    flags = [qc_flags(r, outlier=o, border_fraction=border_fraction, ink_area_mm2=ink_area_mm2)
             for r, o in zip(rows, outliers)]
    for r, f in zip(rows, flags):
        r["flags"] = "; ".join(f)
    write_tsv(out, rows)
    if out_sheet:
        from mask_first.report import write_contact_sheet

        write_contact_sheet(out_sheet, rows, flags, thumbs)
    counts = {f: sum(f in fl for fl in flags) for f in FLAGS}
    log.info("summary of %d slides; flags: %s", len(rows), ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none")
    return rows


def write_cohort_tables(slides: Sequence[Mapping[str, Any]], out_table: str, out_summary: str,
                        out_sheet: str, *, log_path: str | None = None, only_if_stale: bool = False,
                        **thresholds) -> bool:
    """Write the cohort outputs from whatever exists; for the Snakefile's ``onerror``/``onsuccess`` handlers.

    ``onerror``: when a slide failed, Snakemake never runs the cohort rules,
    yet the tables must list every slide with its status. ``onsuccess``
    (``only_if_stale=True``): the cohort rules do not wait for the model
    (``predict``) and heatmap jobs, so that a model edit reruns only those;
    the tables are rewritten only if a slide's status on disk now differs
    from theirs (a failure cleared by a rerun, or a job that finished after
    them). Runs in Snakemake's own process and never raises: a problem here
    is reported and must not hide the failures that got us here.

    Returns whether the tables were written.
    """
    # Snakemake's own process: the csv module and pyarrow, not pandas. Snakemake
    # loads pandas itself once a job has finished, but a run with nothing to do
    # (or a dry run's handlers) would otherwise pay its 0.3-1.2 s import here
    from mask_first.io import read_table, read_tsv

    try:
        with _without_pandas(True):
            if only_if_stale:
                statuses = _slide_statuses(slides)
                want = [(s["slide_id"], st["status"], st["failed_step"], st["error"]) for s, st in zip(slides, statuses)]
                try:
                    have = [(r["slide_id"], r["status"], r["failed_step"] or None, r["error"] or None)
                            for r in read_tsv(out_summary)]
                    table = read_table(out_table, columns=["slide_id", "status"]).to_pydict()
                    have_table = list(zip(table["slide_id"], table["status"]))
                except (FileNotFoundError, OSError, ValueError, KeyError):
                    have, have_table = None, None
                if have == want and have_table == [w[:2] for w in want]:
                    return False
            if log_path:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                handler = logging.FileHandler(log_path, mode="w")
                handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
                log.addHandler(handler)
                log.setLevel(logging.INFO)
            write_slide_table(slides, out_table)
            summary = write_summary(slides, out_summary, out_sheet, **thresholds)
            bad = [r for r in summary if r["status"] != "done"]
            print(f"mask-first: {len(bad)} of {len(summary)} slides not done; cohort tables written: "
                  f"{out_table}, {out_summary}, {out_sheet}", file=sys.stderr)
            for r in bad[:20]:
                print(f"mask-first:   {r['slide_id']}: {r['status']}"
                      f"{' at ' + r['failed_step'] if r['failed_step'] else ''}: {r['error']}", file=sys.stderr)
            return True
    except Exception as exc:  # noqa: BLE001 -- see docstring
        print(f"mask-first: could not write the cohort tables: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    finally:
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()


def write_heatmap(
    predictions: str, slide_info: str, out_tiff: str, out_png: str, *, columns: Sequence[str],
    storage: str = "memmap", aggregation: str = "mean", size: int = 1024,
) -> None:
    """Assemble per-tile predictions into a slide-aligned heatmap TIFF and a PNG.

    ``predictions`` is a Parquet table with tile ``x``, ``y`` (pixels of the
    slide's tiling level) and one column per channel in ``columns``; see
    :func:`mask_first.assembly.heatmaps.assemble_heatmap`.
    """
    from mask_first.assembly.heatmaps import assemble_heatmap

    assemble_heatmap(predictions, slide_info, out_tiff, out_png, columns=columns, storage=storage,
                     aggregation=aggregation, size=size)


# assemble_heatmap reads the user's table with pandas (any layout pandas reads)
write_heatmap.needs_pandas = True


def _delivered_size(resample: bool, mpp: float | None, tile_extent: int | None) -> tuple[int, int] | None:
    """(width, height) in pixels at ``mpp`` µm/px of tiles read from the slide, or None for native pixels.

    Only a tiling given in µm/px (not a fixed level) has a target resolution.
    """
    return (tile_extent, tile_extent) if resample and mpp is not None and tile_extent else None


def write_predictions(
    retained: str, slide_info: str, out_predictions: str, out_tiff: str, out_png: str, *,
    resample: bool = True, mpp: float | None = None, tile_extent: int | None = None, **kwargs: Any,
) -> int:
    """Run the configured model on the retained tiles; predictions table, heatmap TIFF and PNG.

    Tiles read from the slide (no pixel table) are delivered like the pixel
    step's (see :func:`write_retained_pixels`): ``tile_extent`` pixels at
    ``mpp`` when ``resample``. See :func:`mask_first.predict.predict_slide`
    for the other keyword arguments.
    """
    from mask_first.predict import predict_slide

    # our own code stays pandas-free; the user's model may import it (or something that does)
    return predict_slide(retained, slide_info, out_predictions, out_tiff, out_png, user_code=_allow_pandas,
                         resample_to=_delivered_size(resample, mpp, tile_extent), **kwargs)


@contextmanager
def _allow_pandas() -> Iterator[None]:
    """Lift the per-slide pandas block while user code (a model) is imported or runs."""
    blockers = [f for f in sys.meta_path if isinstance(f, _PandasBlocker)]
    for b in blockers:
        sys.meta_path.remove(b)
    try:
        yield
    finally:
        sys.meta_path[0:0] = blockers


def write_demo_slide(out: str, *, spec: dict) -> None:
    """One slide of the synthetic demo cohort (see :func:`mask_first.synthetic.demo_cohort_specs`)."""
    from mask_first.synthetic import write_synthetic_slide

    spec = dict(spec)
    spec.pop("slide_id", None)
    width, height = spec.pop("width"), spec.pop("height")
    write_synthetic_slide(out, width, height, **spec)
