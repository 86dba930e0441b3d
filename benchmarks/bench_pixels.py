"""Retained-tile reads per geometry vs the decode ceiling and OpenSlide, and the pixel-store write path.

    python benchmarks/bench_pixels.py [--size 8192] [--repeats 3] [--slide PATH]

The slide is a JPEG pyramidal TIFF in 256-px stored tiles (synthetic unless
``--slide`` names one). For each geometry the same requested tiles (every 3rd
of the grid, a "retained" subset) are read by

* ours: ``read_slide_tiles`` (threads=1 and threads=2; JPEG tiles through
  libturbojpeg in place when it is installed),
* ic: ours with libturbojpeg hidden (imagecodecs into a buffer + copy),
* the ceiling: tifffile + imagecodecs decoding exactly the stored tiles those
  requests cover (``page.decode``), one thread, nothing else,
* OpenSlide ``read_region`` of the same regions (no resampling on its side).

All run in one process on the same tiles, so the ratios hold on a shared
machine even when absolute MP/s move. MP/s counts delivered pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, interleaved_best  # noqa: E402

from mask_first.slides import open_slide  # noqa: E402
from mask_first.synthetic import write_synthetic_slide  # noqa: E402
from mask_first.tiles import grid_tiles, read_slide_tiles  # noqa: E402
from mask_first.tiles.pixels import write_tile_pixels  # noqa: E402


def stored_tiles_for(tiles: np.ndarray, size: int, seg: int, width: int, height: int) -> np.ndarray:
    n_x = -(-width // seg)
    out = set()
    for x, y in tiles.tolist():
        for j in range(max(y, 0) // seg, (min(y + size, height) - 1) // seg + 1):
            for i in range(max(x, 0) // seg, (min(x + size, width) - 1) // seg + 1):
                out.add(j * n_x + i)
    return np.array(sorted(out))


def decode_ceiling(path: Path, segments: np.ndarray) -> None:
    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].keyframe
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
        np.asarray(osr.read_region((x, y), 0, (size, size)))
    osr.close()


@contextlib.contextmanager
def _without_turbojpeg():
    """The reader's imagecodecs path (decode into a buffer, then copy), for comparison."""
    from mask_first import jpeg

    saved = jpeg.available
    jpeg.available = lambda: False
    try:
        yield
    finally:
        jpeg.available = saved


def bench_reads(path: Path, repeats: int) -> np.ndarray:
    with open_slide(path) as s:
        seg, seg_h = s.stored_tile_size(0)
        width, height = s.level_dimensions[0]
    print(f"slide {path.name}: level 0 {width}x{height}, stored tiles {seg}x{seg_h}")
    from mask_first import jpeg

    print(f"libturbojpeg: {'in use' if jpeg.available() else 'not found (ours = the imagecodecs path)'}")
    print(f"{'geometry':40s} {'tiles':>5s} {'stored':>6s} {'ours':>6s} {'ours2t':>6s} {'ic':>6s} {'ceil':>6s} {'OS':>6s} "
          f"{'ours/ceil':>9s} {'2t/ceil':>7s} {'ic/ceil':>7s} {'ours/OS':>7s}   (MP/s of delivered pixels)")
    keep = None
    for name, region, stride, offset, out in [
        ("exact (256 = one stored tile)", 256, 256, 0, 256),
        ("aligned 2x2 (512 over 256)", 512, 512, 0, 512),
        ("misaligned 512 (+100 px)", 512, 512, 100, 512),
        ("overlapping stride 512 / 256", 512, 256, 0, 512),
        ("resampled 512 -> 256 (x2, finer level)", 512, 512, 0, 256),
        ("resampled 384 -> 256 (x1.5, finer level)", 384, 384, 0, 256),
    ]:
        tiles = grid_tiles((width - offset, height - offset), region, stride, last="drop") + offset
        tiles = tiles[::3]
        segs = stored_tiles_for(tiles, region, seg, width, height)
        rs = None if out == region else (out, out)
        mp = len(tiles) * out * out / 1e6
        def no_turbo():
            with _without_turbojpeg():
                read_slide_tiles(path, tiles[:, 0], tiles[:, 1], region, region, 0, resample_to=rs)

        t = interleaved_best({
            "ours": lambda: read_slide_tiles(path, tiles[:, 0], tiles[:, 1], region, region, 0, resample_to=rs),
            "ic": no_turbo,
            "ours2": lambda: read_slide_tiles(path, tiles[:, 0], tiles[:, 1], region, region, 0, resample_to=rs,
                                              threads=2),
            "ceil": lambda: decode_ceiling(path, segs),
            "os": lambda: openslide_reads(path, tiles, region),
        }, repeats)
        t1, t2, tc, to, ti = t["ours"], t["ours2"], t["ceil"], t["os"], t["ic"]
        print(f"{name:40s} {len(tiles):5d} {len(segs):6d} {mp / t1:6.0f} {mp / t2:6.0f} {mp / ti:6.0f} {mp / tc:6.0f} "
              f"{mp / to:6.0f} {tc / t1:9.2f} {tc / t2:7.2f} {tc / ti:7.2f} {to / t1:7.2f}")
        if region == 512 and offset == 0 and stride == 512 and rs is None:
            keep = tiles
    return keep


