"""The workflow's steps, one function per Snakemake rule: files in, files out.

Each function reads its inputs, calls the array-level functions of the
package and writes its outputs through :func:`mask_first.io.atomic_path`, so a
killed job never leaves a file that looks finished. The Snakemake scripts in
``workflow/scripts`` only unpack ``snakemake.input/params/output`` and call one
of these; :func:`run_step` gives every step the same logging and the same
one-line error naming the slide.

Every job is a fresh Python process, so each step imports the modules it
uses inside its body: the tile job never loads the tissue detector, and no
per-slide job loads pandas (about 0.6 s) -- only the cohort steps do.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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

#: Parquet schema-metadata key of the per-slide figures the filter step records
STATS_KEY = b"mask_first.stats"


class _PandasBlocker(importlib.abc.MetaPathFinder):
    """Refuses ``import pandas`` while a per-slide step runs.

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
    ``--keep-going`` carries on with the other slides.

    Per-slide steps (``slide_id`` given) run without pandas unless ``func``
    has a true ``needs_pandas`` attribute (see :class:`_PandasBlocker`).
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)
    where = f"slide {slide_id}" if slide_id else func.__name__
    t0 = time.perf_counter()
    try:
        with _without_pandas(slide_id is not None and not getattr(func, "needs_pandas", False)):
            result = func(*args, **kwargs)
    except (ValueError, FileNotFoundError) as exc:  # SlideError is a ValueError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("mask-first: %s: %s", where, msg)
        logging.shutdown()
        sys.exit(1)
    log.info("%s: %s done in %.2f s", where, func.__name__, time.perf_counter() - t0)
    return result


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

    with open_slide(slide_path, mpp_override) as slide:
        slide_mpp = (slide.mpp_x, slide.mpp_y)
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
    provenance = provenance | {"slide_id": slide_id}
    write_mask_overlay(out, mask, mpp, provenance=provenance)
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
    metadata (``mask_first.stats``) records tiles total/retained and the tissue
    area in mm², which the cohort summary reads without opening the mask again.
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
            from mask_first.tiles.coverage import overlap_fractions, retain
            from mask_first.tissue.overlay import check_mask_alignment, read_mask_overlay

            labels, mmx, mmy, _ = read_mask_overlay(mask)
            if user_mask:
                check_mask_alignment(labels.shape, (mmx, mmy), slide, mask_name=Path(mask).name)
            fractions = (overlap_fractions(labels, (mmx, mmy), (0, 0, tx, ty), x, y, mx, my)
                         if n else {"0": np.zeros(0)})
            for label, frac in fractions.items():
                table = table.append_column(f"fraction_{label}", pa.array(frac))
            if f"fraction_{value}" not in table.column_names:  # no such label in the mask: nothing passes
                table = table.append_column(f"fraction_{value}", pa.array(np.zeros(n)))
            keep = retain(fractions, value, threshold)
            stats["tissue_area_mm2"] = float(np.count_nonzero(labels == value)) * mmx * mmy / 1e6
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
        write_table(out_retained, table, metadata={STATS_KEY: json.dumps(stats)})
        tile_extent, tile_mpp = ((tx, ty), (mx, my)) if n else ((1, 1), (1.0, 1.0))
        picture = qc_thumbnail(slide, x[keep], y[keep], tile_extent, tile_mpp, mask=mask_image, size=qc_size)
        if out_coords or out_tile_objects:
            _write_tile_interop(slide, table, keep, out_coords, out_tile_objects, mask_geojson, slide_id)
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
    row_group_tiles: int = 256, threads: int = 1, mpp_override: float | None = None,
    resample: bool = True, mpp: float | None = None, tile_extent: int | None = None,
) -> int:
    """RGB pixels of the retained tiles only, streamed into Parquet row groups.

    With ``resample`` and a target ``mpp`` (the tiling was given in µm/px, not
    as a level), every tile is delivered as ``tile_extent`` pixels at the
    target resolution, area-averaged from the level read when that level's
    region has another size (no pyramid level at ``mpp``); otherwise the
    native pixels of the level are stored.
    """
    from mask_first.io import read_table
    from mask_first.tiles.pixels import write_tile_pixels

    table = read_table(retained)
    kept = table.filter(table.column("retained")).drop_columns(["retained"])
    first = table.slice(0, 1).to_pylist()
    tx, ty, level = (first[0]["tile_extent_x"], first[0]["tile_extent_y"], first[0]["level"]) if first else (1, 1, 0)
    resample_to = (tile_extent, tile_extent) if resample and mpp is not None and tile_extent and first else None
    n = write_tile_pixels(
        out, slide_path, kept, level=level, tile_extent_x=tx, tile_extent_y=ty, resample_to=resample_to,
        encoding=encoding, jpeg_quality=jpeg_quality, row_group_tiles=row_group_tiles, threads=threads,
        mpp_override=mpp_override,
    )
    log.info("%d tiles written%s", n, f", delivered at {resample_to[0]} px" if resample_to else "")
    return n


# ---------------------------------------------------------------------------
# cohort
# ---------------------------------------------------------------------------


def write_slide_table(inputs: Sequence[str], out: str, *, masks: Sequence[str | None] | None = None) -> None:
    """Stack the per-slide rows into the cohort slide table, with each slide's ``mask_path``."""
    import pyarrow as pa

    from mask_first.io import read_table, write_table

    tables = [read_table(p) for p in inputs]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    if masks is not None and tables:
        table = table.append_column("mask_path", pa.array(list(masks), pa.string()))
    write_table(out, table)


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


def write_summary(
    slide_ids: Sequence[str],
    retained: Sequence[str],
    benchmarks: Sequence[Sequence[str]],
    out: str,
) -> "pandas.DataFrame":
    """Per-slide summary: tiles total and retained, tissue area in mm², seconds per step."""
    import json

    import pandas as pd
    import pyarrow.parquet as pq

    from mask_first.io import atomic_path

    rows = []
    for sid, ret, bench in zip(slide_ids, retained, benchmarks):
        stats = json.loads(pq.read_schema(ret).metadata[STATS_KEY])
        total, kept = stats["tiles_total"], stats["tiles_retained"]
        area = stats["tissue_area_mm2"]
        row: dict[str, Any] = {
            "slide_id": sid,
            "tiles_total": total,
            "tiles_retained": kept,
            "retained_fraction": kept / total if total else 0.0,
            "tissue_area_mm2": float("nan") if area is None else area,
        }
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


def write_predictions(
    retained: str, slide_info: str, out_predictions: str, out_tiff: str, out_png: str, **kwargs: Any,
) -> int:
    """Run the configured model on the retained tiles; predictions table, heatmap TIFF and PNG.

    See :func:`mask_first.predict.predict_slide` for the keyword arguments.
    """
    from mask_first.predict import predict_slide

    # our own code stays pandas-free; the user's model may import it (or something that does)
    return predict_slide(retained, slide_info, out_predictions, out_tiff, out_png, user_code=_allow_pandas, **kwargs)


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
