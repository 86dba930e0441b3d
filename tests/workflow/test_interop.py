"""Real workflow runs: QuPath GeoJSON in and out, CLAM/TRIDENT coordinates, tile objects."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from conftest import SMALL_CONFIG, mask_of, planned_jobs, run_workflow, write_sheet
from mask_first.slides import open_slide
from mask_first.tissue.overlay import read_mask_overlay

pytestmark = pytest.mark.slow

SLIDE = "CMU-1-Small-Region_generic-pyramid_jpeg.tif"  # 5 levels, 0.499 µm/px
TILE = 100  # px of level 1


def _rect_geojson(path, x0, y0, x1, y1, cls="Tissue"):
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    feats = [{"type": "Feature", "id": "6f1c3bde-0d4b-4a53-9a59-3f1f5a7e1a11",
              "geometry": {"type": "Polygon", "coordinates": [ring]},
              "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [200, 0, 0]}}},
             # a second class the config leaves out
             {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
                 [[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]]]},
              "properties": {"objectType": "annotation", "classification": {"name": "Ignore", "color": [0, 0, 0]}}}]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def _exact_half_inside(x, y, rect, slide):
    """Tiles (level 1) at least half inside a level-0 rectangle, by interval arithmetic in µm."""
    mx1, my1 = slide.level_mpp(1)
    x0, y0, x1, y1 = rect
    ox = np.clip(np.minimum((x + TILE) * mx1, x1 * slide.mpp_x) - np.maximum(x * mx1, x0 * slide.mpp_x), 0, None)
    oy = np.clip(np.minimum((y + TILE) * my1, y1 * slide.mpp_y) - np.maximum(y * my1, y0 * slide.mpp_y), 0, None)
    return ox * oy / (TILE * mx1 * TILE * my1) >= 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_slides):
    wd = tmp_path_factory.mktemp("interop")
    slide_path = shared_slides / SLIDE
    with open_slide(slide_path) as s:
        mpp0 = s.mpp_x
    rect = (317, 455, 1581, 2203)  # level-0 px, not on the tile grid
    _rect_geojson(wd / "drawn.geojson", *rect)
    sheet = write_sheet(wd / "slides.tsv", [
        {"slide_id": "drawn", "path": str(slide_path), "mask": str(wd / "drawn.geojson")},
        {"slide_id": "detected", "path": str(slide_path)},
    ])
    config = SMALL_CONFIG | {
        "samples": str(sheet),
        # the mask grid is the level-0 grid, so integer level-0 corners are mask-pixel edges
        "mask": {"mpp": mpp0, "method": "od", "params": {}, "geojson_classes": ["Tissue"]},
        "tiling": {"mpp": None, "level": 1, "tile_extent": TILE, "stride": TILE, "last": "keep"},
        "heatmap": {"predictions": "", "columns": ["fraction_255"], "aggregation": "mean", "storage": "memmap"},
        "qc": {"size": 256, "tile_objects": True},
    }
    run_workflow(wd, config)
    return wd, config, rect, slide_path


def _retained(wd, sid):
    t = pq.read_table(wd / f"results/retained/{sid}.parquet").to_pydict()
    return {k: np.asarray(v) for k, v in t.items()}


def test_geojson_rectangle_keeps_exactly_the_tiles_half_inside(run):
    wd, _, rect, slide_path = run
    t = _retained(wd, "drawn")
    with open_slide(slide_path) as slide:
        exact = _exact_half_inside(t["x"], t["y"], rect, slide)
    assert exact.sum() > 20
    assert np.array_equal(t["retained"], exact)
    # downstream as with any mask: the cohort table names the rasterised overlay
    mask, mmx, _, prov = read_mask_overlay(mask_of(wd, "drawn"))
    assert prov["generator"] == "mask_first.interop.geojson" and prov["classes_used"] == ["Tissue"]
    assert np.count_nonzero(mask) == (rect[2] - rect[0]) * (rect[3] - rect[1])  # "Ignore" left out


def test_coords_h5_are_the_retained_tiles_level0_corners(run):
    wd, _, _, slide_path = run
    with open_slide(slide_path) as slide:
        w0, h0 = slide.level_dimensions[0]
        w1, h1 = slide.level_dimensions[1]
    for sid in ("drawn", "detected"):
        t = _retained(wd, sid)
        keep = t["retained"]
        with h5py.File(wd / f"results/coords/{sid}.h5", "r") as f:
            coords = f["coords"][:]
            attrs = dict(f["coords"].attrs)
        assert coords.dtype == np.int64 and coords.shape == (keep.sum(), 2)
        assert np.array_equal(coords[:, 0], np.rint(t["x"][keep] * (w0 / w1)))
        assert np.array_equal(coords[:, 1], np.rint(t["y"][keep] * (h0 / h1)))
        assert (attrs["patch_size"], attrs["patch_level"], attrs["name"]) == (TILE, 1, sid)
        assert attrs["level0_magnification"] / attrs["target_magnification"] == pytest.approx(2.0, rel=1e-3)


def test_mask_geojson_out_rasterises_to_the_mask(run):
    from mask_first.interop.geojson import rasterize_features

    wd, _, _, slide_path = run
    with open_slide(slide_path) as slide:
        smx, smy = slide.mpp_x, slide.mpp_y
    for sid in ("drawn", "detected"):
        tiff = mask_of(wd, sid)
        mask, mmx, mmy, prov = read_mask_overlay(tiff)
        fc = json.loads(tiff.with_suffix(".geojson").read_text())
        assert {f["properties"]["classification"]["name"] for f in fc["features"]} == {
            prov["labels"][str(v)] for v in np.unique(mask).tolist() if v}
        for f in fc["features"]:
            v = int(f["properties"]["measurements"]["Label value"])
            geom = shapely.geometry.shape(f["geometry"])
            back = rasterize_features(list(geom.geoms), mask.shape, (smx / mmx, smy / mmy))
            ref = mask == v
            assert np.count_nonzero(back & ref) / np.count_nonzero(back | ref) >= 0.97


def test_tile_objects_carry_the_fractions(run):
    wd, _, _, _ = run
    t = _retained(wd, "drawn")
    fc = json.loads((wd / "results/qc/drawn.geojson").read_text())
    tiles = [f for f in fc["features"] if f["properties"]["objectType"] == "tile"]
    annots = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(tiles) == t["retained"].sum() and len(annots) == 1
    got = sorted(f["properties"]["measurements"]["fraction_255"] for f in tiles)
    assert np.allclose(got, np.sort(t["fraction_255"][t["retained"]]))


def test_editing_the_geojson_reruns_its_slide_only(run):
    wd, config, _, slide_path = run
    rect = (1001, 203, 2100, 1307)
    _rect_geojson(wd / "drawn.geojson", *rect)
    jobs = planned_jobs(wd, config)
    assert jobs.get("tissue_mask") == 1 and jobs.get("filter_tiles") == 1 and "tiles" not in jobs
    run_workflow(wd, config)
    t = _retained(wd, "drawn")
    with open_slide(slide_path) as slide:
        assert np.array_equal(t["retained"], _exact_half_inside(t["x"], t["y"], rect, slide))
    assert planned_jobs(wd, config) == {}


def test_geojson_of_another_image_fails_that_slide_only(tmp_path, shared_slides):
    slide_path = shared_slides / SLIDE
    _rect_geojson(tmp_path / "far.geojson", 100, 100, 90000, 400)
    sheet = write_sheet(tmp_path / "slides.tsv", [
        {"slide_id": "far", "path": str(slide_path), "mask": str(tmp_path / "far.geojson")}])
    config = SMALL_CONFIG | {"samples": str(sheet), "qc": {"size": 128, "tile_objects": False}}
    proc = run_workflow(tmp_path, config, "--keep-going", check=False)
    assert proc.returncode != 0
    assert "mask-first: slide far: far.geojson: annotations span" in proc.stderr + proc.stdout
