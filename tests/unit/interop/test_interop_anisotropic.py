"""GeoJSON and CLAM/TRIDENT coordinates on anisotropic grids (mpp_x != mpp_y), hand-worked.

Every x/y ratio below differs, so a y computed with an x factor moves a
vertex, a pixel or a magnification by a known amount.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import tifffile

from mask_first.interop.geojson import geojson_to_mask, mask_to_feature_collection, write_feature_collection
from mask_first.slides import open_slide


def test_mask_polygons_scale_each_axis_to_level0_and_measure_area():
    mask = np.zeros((8, 6), np.uint8)
    mask[2:5, 1:4] = 255  # rows 2-4, columns 1-3
    # mask 8 x 4 µm/px over a 0.5 x 0.5 µm/px slide: 16 level-0 px per mask px in x, 8 in y
    fc = mask_to_feature_collection(mask, (8.0, 4.0), (0.5, 0.5), slide_id="s")
    (feature,) = fc["features"]
    geom = shapely.geometry.shape(feature["geometry"])
    expected = shapely.box(1 * 16, 2 * 8, 4 * 16, 5 * 8)
    assert geom.equals(expected), geom.wkt
    assert feature["properties"]["measurements"]["Area px^2"] == pytest.approx(48 * 24)
    # and the slide's own anisotropy: 0.5 x 0.25 µm/px doubles the y scale
    fc = mask_to_feature_collection(mask, (8.0, 4.0), (0.5, 0.25))
    assert shapely.geometry.shape(fc["features"][0]["geometry"]).equals(shapely.box(16, 32, 64, 80))


def test_geojson_rasterises_onto_an_anisotropic_mask_grid(tmp_path):
    # slide 1000 x 600 px at 0.5 x 0.25 µm/px = 500 x 150 µm; an 8 µm mask is ceil(62.5) x ceil(18.75) = 63 x 19
    box = shapely.box(160, 64, 480, 320)  # level-0 px
    path = write_feature_collection(tmp_path / "a.geojson", {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": shapely.geometry.mapping(box), "properties": {"classification": {"name": "Tumor"}}},
    ]})
    mask, info = geojson_to_mask(path, (1000, 600), (0.5, 0.25), 8.0)
    assert mask.shape == (19, 63) and info["features_used"] == 1
    # mask pixel (i, j) has its centre at level-0 ((j + 0.5) * 16, (i + 0.5) * 32):
    # inside [160, 480] x [64, 320] for j = 10..29, i = 2..9
    expected = np.zeros((19, 63), np.uint8)
    expected[2:10, 10:30] = 255
    np.testing.assert_array_equal(mask, expected)


def test_coords_h5_magnification_uses_both_axes(tmp_path):
    import h5py

    from mask_first.interop.h5 import write_coords_h5

    img = np.zeros((64, 96, 3), np.uint8)
    path = tmp_path / "a.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, tile=(32, 32), photometric="rgb", metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.125})
    with open_slide(path) as slide:
        out = write_coords_h5(tmp_path / "a.h5", np.array([0, 32]), np.array([16, 48]), level=0,
                              tile_extent=(32, 16), stride=(32, 16), slide=slide, name="a")
    with h5py.File(out) as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    np.testing.assert_array_equal(coords, [[0, 16], [32, 48]])
    # 10 µm / mpp with the pixel's geometric-mean side sqrt(0.5 * 0.125) = 0.25 µm: 40x
    assert attrs["level0_magnification"] == pytest.approx(40.0)
    assert attrs["target_magnification"] == pytest.approx(40.0)
    np.testing.assert_allclose(attrs["level0_mpp"], [0.5, 0.125])
