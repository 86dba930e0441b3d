"""Reduced-scale JPEG decoding (libjpeg's DCT scaling by 1/2) against decode + area average.

    pip install simplejpeg      # a libjpeg-turbo binding with DCT scaling; not a project dependency
    python benchmarks/bench_dct_scaling.py [--slides A.svs B.tif ...] [--tiles 300]

For the largest stored JPEG tiles of level 0 of each slide (the real JPEG
slides in ../shared/data/slides by default), times

* what the pipeline does to halve a tile: imagecodecs decode at full size,
  then OpenCV ``INTER_AREA`` (the 2 x 2 block mean);
* libjpeg-turbo decoding straight to half size from the DCT coefficients
  (``simplejpeg.decode_jpeg(..., min_factor=2)``), the abbreviated TIFF
  stream completed with the page's JPEGTables (and an Adobe marker for
  Aperio's RGB-coded tiles);

interleaved, best of ``--repeats``, and prints the speed ratio and how far the
DCT-scaled pixels are from the area average (mean, 99th percentile, maximum
absolute difference in grey levels): the pixel step promises delivered tiles
within 2 grey levels of an area average.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_best  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
DEFAULT = ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_generic-pyramid_jpeg.tif"]
#: APP14 "Adobe" segment with transform 0: the three components are R, G, B (no YCbCr)
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", nargs="*", type=Path, default=[SHARED / n for n in DEFAULT])
    ap.add_argument("--tiles", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    try:
        import simplejpeg
    except ImportError:
        raise SystemExit("simplejpeg is not installed: pip install simplejpeg") from None
    import cv2
    import imagecodecs
    import tifffile

    print("| slide | stored tile | tiles | decode + INTER_AREA ms/tile | DCT 1/2 ms/tile | speed-up | "
          "mean abs diff | p99 | max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.slides:
        with tifffile.TiffFile(path) as tf:
            page = tf.series[0].levels[0].keyframe
            if page.compression != 7:
                print(f"| {path.name} | not JPEG (compression {page.compression}) | | | | | | | |")
                continue
            counts = np.asarray(page.databytecounts)
            chosen = np.argsort(counts)[::-1][: args.tiles]
            fd = os.open(path, os.O_RDONLY)
            try:
                data = [os.pread(fd, int(counts[i]), int(page.dataoffsets[i])) for i in chosen]
            finally:
                os.close(fd)
            tables = page.jpegtables
            rgb_coded = not page.is_jfif and page.photometric == 2  # Aperio: RGB components, no marker
            cs = 2 if rgb_coded else None
            full_streams = [(tables[:-2] + d[2:]) if tables else d for d in data]
            if rgb_coded:
                full_streams = [s[:2] + ADOBE_RGB + s[2:] for s in full_streams]
            h, w = int(page.tilelength), int(page.tilewidth)

            def area():
                return [cv2.resize(imagecodecs.jpeg8_decode(d, tables=tables, colorspace=cs, outcolorspace=2),
                                   (w // 2, h // 2), interpolation=cv2.INTER_AREA) for d in data]

            def dct():
                return [simplejpeg.decode_jpeg(s, colorspace="RGB", min_factor=2, min_width=w // 2,
                                               min_height=h // 2) for s in full_streams]

            t = interleaved_best({"area": area, "dct": dct}, args.repeats)
            diff = np.abs(np.stack(dct()).astype(np.int16) - np.stack(area()).astype(np.int16))
            n = len(data)
            print(f"| {path.name} | {w} x {h} | {n} | {1e3 * t['area'] / n:.2f} | {1e3 * t['dct'] / n:.2f} | "
                  f"{t['area'] / t['dct']:.2f}x | {diff.mean():.2f} | {np.percentile(diff, 99):.0f} | {diff.max()} |")


if __name__ == "__main__":
    main()
