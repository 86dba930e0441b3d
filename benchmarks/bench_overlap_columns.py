"""tile_overlay_overlap over a multi-slide tile table (the seed's column form) vs per-slide scalar calls.

    python benchmarks/bench_overlap_columns.py [--tiles 1000000] [--slides 4]

A million-row tile table spanning several slides, each with its own mask
overlay TIFF (8 µm/px, 3125 x 3125 px: a 100,000 px slide at 0.25 µm/px) and
its own level mpp. The column call passes every per-tile argument as a
column of the table (pandas Series, as the seed's ``col(...)``): overlay path,
tile_x, tile_y, mpp_x, mpp_y. The baseline, timed in the same run, is one
scalar call per slide on numpy arrays (what a per-slide loop does). Rectangular
ROI (the whole 256 px tile). Reported for a table sorted by slide (the usual
layout) and for a shuffled one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of  # noqa: E402

from mask_first.tiles import grid_tiles, tile_overlay_overlap  # noqa: E402
from mask_first.tissue.overlay import write_mask_overlay  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=1_000_000)
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3125, 0:3125]
    per = args.tiles // args.slides
    with tempfile.TemporaryDirectory() as tmp:
        frames = []
        for s in range(args.slides):
            mask = np.zeros((3125, 3125), np.uint8)
            for _ in range(8):
                cx, cy, r = rng.uniform(0, 3125, 2).tolist() + [rng.uniform(100, 500)]
                mask[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 255
            overlay = write_mask_overlay(Path(tmp) / f"mask{s}.tiff", mask, 8.0)
            mpp = 0.25 * (1 + 0.01 * s)  # a different scan resolution per slide
            tiles = grid_tiles((99_000, 99_000), 256, 97)
            tiles = tiles[rng.permutation(len(tiles))[:per]]
            frames.append(pd.DataFrame({
                "mask_path": str(overlay), "tile_x": tiles[:, 0], "tile_y": tiles[:, 1],
                "mpp_x": mpp, "mpp_y": mpp,
            }))
        table = pd.concat(frames, ignore_index=True)
        n = len(table)
        roi = (0, 0, 256, 256)

        def column_call(t: pd.DataFrame):
            return tile_overlay_overlap(roi, t["mask_path"], t["tile_x"], t["tile_y"], t["mpp_x"], t["mpp_y"])

        def per_slide_calls(t: pd.DataFrame):
            out = []
            for path, g in t.groupby("mask_path", sort=False):
                out.append(tile_overlay_overlap(roi, path, g["tile_x"].to_numpy(), g["tile_y"].to_numpy(),
                                                float(g["mpp_x"].iloc[0]), float(g["mpp_y"].iloc[0])))
            return out

        shuffled = table.iloc[rng.permutation(n)].reset_index(drop=True)
        # same answers before timing anything
        a = column_call(shuffled)["255"]
        ref = np.empty(n)
        for path, g in shuffled.groupby("mask_path", sort=False):
            ref[g.index.to_numpy()] = per_slide_calls(g)[0]["255"]
        assert np.array_equal(a, ref), "column call differs from per-slide calls"

        def cpu_best(fn) -> float:
            # CPU seconds of this process: less sensitive than wall time to other jobs on a shared machine
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.process_time()
                fn()
                best = min(best, time.process_time() - t0)
            return best

        cases = [("per-slide scalar calls (baseline)", lambda: per_slide_calls(table)),
                 ("column call, table sorted by slide", lambda: column_call(table)),
                 ("column call, shuffled table", lambda: column_call(shuffled))]
        wall = [best_of(fn, args.repeats) for _, fn in cases]
        cpu = [cpu_best(fn) for _, fn in cases]
        print(f"tiles {n:,} over {args.slides} slides, 256 px tiles at ~0.25 µm/px, masks 3125^2 px at 8 µm/px")
        print(f"{'':38s} {'tiles/s (wall)':>15s} {'tiles/CPU-s':>13s} {'vs baseline (wall)':>19s}")
        for (name, _), w, c in zip(cases, wall, cpu):
            print(f"{name:38s} {n / w:15,.0f} {n / c:13,.0f} {wall[0] / w:18.2f}x")


if __name__ == "__main__":
    main()
