"""Mask-first vs decode-everything on the large demo slide, whole workflow and per step.

    python benchmarks/bench_workflow.py [--size 20480]

1. Whole workflow (`snakemake --cores 2`, one slide, pixels written): the
   default mask filter vs `filter: method: pixel_std`, which decodes every tile
   and keeps those with grey-level std >= 8 (the baseline).
2. The same paths as library calls in this process, without Snakemake's
   per-job start-up: mask + overlap + reading the retained tiles, vs reading
   the retained tiles alone, vs reading every tile + std filter.
All timings of one table come from the same run, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of  # noqa: E402

from mask_first.tissue.detection import tissue_mask  # noqa: E402
from mask_first.slides import open_slide, slide_row  # noqa: E402
from mask_first.synthetic import demo_cohort_specs, write_synthetic_slide  # noqa: E402
from mask_first.tiles import grid_tiles, iter_slide_tiles, overlap_fractions, tile_pixel_std  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_workflow(wd: Path, sheet: Path, method: str) -> float:
    cfg = wd / "bench.yaml"
    cfg.write_text(yaml.safe_dump({"samples": str(sheet),
                                   "filter": {"method": method, "tissue_threshold": 0.5, "pixel_std_threshold": 8.0}}))
    t0 = time.perf_counter()
    subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "--configfile", str(cfg),
                    "--cores", "2", "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20480)
    args = ap.parse_args()
    spec = next(s for s in demo_cohort_specs(large_size=args.size) if s["slide_id"] == "demo-large-sparse")
    spec = {k: v for k, v in spec.items() if k != "slide_id"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = write_synthetic_slide(tmp / "large.tiff", spec.pop("width"), spec.pop("height"), **spec)
        sheet = tmp / "slides.tsv"
        pd.DataFrame([{"slide_id": "large", "path": str(path)}]).to_csv(sheet, sep="\t", index=False)

        # -- library level ------------------------------------------------------
        row = slide_row(path, mpp=0.5, tile_extent=256, stride=256)
        tiles = grid_tiles((row["extent_x"], row["extent_y"]), 256, 256)
        level = row["level"]
        with open_slide(path) as slide:
            mask = tissue_mask(slide, 8.0)
            frac = overlap_fractions(mask, 8.0, (0, 0, 256, 256), tiles[:, 0], tiles[:, 1], row["mpp_x"], row["mpp_y"])
        kept = tiles[frac["255"] >= 0.5]

        def mask_first_path():
            with open_slide(path) as s:
                m = tissue_mask(s, 8.0)
                f = overlap_fractions(m, 8.0, (0, 0, 256, 256), tiles[:, 0], tiles[:, 1], row["mpp_x"], row["mpp_y"])
                k = tiles[f["255"] >= 0.5]
                for _ in iter_slide_tiles(s, k[:, 0], k[:, 1], 256, 256, level):
                    pass

        def retained_only():
            with open_slide(path) as s:
                for _ in iter_slide_tiles(s, kept[:, 0], kept[:, 1], 256, 256, level):
                    pass

        def read_everything():
            with open_slide(path) as s:
                for _, batch in iter_slide_tiles(s, tiles[:, 0], tiles[:, 1], 256, 256, level):
                    tile_pixel_std(batch)

        t_mf, t_ret, t_all = best_of(mask_first_path), best_of(retained_only), best_of(read_everything)
        print(f"slide {args.size}x{args.size} px, {len(tiles)} tiles, {len(kept)} kept ({len(kept) / len(tiles):.1%})")
        print("library calls, one thread:")
        print(f"  read retained tiles alone           {t_ret:7.3f} s  1.00x")
        print(f"  mask + overlap + read retained      {t_mf:7.3f} s  {t_mf / t_ret:.2f}x of retained-only")
        print(f"  read every tile + pixel-std filter  {t_all:7.3f} s  {t_all / t_mf:.2f}x slower than mask-first")

        # -- whole workflow -------------------------------------------------------
        times = {}
        for method in ("mask", "pixel_std"):
            wd = tmp / method
            wd.mkdir()
            times[method] = run_workflow(wd, sheet, method)
            ret = pd.read_parquet(wd / "results/retained/large.parquet")
            print(f"workflow filter={method:9s}: {times[method]:6.1f} s wall, kept {ret.retained.sum()} of {len(ret)} "
                  f"tiles ({ret.retained.mean():.1%})")
        print(f"whole workflow: pixel_std baseline / mask-first = {times['pixel_std'] / times['mask']:.2f}x")


if __name__ == "__main__":
    main()
