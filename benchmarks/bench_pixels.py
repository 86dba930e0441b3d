"""Retained-tile reads vs the decode ceiling and OpenSlide read_region, on a JPEG pyramidal TIFF.

    python benchmarks/bench_pixels.py [--size 8192] [--repeats 3]

The ceiling is tifffile + imagecodecs decoding the stored tiles that cover the
requested tiles, natively, one thread, nothing else. All three run on the same
tiles in the same process, so the printed ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import openslide
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of  # noqa: E402

from mask_first.slides import open_slide  # noqa: E402
from mask_first.synthetic import write_synthetic_slide  # noqa: E402
from mask_first.tiles import grid_tiles, read_slide_tiles  # noqa: E402


def decode_ceiling(path: Path, segments: np.ndarray) -> None:
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        fd = os.open(path, os.O_RDONLY)
        try:
            for i in segments.tolist():
                data = os.pread(fd, page.databytecounts[i], page.dataoffsets[i])
                page.decode(data, i, jpegtables=page.jpegtables)
        finally:
            os.close(fd)


def openslide_reads(path: Path, tiles: np.ndarray, size: int) -> None:
    osr = openslide.OpenSlide(str(path))
    for x, y in tiles.tolist():
        np.asarray(osr.read_region((x, y), 0, (size, size)).convert("RGB"))
    osr.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_slide(Path(tmp) / "bench.tiff", args.size, args.size, kind="tissue", seed=3)
        with open_slide(path) as s:
            seg_w, seg_h = s.stored_tile_size(0)
            print(f"slide {args.size}x{args.size} JPEG q85, stored tiles {seg_w}x{seg_h}")
        print(f"{'case':34s} {'tiles':>6s} {'ours MP/s':>10s} {'ceiling':>8s} {'openslide':>9s} "
              f"{'ours/ceil':>9s} {'ours/OS':>8s}")
        for name, size, stride, offset in [
            ("aligned 256 (stored tile grid)", 256, 256, 0),
            ("offset 256 (4 stored tiles each)", 256, 256, 100),
            ("224 stride 224 (mixed)", 224, 224, 0),
        ]:
            tiles = grid_tiles((args.size - offset, args.size - offset), size, stride, last="drop") + offset
            tiles = tiles[::3]  # a "retained" subset, not the whole slide
            segs = np.unique(np.concatenate([
                [(yy // seg_h) * -(-args.size // seg_w) + xx // seg_w
                 for yy in range(y - y % seg_h, y + size, seg_h) for xx in range(x - x % seg_w, x + size, seg_w)]
                for x, y in tiles.tolist()
            ]))
            mp = len(tiles) * size * size / 1e6
            t_ours = best_of(lambda: read_slide_tiles(path, tiles[:, 0], tiles[:, 1], size, size, 0), args.repeats)
            t_ceil = best_of(lambda: decode_ceiling(path, segs), args.repeats)
            t_os = best_of(lambda: openslide_reads(path, tiles, size), args.repeats)
            print(f"{name:34s} {len(tiles):6d} {mp / t_ours:10.0f} {mp / t_ceil:8.0f} {mp / t_os:9.0f} "
                  f"{t_ceil / t_ours:9.2f} {t_os / t_ours:8.2f}")
        tiles = grid_tiles((args.size, args.size), 256, 256)[::3]
        t1 = best_of(lambda: read_slide_tiles(path, tiles[:, 0], tiles[:, 1], 256, 256, 0, threads=1), args.repeats)
        t2 = best_of(lambda: read_slide_tiles(path, tiles[:, 0], tiles[:, 1], 256, 256, 0, threads=2), args.repeats)
        print(f"threads=2 vs threads=1 on aligned tiles: {t1 / t2:.2f}x")


if __name__ == "__main__":
    main()
