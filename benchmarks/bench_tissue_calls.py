"""What single OpenCV / numpy calls cost on a 12.6 MP level, against decoding it: the floor under ``od`` at f ~ 1.

Writes the generated generic TIFF of :mod:`bench_tissue` (8192 x 6144, level 1 4096 x 3072 at 8.09 µm/px)
to a temporary folder, reads level 1 and times each call alone (best of ``--repeat``), printing
milliseconds and the ratio to ``slide.read_level(1)`` of the same run (one thread: the baseline of the bar
in ``bench_tissue.py``). OpenCV calls run with OpenCV's default threads; the mask's own calls run in strips
on two threads, so its wall time is about half the sum of its calls. The INTER_AREA lines are the
resampling of the 12 and 13 µm/px masks (f = 1.48, 1.61), the level padded to the mask grid as
:mod:`mask_first.tissue.resample` does.

Usage::

    python benchmarks/bench_tissue_calls.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from bench_tissue import write_big_tiff  # noqa: E402

from mask_first.slides import open_slide  # noqa: E402
from mask_first.tissue.resample import _grid_count, _read_level  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        slide = open_slide(write_big_tiff(Path(tmp) / "big-generic.tif"))

        def best(fn) -> float:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        rgb = _read_level(slide, 1)
        decode = best(lambda: slide.read_level(1))
        decode2 = best(lambda: _read_level(slide, 1))
        levels = np.maximum(np.arange(256, dtype=np.float64), 1)
        lut = np.stack([np.clip(np.rint(100 * np.log10(w / levels)), 0, 255) for w in (242, 236, 240)], axis=1)
        lut3 = lut.astype(np.uint8).reshape(256, 1, 3)
        luts = [np.ascontiguousarray(lut3[:, 0, c]) for c in range(3)]
        od = cv2.LUT(rgb, lut3)
        mean = np.full((1, 3), 1 / 3, np.float32)
        density = cv2.transform(od, mean)
        tissue = cv2.compare(density, 8, cv2.CMP_GE)

        out = np.empty(rgb.shape[:2], np.uint8)
        squares = (np.arange(256) ** 2).astype(np.uint16)
        se = np.ones((3, 3), np.uint8)

        def padded(f: float) -> tuple[np.ndarray, tuple[int, int]]:  # the level on a grid of f, as resample pads it
            nx, ny = _grid_count(int(rgb.shape[1] / f), f), _grid_count(int(rgb.shape[0] / f), f)
            img = np.full((round(ny * f), round(nx * f), 3), 255, np.uint8)
            h, w = min(img.shape[0], rgb.shape[0]), min(img.shape[1], rgb.shape[1])
            img[:h, :w] = rgb[:h, :w]
            return img, (nx, ny)

        pad12, size12 = padded(12.0 / 8.086)
        pad13, size13 = padded(13.0 / 8.086)

        def three_lookups() -> None:  # in strips of 128 rows on one thread, as od makes the density
            for y in range(0, rgb.shape[0], 128):
                r, g, b = cv2.split(rgb[y : y + 128])
                total = cv2.add(cv2.LUT(r, luts[0]), cv2.LUT(g, luts[1]), dtype=cv2.CV_16U)
                cv2.add(total, cv2.LUT(b, luts[2]), dst=total, dtype=cv2.CV_16U)
                cv2.convertScaleAbs(total, alpha=1 / 3, dst=out[y : y + 128])

        def lut_transform() -> None:  # the same in strips, by a 3-channel lookup and a transform
            for y in range(0, rgb.shape[0], 128):
                cv2.transform(cv2.LUT(rgb[y : y + 128], lut3), mean, dst=out[y : y + 128])

        calls = {
            "3-channel cv2.LUT": lambda: cv2.LUT(rgb, lut3),
            "cv2.transform 3 -> 1": lambda: cv2.transform(od, mean),
            "density: 3-channel LUT + transform, strips": lut_transform,
            "density: three 1-channel LUTs summed, strips": three_lookups,
            "cv2.cvtColor RGB -> grey": lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
            "cv2.compare (a threshold)": lambda: cv2.compare(density, 8, cv2.CMP_GE),
            "cv2.connectedComponents": lambda: cv2.connectedComponents(tissue, connectivity=8, ltype=cv2.CV_32S),
            "cv2.connectedComponentsWithStats": lambda: cv2.connectedComponentsWithStats(tissue, connectivity=8),
            "cv2.boxFilter 3 x 3 to 16 bits": lambda: cv2.boxFilter(density, cv2.CV_16U, (3, 3), normalize=False),
            "squares (LUT) + boxFilter 3 x 3 to 32 bits": lambda: cv2.boxFilter(
                cv2.LUT(density, squares), cv2.CV_32S, (3, 3), normalize=False),
            "3 x 3 range: dilate - erode": lambda: cv2.subtract(cv2.dilate(density, se), cv2.erode(density, se)),
            "cv2.resize INTER_AREA, f = 1.48 (12 µm mask)": lambda: cv2.resize(pad12, size12, interpolation=cv2.INTER_AREA),
            "cv2.resize INTER_AREA, f = 1.61 (13 µm mask)": lambda: cv2.resize(pad13, size13, interpolation=cv2.INTER_AREA),
            "np.flatnonzero of a bool image": lambda: np.flatnonzero(tissue.view(bool)),
            "np.flatnonzero of a uint8 image": lambda: np.flatnonzero(tissue),
        }
        print(f"level 1 {rgb.shape[1]} x {rgb.shape[0]}, read_level {1e3 * decode:.1f} ms, on the mask's two threads "
              f"{1e3 * decode2:.1f} ms (best of {args.repeat})")
        for name, fn in calls.items():
            t = best(fn)
            print(f"{name:<46} {1e3 * t:7.1f} ms  {t / decode:5.2f} x the decode")
        slide.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