def _real_tissue_tiles(n_max: int = 64) -> np.ndarray | None:
    """512-px tissue tiles (grey std > 8) of the real H&E slides in ../shared, or None without them."""
    from mask_first.tiles.pixels import tile_pixel_std

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
    found = []
    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        if not (shared / name).exists():
            return None
        with open_slide(shared / name, require_mpp=False) as s:
            w, h = s.level_dimensions[0]
            xs, ys = np.meshgrid(np.arange(0, w - 511, 512), np.arange(0, h - 511, 512))
            px = read_slide_tiles(s, xs.ravel(), ys.ravel(), 512, 512, 0)
        found.append(px[tile_pixel_std(px) > 8])
    return np.concatenate(found)[:n_max]


def bench_writes(path: Path, tiles: np.ndarray, repeats: int, tmp: Path) -> None:
    px = read_slide_tiles(path, tiles[:, 0], tiles[:, 1], 512, 512, 0)
    mb = px.nbytes / 1e6
    t_read = best_of(lambda: read_slide_tiles(path, tiles[:, 0], tiles[:, 1], 512, 512, 0), repeats)
    print(f"\nwrite path: {len(tiles)} tiles of 512 px = {mb:.0f} MB raw; decoding them takes {t_read:.2f} s")
    print(f"{'write_tile_pixels (decode + store), synthetic slide':52s} {'s':>6s} {'MB/s':>6s} {'file MB':>7s}")
    out = tmp / "w.parquet"
    meta = {"x": tiles[:, 0], "y": tiles[:, 1]}
    for enc, codec in [("raw", "none"), ("raw", "snappy"), ("raw", "lz4"), ("raw", "zstd"), ("jpeg", "none")]:
        t = best_of(lambda: write_tile_pixels(out, path, meta, level=0, tile_extent_x=512, tile_extent_y=512,
                                              encoding=enc, compression=codec), repeats)
        label = f"raw, {codec}" if enc == "raw" else "jpeg q90"
        print(f"{label:52s} {t:6.2f} {mb / t:6.0f} {out.stat().st_size / 1e6:7.0f}")

    # 256-px tiles on the stored grid: jpeg keeps the stored streams (no decode, no encode)
    from mask_first.slides import TiffSlide

    exact = grid_tiles((8192, 8192), 256, 256, last="drop")[::3]
    emeta = {"x": exact[:, 0], "y": exact[:, 1]}
    emb = len(exact) * 256 * 256 * 3 / 1e6

    def jpeg_write():
        write_tile_pixels(out, path, emeta, level=0, tile_extent_x=256, tile_extent_y=256, encoding="jpeg")

    def reencode():
        saved = TiffSlide.stored_jpeg
        TiffSlide.stored_jpeg = lambda self, level, xs, ys, w, h: [None] * len(xs)
        try:
            jpeg_write()
        finally:
            TiffSlide.stored_jpeg = saved

    t = interleaved_best({"pass": jpeg_write, "re": reencode,
                          "raw": lambda: write_tile_pixels(out, path, emeta, level=0, tile_extent_x=256,
                                                           tile_extent_y=256)}, repeats)
    print(f"\n{len(exact)} tiles of 256 px on the stored grid ({emb:.0f} MB of pixels):")
    for k, label in (("pass", "jpeg, stored streams passed through"), ("re", "jpeg, decoded + encoded q90"),
                     ("raw", "raw, none")):
        print(f"{label:52s} {t[k]:6.2f} {emb / t[k]:6.0f}")

    real = _real_tissue_tiles()
    if real is None:
        print("(no ../shared slides: the real-tissue codec table is skipped)")
        return
    rmb = real.nbytes / 1e6
    print(f"\nParquet codecs of the pixel column on {len(real)} real H&E tissue tiles of 512 px "
          f"({rmb:.0f} MB, CMU-1-Small-Region + TCGA), store only:")
    print(f"{'codec':12s} {'MB/s':>6s} {'smaller than raw':>17s}")
    for codec in ("none", "snappy", "lz4", "zstd"):
        def store():
            with pq.ParquetWriter(out, pa.schema([("pixels", pa.binary())]), compression=codec,
                                  use_dictionary=False, write_statistics=False,
                                  **({"compression_level": 1} if codec == "zstd" else {})) as w:
                for a in range(0, len(real), 16):
                    chunk = real[a : a + 16]
                    offsets = np.arange(len(chunk) + 1, dtype=np.int32) * chunk[0].nbytes
                    w.write_table(pa.table({"pixels": pa.Array.from_buffers(
                        pa.binary(), len(chunk), [None, pa.py_buffer(offsets), pa.py_buffer(chunk.reshape(-1))])}))
        t = best_of(store, repeats)
        print(f"{codec:12s} {rmb / t:6.0f} {real.nbytes / out.stat().st_size:16.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slide", type=Path, default=None, help="a JPEG pyramidal TIFF to use instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = args.slide or write_synthetic_slide(tmp / "bench.tiff", args.size, args.size, kind="tissue", seed=3)
        t0 = time.perf_counter()
        tiles = bench_reads(path, args.repeats)
        bench_writes(path, tiles, args.repeats, tmp)
        print(f"\n({time.perf_counter() - t0:.0f} s, {os.cpu_count()} CPUs, ratios within this run)")


if __name__ == "__main__":
    main()
