"""QuPath GeoJSON out (mask -> annotations) and in (annotations -> mask)."""

import json
import uuid

import cv2
import numpy as np
import pytest

from mask_first.interop.geojson import (
    geojson_to_mask,
    mask_polygons,
    mask_to_feature_collection,
    read_feature_collection,
    tile_features,
)
from mask_first.slides import open_slide
from mask_first.tiles.coverage import overlap_fractions, retain

#: QuPath's objectType values (PathObjectTypeAdapters.MAP_TYPES)
QUPATH_OBJECT_TYPES = {"tile", "cell", "detection", "annotation", "tmaCore", "root"}


def assert_qupath_feature(feature):
    """What QuPath's PathObjectTypeAdapter / PathClassTypeAdapter need to read a feature."""
    assert feature["type"] == "Feature"
    uuid.UUID(feature["id"])  # QuPath >= 0.4 reads ids as UUIDs
    assert feature["geometry"]["type"] in {"Polygon", "MultiPolygon"}
    props = feature["properties"]
    assert props["objectType"] in QUPATH_OBJECT_TYPES
    cls = props["classification"]
    # an object classification is parsed only with name (or names) AND color
    assert isinstance(cls["name"], str) and cls["name"]
    assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
    # measurements: an object of name -> number (the v0.4+ form)
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in props.get("measurements", {}).items())


def fill_supersampled(geometry: dict, shape, scale, factor=4) -> np.ndarray:
    """Independent rasteriser: OpenCV fillPoly of the rings on a grid ``factor`` x finer, majority per pixel."""
    h, w = shape
    fine = np.zeros((h * factor, w * factor), np.uint8)
    polys = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    sx, sy = scale
    for rings in polys:
        for k, ring in enumerate(rings):
            # level-0 px -> fine-grid px; fillPoly samples integer positions, so shift by half a fine pixel
            pts = np.asarray(ring, np.float64) * [sx * factor, sy * factor] - 0.5
            pts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits
            cv2.fillPoly(fine, [pts], 0 if k else 1, lineType=cv2.LINE_8, shift=4)
    return fine.reshape(h, factor, w, factor).mean(axis=(1, 3)) >= 0.5


def iou(a, b):
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


def test_polygons_are_exact_pixel_edges_with_holes():
    m = np.zeros((12, 14), bool)
    m[2:9, 3:11] = True
    m[4:6, 5:8] = False  # a hole
    m[10:12, 0:2] = True  # a second region
    mp = mask_polygons(m)
    assert len(mp.geoms) == 2
    big = max(mp.geoms, key=lambda g: g.area)
    assert big.area == 7 * 8 - 2 * 3 and len(big.interiors) == 1
    assert big.exterior.bounds == (3.0, 2.0, 11.0, 9.0)
    assert mp.area == m.sum()


def test_real_slide_mask_round_trips_through_qupath_geojson(shared_slides, tmp_path):
    from mask_first.tissue.detection import tissue_mask_with_info

    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as slide:
        result = tissue_mask_with_info(slide, 4.0, method="od")
        slide_mpp = (slide.mpp_x, slide.mpp_y)
    labels = result.provenance()["labels"]
    fc = mask_to_feature_collection(result.mask, 4.0, slide_mpp, labels=labels, slide_id="cmu")
    fc = json.loads(json.dumps(fc))  # what a file holds
    assert fc["type"] == "FeatureCollection"
    present = sorted(v for v in np.unique(result.mask).tolist() if v)
    assert sorted(int(f["properties"]["measurements"]["Label value"]) for f in fc["features"]) == present
    scale = (slide_mpp[0] / 4.0, slide_mpp[1] / 4.0)
    for f in fc["features"]:
        assert_qupath_feature(f)
        v = int(f["properties"]["measurements"]["Label value"])
        assert f["properties"]["classification"]["name"] == labels[str(v)]
        back = fill_supersampled(f["geometry"], result.mask.shape, scale)
        assert iou(back, result.mask == v) >= 0.97, (labels[str(v)], iou(back, result.mask == v))
    tissue = next(f for f in fc["features"] if f["properties"]["name"] == "tissue")
    # level-0 pixels: the tissue lies within the slide
    xs = [p[0] for poly in tissue["geometry"]["coordinates"] for ring in poly for p in ring]
    assert 0 <= min(xs) and max(xs) <= 2220 + 1e-6


