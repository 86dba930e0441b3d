"""Polygonising a label mask for QuPath: exact pixel-edge polygons (run rectangles + shapely
union, what mask_first.interop.geojson uses) against OpenCV findContours through pixel centres.

Prints seconds and the IoU of each method's polygons rasterised back on the mask grid
(pixel-centre rule), with ratios against findContours measured in the same run.

    PYTHONPATH=. python benchmarks/bench_geojson.py
"""

import time

import cv2
import numpy as np
import shapely

from mask_first.interop.geojson import mask_polygons, rasterize_features
from mask_first.synthetic import synthetic_tissue_mask


def contours_polygons(binary):
    contours, hier = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    if hier is None:
        return polys
    hier = hier[0]
    for i, c in enumerate(contours):
        if hier[i][3] != -1 or len(c) < 3:
            continue
        holes, j = [], hier[i][2]
        while j != -1:
            if len(contours[j]) >= 3:
                holes.append(contours[j][:, 0, :] + 0.5)
            j = hier[j][0]
        p = shapely.make_valid(shapely.Polygon(c[:, 0, :] + 0.5, holes))
        polys += [g for g in shapely.get_parts(p) if isinstance(g, shapely.Polygon)]
    return polys


def main():
    for side in (640, 1600, 3200):
        m = synthetic_tissue_mask(side, side, downsample=1.0, seed=3) > 0
        rows = {}
        for name, fn in (("findContours", contours_polygons), ("pixel-edge union", lambda b: list(mask_polygons(b).geoms))):
            t = time.perf_counter()
            polys = fn(m)
            dt = time.perf_counter() - t
            back = rasterize_features(polys, m.shape)
            iou = np.count_nonzero(back & m) / np.count_nonzero(back | m)
            rows[name] = (dt, iou, sum(shapely.get_num_coordinates(p) for p in polys))
        base = rows["findContours"][0]
        for name, (dt, iou, nv) in rows.items():
            print(f"{side}x{side} mask ({m.mean():.0%} tissue) {name:17s} {dt:7.3f} s  x{dt / base:5.1f}  IoU {iou:.4f}  vertices {nv}")


if __name__ == "__main__":
    main()
