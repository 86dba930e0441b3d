"""QuPath GeoJSON both ways: label masks out as annotations, drawn annotations in as masks.

Format (what QuPath's ``PathObjectTypeAdapters`` / ``GsonTools`` read and write)
--------------------------------------------------------------------------------
* A ``FeatureCollection``; coordinates are **level-0 pixels** of the slide,
  x right, y down, origin at the top-left corner of the image.
* Each feature: ``{"type": "Feature", "id": <UUID>, "geometry": Polygon or
  MultiPolygon, "properties": {"objectType": "annotation" | "tile",
  "classification": {"name": ..., "color": [r, g, b]}, "isLocked": true,
  "measurements": {name: number}}}``. QuPath parses a classification object
  only when it has ``name`` (or ``names``) **and** ``color``; it also accepts a
  plain string.
* Written masks: one ``annotation`` per mask label other than background
  (tissue, ink, debris, ... named from the overlay's label table), a
  MultiPolygon whose polygons are the label's connected regions with their
  holes as interior rings. Polygons follow mask-pixel edges exactly, so the
  polygons rasterised back on the mask grid (pixel-centre rule) give the mask
  again.

Rasterising (:func:`rasterize_features`) marks a mask pixel when its centre
lies inside a polygon (the rule of GDAL/rasterio and of QuPath's own mask
export); a polygon edge on a mask-pixel edge is therefore reproduced exactly,
any other edge is placed to within half a mask pixel.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mask_first.columns import xy_pair

__all__ = [
    "LABEL_COLORS",
    "mask_polygons",
    "mask_to_feature_collection",
    "tile_features",
    "write_feature_collection",
    "read_feature_collection",
    "rasterize_features",
    "geojson_to_mask",
    "is_geojson_path",
]

#: display colour per label name (RGB); unknown names get a grey
LABEL_COLORS = {
    "tissue": (0, 160, 0),
    "ink": (0, 0, 220),
    "debris": (200, 140, 0),
    "tile": (255, 200, 0),
}
_DEFAULT_COLOR = (128, 128, 128)

#: file suffixes taken as GeoJSON in the sample sheet's ``mask`` column
GEOJSON_SUFFIXES = (".geojson", ".json")


def is_geojson_path(path: str | os.PathLike) -> bool:
    """True for ``*.geojson`` / ``*.json`` (a GeoJSON mask), False for anything else (a TIFF mask)."""
    return str(path).lower().endswith(GEOJSON_SUFFIXES)


def _feature_id(*parts: Any) -> str:
    # deterministic UUIDs: the same mask gives a byte-identical file
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "mask-first:" + ":".join(str(p) for p in parts)))


def mask_polygons(binary: np.ndarray):
    """Exact pixel-edge polygons of a binary image, in mask-pixel coordinates.

    Parameters
    ----------
    binary : ndarray of bool, shape (H, W), (y, x) order

    Returns
    -------
    shapely MultiPolygon (possibly empty)
        Pixel ``(i, j)`` is the square ``[j, j+1) x [i, i+1)``. Each polygon is
        one 4-connected region, holes as interior rings; the area equals the
        number of set pixels.

    Notes
    -----
    Each row's runs of set pixels become rectangles, merged with
    ``shapely.union_all``, then collinear vertices are dropped. Unlike
    contour tracing through pixel centres (OpenCV ``findContours``), the
    outlines follow pixel edges, so the area is exact and the polygons
    rasterise back to the mask (see benchmarks/bench_geojson.py).
    """
    import shapely

    b = np.asarray(binary, bool)
    h, w = b.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = b
    d = np.diff(padded, axis=1)
    rs, cs = np.nonzero(d == 1)
    re_, ce = np.nonzero(d == -1)
    if len(rs) == 0:
        return shapely.MultiPolygon()
    # np.nonzero is row-major, so starts and ends pair up in order
    boxes = shapely.box(cs, rs, ce, rs + 1)
    merged = shapely.union_all(boxes)
    merged = shapely.simplify(merged, 0)  # drop the collinear vertices left by the rectangles
    polys = [g for g in shapely.get_parts(merged) if isinstance(g, shapely.Polygon) and not g.is_empty]
    return shapely.MultiPolygon(polys)


def _scale_to_level0(geom, sx: float, sy: float):
    import shapely

    return shapely.transform(geom, lambda c: c * np.array([sx, sy]))


def mask_to_feature_collection(
    mask: np.ndarray,
    mask_mpp: float | tuple[float, float],
    slide_mpp: float | tuple[float, float],
    *,
    labels: Mapping[str | int, str] | None = None,
    slide_id: str = "",
    digits: int = 2,
) -> dict:
    """QuPath FeatureCollection of a label mask: one annotation per label present.

    Parameters
    ----------
    mask : ndarray of uint8, shape (H, W)
        Label image, (y, x) order, at ``mask_mpp``; label 0 is background
        and gets no feature.
    mask_mpp, slide_mpp : float or (float, float)
        µm/px of the mask and of the slide's level 0, (x, y) if pairs.
    labels : mapping of label value (int or str) to name, optional
        The overlay's label table (its provenance ``labels``); a value
        missing from it is named ``label_<value>`` (255 defaults to
        ``tissue``).
    slide_id : str
        Used for the deterministic feature ids.
    digits : int
        Decimals kept in the level-0 coordinates.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``; each annotation
        carries ``measurements`` ``{"Area px^2": level-0 px², "Label value": v}``.
    """
    import shapely

    mmx, mmy = xy_pair(mask_mpp)
    smx, smy = xy_pair(slide_mpp)
    table = {str(k): v for k, v in (labels or {}).items()}
    features = []
    for value in np.unique(mask).tolist():
        if value == 0:
            continue
        name = table.get(str(value)) or ("tissue" if value == 255 else f"label_{value}")
        geom = _scale_to_level0(mask_polygons(mask == value), mmx / smx, mmy / smy)
        geom = shapely.set_precision(geom, 10.0 ** -digits) if digits is not None else geom
        features.append({
            "type": "Feature",
            "id": _feature_id(slide_id, "annotation", value),
            "geometry": shapely.geometry.mapping(geom),
            "properties": {
                "objectType": "annotation",
                "name": name,
                "classification": {"name": name, "color": list(LABEL_COLORS.get(name, _DEFAULT_COLOR))},
                "isLocked": True,
                "measurements": {"Area px^2": float(geom.area), "Label value": float(value)},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def tile_features(
    x0: np.ndarray,
    y0: np.ndarray,
    width0: float,
    height0: float,
    measurements: Mapping[str, np.ndarray],
    *,
    slide_id: str = "",
) -> list[dict]:
    """QuPath ``tile`` objects: one rectangle per tile with per-tile measurements.

    Parameters
    ----------
    x0, y0 : array, shape (N,)
        Top-left corners in level-0 pixels.
    width0, height0 : float
        Tile size in level-0 pixels.
    measurements : mapping of name to array, shape (N,)
        E.g. ``{"fraction_255": ...}``; written as each tile's ``measurements``.
    """
    feats = []
    names = list(measurements)
    cols = [np.asarray(measurements[k], np.float64) for k in names]
    for i, (x, y) in enumerate(zip(np.asarray(x0, np.float64).tolist(), np.asarray(y0, np.float64).tolist())):
        ring = [[x, y], [x + width0, y], [x + width0, y + height0], [x, y + height0], [x, y]]
        feats.append({
            "type": "Feature",
            "id": _feature_id(slide_id, "tile", x, y),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": "tile", "color": list(LABEL_COLORS["tile"])},
                "measurements": {k: float(c[i]) for k, c in zip(names, cols)},
            },
        })
    return feats


def write_feature_collection(path: str | os.PathLike, collection: dict) -> Path:
    """Write a FeatureCollection as compact JSON, atomically."""
    from mask_first.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(collection, fh, separators=(",", ":"))
    return path


def _classification_name(props: Mapping[str, Any]) -> str | None:
    c = props.get("classification")
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):
        if c.get("name") is not None:
            return str(c["name"])
        if c.get("names"):
            return ": ".join(str(n) for n in c["names"])  # QuPath's derived-class string
    return None


def read_feature_collection(path: str | os.PathLike) -> list[dict]:
    """The features of a GeoJSON file: a FeatureCollection, a list of features or one feature.

    QuPath writes all three (``exportObjectsToGeoJson`` with or without
    ``FEATURE_COLLECTION``). Raises ``ValueError`` naming the file when it is
    not GeoJSON.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: GeoJSON mask file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: not a GeoJSON file ({type(exc).__name__}: {exc})") from None
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        feats = data.get("features") or []
    elif isinstance(data, Mapping) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, list):
        feats = data
    else:
        raise ValueError(f"{path.name}: not a GeoJSON FeatureCollection, Feature or list of features")
    return [f for f in feats if isinstance(f, Mapping) and f.get("geometry")]