def test_ink_is_its_own_class(tmp_path):
    from mask_first.tissue.detection import INK, LABELS

    m = np.zeros((40, 50), np.uint8)
    m[5:30, 5:40] = 255
    m[10:14, 8:35] = INK
    fc = mask_to_feature_collection(m, 8.0, 0.5, labels={str(k): v for k, v in LABELS.items()})
    names = {f["properties"]["classification"]["name"]: f for f in fc["features"]}
    assert set(names) == {"tissue", "ink"}
    ink = names["ink"]["geometry"]
    # 8 µm mask px = 16 level-0 px: the ink stroke's box in level-0 pixels
    assert ink["type"] == "MultiPolygon"
    xs = [p[0] for ring in ink["coordinates"][0] for p in ring]
    ys = [p[1] for ring in ink["coordinates"][0] for p in ring]
    assert (min(xs), max(xs), min(ys), max(ys)) == (8 * 16, 35 * 16, 10 * 16, 14 * 16)
    tissue = names["tissue"]["geometry"]["coordinates"][0]
    assert len(tissue) == 2  # the ink stroke is a hole of the tissue annotation


def test_tile_objects_are_qupath_tiles():
    feats = tile_features(np.array([0, 512]), np.array([256, 256]), 512.0, 512.0,
                          {"fraction_255": np.array([0.5, 1.0])})
    for f in feats:
        assert_qupath_feature(f)
        assert f["properties"]["objectType"] == "tile"
    assert feats[1]["geometry"]["coordinates"][0][2] == [1024.0, 768.0]
    assert feats[1]["properties"]["measurements"] == {"fraction_255": 1.0}


def _write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _rect(x0, y0, x1, y1, cls=None):
    props = {"objectType": "annotation"}
    if cls:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}, "properties": props}


def test_rectangle_gives_exactly_the_tiles_at_least_half_inside(tmp_path):
    """Mask grid = level-0 grid: tile fractions from the rasterised rectangle equal exact interval arithmetic."""
    w0, h0, mpp = 3000, 2000, 0.5
    rng = np.random.default_rng(13)
    for trial in range(20):
        x0, x1 = np.sort(rng.integers(0, w0, 2))
        y0, y1 = np.sort(rng.integers(0, h0, 2))
        if x1 - x0 < 10 or y1 - y0 < 10:
            continue
        path = _write(tmp_path / f"r{trial}.geojson", [_rect(int(x0), int(y0), int(x1), int(y1))])
        mask, info = geojson_to_mask(path, (w0, h0), (mpp, mpp), mpp)
        assert mask.shape == (h0, w0)
        t = 100  # tiles of 100 px at level 0, stride 100
        tx, ty = np.meshgrid(np.arange(0, w0, t), np.arange(0, h0, t))
        tx, ty = tx.ravel(), ty.ravel()
        frac = overlap_fractions(mask, (mpp, mpp), (0, 0, t, t), tx, ty, mpp, mpp)
        kept = retain(frac, 255, 0.5)
        ox = np.clip(np.minimum(tx + t, x1) - np.maximum(tx, x0), 0, None)
        oy = np.clip(np.minimum(ty + t, y1) - np.maximum(ty, y0), 0, None)
        exact = ox * oy / (t * t) >= 0.5
        assert np.array_equal(kept, exact), trial


def test_classes_select_annotations_and_bad_files_fail_clearly(tmp_path):
    path = _write(tmp_path / "two.geojson", [_rect(0, 0, 100, 100, "Tumor"), _rect(200, 0, 300, 100, "Stroma")])
    all_mask, _ = geojson_to_mask(path, (400, 100), (1.0, 1.0), 10.0)
    tumor, info = geojson_to_mask(path, (400, 100), (1.0, 1.0), 10.0, classes=["Tumor"])
    assert all_mask.shape == (10, 40)
    assert np.count_nonzero(all_mask) == 200 and np.count_nonzero(tumor) == 100
    assert tumor[:, :10].all() and not tumor[:, 10:].any()
    assert info["classes_present"] == ["Stroma", "Tumor"]
    with pytest.raises(ValueError, match="two.geojson: no polygon annotation of class"):
        geojson_to_mask(path, (400, 100), (1.0, 1.0), 10.0, classes=["Necrosis"])
    with pytest.raises(ValueError, match="beyond the slide"):
        geojson_to_mask(path, (250, 100), (1.0, 1.0), 10.0)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(ValueError, match="bad.geojson: not a GeoJSON file"):
        read_feature_collection(tmp_path / "bad.geojson")
    # QuPath's other export forms: a bare list of features, one feature, string classification
    one = _rect(0, 0, 50, 50)
    one["properties"]["classification"] = "Tumor"
    (tmp_path / "list.geojson").write_text(json.dumps([one]))
    m, _ = geojson_to_mask(tmp_path / "list.geojson", (100, 100), (1.0, 1.0), 10.0, classes=["Tumor"])
    assert np.count_nonzero(m) == 25
