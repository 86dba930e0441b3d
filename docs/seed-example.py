"""The seed document's mask-first tile filtering pipeline, ported line by line to mask_first and pandas.

The seed (ratiopath on Ray) runs: tissue mask per slide -> slide table (read_slides + row_hash) ->
tile grid (flat_map over grid_tiles) -> tile_overlay_overlap with every per-tile argument a column ->
keep tiles whose "255" overlap is at least a threshold -> read_slide_tiles on the kept tiles, again
with column arguments. Here a pandas DataFrame stands in for the Ray Dataset; each mask_first call
takes the same arguments as the seed's, the per-tile ones as pandas Series:

    Ray (seed)                                  pandas (this file)
    slides.map(row_hash)                        slides.apply(row_hash, axis=1)
    slides.flat_map(expand_tiles)               pd.DataFrame([t for _, r in slides.iterrows() for t in expand_tiles(r)])
    tiles.with_column(name, f(col("x"), ...))   tiles[name] = f(tiles["x"], ...)
    tiles.map(frac).filter(pred)                tiles.apply(frac, axis=1) then boolean indexing

Run it on slides of your own:

    python docs/seed-example.py --slides a.svs b.tif --mask-dir masks [--mpp-override b.tif=0.25]

tests/unit/test_seed_example.py runs it on three real slides and checks every stage against
per-slide scalar calls and OpenSlide's pixels. README "Coming from ratiopath" lists where
mask_first's behaviour differs from the seed's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
from shapely.geometry import box

from mask_first import read_slides
from mask_first.masks import tissue_mask, write_mask_overlay
from mask_first.tiling import grid_tiles, read_slide_tiles, tile_overlay_overlap
from mask_first.tiling.utils import row_hash

MASK_MPP = 8.0
MPP = 0.5
TILE = 512
STRIDE = 512
THRESHOLD = 0.5


def run(slide_paths: list[str], mask_dir: str | Path, mpp_overrides: dict[str, float] | None = None) -> dict[str, pd.DataFrame]:
    """The seed pipeline; returns the slide table, every tile, and the kept tiles with their pixels."""
    mpp_overrides = mpp_overrides or {}
    mask_dir = Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)

    def mask_path_for(slide_path: str) -> Path:
        return mask_dir / f"{Path(slide_path).stem}_tissue_mask.tiff"

    def generate_mask(slide_path: str) -> str:
        # seed: tissue_mask(slide=pyvips.Image.new_from_file(slide_path), mpp=(8.0, 8.0)) and
        # mask.tiffsave(...); mask_first reads the pyramid level that suits 8 µm/px itself and
        # writes an overlay whose resolution tags say 8 µm/px
        mask = tissue_mask(slide_path, MASK_MPP, mpp_override=mpp_overrides.get(slide_path))
        write_mask_overlay(mask_path_for(slide_path), mask, MASK_MPP)
        return str(mask_path_for(slide_path))

    for p in slide_paths:
        generate_mask(p)

    def add_mask_path(row: pd.Series) -> pd.Series:
        row["mask_path"] = str(mask_path_for(row["path"]))
        return row

    def expand_tiles(row: pd.Series) -> list[dict[str, Any]]:
        return [
            {
                "path": row["path"],
                "mask_path": row["mask_path"],
                "slide_id": row["id"],
                "tile_x": x,
                "tile_y": y,
                "level": row["level"],
                "tile_extent_x": row["tile_extent_x"],
                "tile_extent_y": row["tile_extent_y"],
                "mpp_x": row["mpp_x"],
                "mpp_y": row["mpp_y"],
            }
            for x, y in grid_tiles(
                slide_extent=(row["extent_x"], row["extent_y"]),
                tile_extent=(row["tile_extent_x"], row["tile_extent_y"]),
                stride=(row["stride_x"], row["stride_y"]),
                last="keep",
            )
        ]

    slides = read_slides(
        slide_paths, mpp=MPP, tile_extent=TILE, stride=STRIDE,
        mpp_override=[mpp_overrides.get(p) for p in slide_paths],
    )
    slides = slides.apply(row_hash, axis=1).apply(add_mask_path, axis=1)

    tiles = pd.DataFrame([t for _, row in slides.iterrows() for t in expand_tiles(row)])

    roi = box(0, 0, TILE, TILE)
    overlap = tile_overlay_overlap(
        roi=roi,
        overlay_path=tiles["mask_path"],
        tile_x=tiles["tile_x"],
        tile_y=tiles["tile_y"],
        mpp_x=tiles["mpp_x"],
        mpp_y=tiles["mpp_y"],
    )
    tiles["tissue_overlap"] = overlap.rows()  # one {"0": ..., "255": ...} dict per tile, as the seed's column

    def frac(row: pd.Series) -> pd.Series:
        return pd.Series({**row, "tissue_fraction": row["tissue_overlap"].get("255", 0.0)})

    tiles = tiles.apply(frac, axis=1)
    kept = tiles[tiles["tissue_fraction"] >= THRESHOLD].copy()

    kept["tile"] = list(
        read_slide_tiles(
            kept["path"], kept["tile_x"], kept["tile_y"], kept["tile_extent_x"], kept["tile_extent_y"], kept["level"]
        )
    )
    return {"slides": slides, "tiles": tiles, "kept": kept, "overlap": overlap}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", nargs="+", required=True)
    ap.add_argument("--mask-dir", required=True)
    ap.add_argument("--mpp-override", nargs="*", default=[], help="PATH=MPP for slides without mpp metadata")
    args = ap.parse_args()
    overrides = {p: float(v) for p, v in (o.rsplit("=", 1) for o in args.mpp_override)}
    out = run(args.slides, args.mask_dir, overrides)
    kept, tiles = out["kept"], out["tiles"]
    print(f"tiles retained: {len(kept)} / {len(tiles)} (threshold {THRESHOLD})")
    for slide_id, g in kept.groupby("slide_id", sort=False):
        print(f"  {g['path'].iloc[0]}: {len(g)} tiles, first tile {g['tile'].iloc[0].shape}")


if __name__ == "__main__":
    main()