def _polygons_of(feature: Mapping[str, Any], name: str):
    import shapely

    try:
        geom = shapely.geometry.shape(feature["geometry"])
    except Exception as exc:  # malformed coordinates
        raise ValueError(f"{name}: unreadable geometry ({type(exc).__name__}: {exc})") from None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts, out = [geom], []
    while parts:  # flatten multi-part geometries and collections down to polygons
        g = parts.pop()
        if isinstance(g, shapely.Polygon):
            if g.area > 0:
                out.append(g)
        elif isinstance(g, (shapely.MultiPolygon, shapely.GeometryCollection)):
            parts.extend(g.geoms)
    return out


def rasterize_features(
    polygons: Sequence,
    shape: tuple[int, int],
    scale: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Mask pixels whose centres lie inside any of ``polygons``.

    Parameters
    ----------
    polygons : sequence of shapely Polygon
        In level-0 pixels.
    shape : (H, W)
        Mask size in pixels.
    scale : (float, float)
        Mask pixels per level-0 pixel, (x, y).

    Returns
    -------
    ndarray of bool, shape (H, W)
        Pixel ``(i, j)`` is set when ``((j + 0.5) / sx, (i + 0.5) / sy)`` is
        inside a polygon (``shapely.contains_xy``; a centre exactly on an edge
        counts as outside). Only each polygon's bounding box is tested.
    """
    import shapely

    h, w = shape
    sx, sy = scale
    out = np.zeros((h, w), bool)
    for poly in polygons:
        minx, miny, maxx, maxy = poly.bounds
        j0, j1 = max(0, int(np.floor(minx * sx - 0.5))), min(w, int(np.ceil(maxx * sx + 0.5)))
        i0, i1 = max(0, int(np.floor(miny * sy - 0.5))), min(h, int(np.ceil(maxy * sy + 0.5)))
        if j0 >= j1 or i0 >= i1:
            continue
        shapely.prepare(poly)
        xs = (np.arange(j0, j1) + 0.5) / sx
        ys = (np.arange(i0, i1) + 0.5) / sy
        inside = shapely.contains_xy(poly, xs[None, :], ys[:, None])
        out[i0:i1, j0:j1] |= inside
    return out


def geojson_to_mask(
    path: str | os.PathLike,
    slide_dimensions: tuple[int, int],
    slide_mpp: tuple[float, float],
    mask_mpp: float,
    *,
    classes: Iterable[str] | None = None,
    value: int = 255,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Rasterise a (QuPath) GeoJSON onto a slide's mask grid.

    Parameters
    ----------
    path : path-like
        GeoJSON in level-0 pixel coordinates of the slide.
    slide_dimensions : (width, height)
        Level-0 size in pixels.
    slide_mpp : (float, float)
        Level-0 µm/px, (x, y).
    mask_mpp : float
        Mask grid in µm/px; the mask is ``ceil(extent / mask_mpp)`` pixels per axis,
        as for generated masks.
    classes : iterable of str, optional
        Classification names that count as tissue; None or empty: every
        feature, classified or not. ``"Unclassified"`` selects features without one.
    value : int
        Label written for tissue.

    Returns
    -------
    mask : ndarray of uint8, shape (H, W)
    info : dict
        Features used and skipped, the classes seen, the polygons' level-0 bounds.

    Raises
    ------
    ValueError
        One line naming the file: not GeoJSON, no polygon of the wanted
        classes, or annotations reaching more than one mask pixel past the slide
        (a GeoJSON of another image, or not in level-0 pixels).
    """
    import shapely

    path = Path(path)
    name = path.name
    w0, h0 = slide_dimensions
    smx, smy = slide_mpp
    mh = max(1, int(np.ceil(h0 * smy / mask_mpp - 1e-6)))
    mw = max(1, int(np.ceil(w0 * smx / mask_mpp - 1e-6)))
    wanted = {str(c) for c in (classes or [])}
    polys, seen, skipped = [], set(), 0
    for k, feat in enumerate(read_feature_collection(path)):
        props = feat.get("properties") or {}
        cls = _classification_name(props) or "Unclassified"
        seen.add(cls)
        if wanted and cls not in wanted:
            skipped += 1
            continue
        polys.extend(_polygons_of(feat, f"{name} feature {k}"))
    if not polys:
        which = f" of class {sorted(wanted)}" if wanted else ""
        raise ValueError(f"{name}: no polygon annotation{which} (classes present: {sorted(seen) or 'none'})")
    minx, miny, maxx, maxy = shapely.MultiPolygon(polys).bounds if len(polys) > 1 else polys[0].bounds
    tol_x, tol_y = mask_mpp / smx, mask_mpp / smy  # one mask pixel, in level-0 pixels
    if minx < -tol_x or miny < -tol_y or maxx > w0 + tol_x or maxy > h0 + tol_y:
        raise ValueError(
            f"{name}: annotations span x {minx:.0f}..{maxx:.0f}, y {miny:.0f}..{maxy:.0f} level-0 px, "
            f"beyond the slide's {w0} x {h0} px (GeoJSON of another image, or not in level-0 pixels?)"
        )
    inside = rasterize_features(polys, (mh, mw), (smx / mask_mpp, smy / mask_mpp))
    mask = np.where(inside, np.uint8(value), np.uint8(0))
    info = {"features_used": len(polys), "features_skipped": skipped, "classes_present": sorted(seen),
            "classes_used": sorted(wanted) if wanted else "all", "bounds_level0": [minx, miny, maxx, maxy]}
    return mask, info
