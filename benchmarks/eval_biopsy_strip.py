"""Does ``od`` take a dense core biopsy for a marker stroke? Strips of real H&E texture alone on glass.

A 0.5 x 12 mm strip (2 µm/px) is tiled from 64 x 64 px tissue crops of CMU-1 and of the TCGA slide
(``../shared/data/slides``), its optical density multiplied by 1, 2 and 3 (a normally to a densely
stained biopsy), and masked at 8 µm/px. Prints the share of the strip's non-background pixels labelled
ink, with the defaults and with ``ink_same_hue_min_ratio=0`` (stain-hued ink needing only twice
``ink_min_od``, as before that parameter).

Usage::

    python benchmarks/eval_biopsy_strip.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "unit" / "tissue")]
from tissue_scenes import ArraySlide  # noqa: E402

from mask_first.slides import open_slide  # noqa: E402
from mask_first.tissue.detection import INK, tissue_mask  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "slides"


def crops(name: str, override: float | None) -> list[np.ndarray]:
    """64 x 64 px crops at 2 µm/px that are at least 95 % tissue (mean OD >= 0.1 against 242)."""
    with open_slide(SHARED / name, override) as s:
        level = s.best_level_for_mpp(2.0)
        rgb, f = s.read_level(level), 2.0 / s.level_mpp(level)[0]
    small = cv2.resize(rgb, (int(rgb.shape[1] / f), int(rgb.shape[0] / f)), interpolation=cv2.INTER_AREA)
    od = -np.log10(np.maximum(small, 1) / 242).mean(axis=2)
    return [small[y : y + 64, x : x + 64] for y in range(0, small.shape[0] - 64, 64)
            for x in range(0, small.shape[1] - 64, 64) if (od[y : y + 64, x : x + 64] > 0.1).mean() > 0.95]  # fmt: skip


def main() -> int:
    if not SHARED.is_dir():
        print(f"real slides not found at {SHARED}")
        return 1
    for name, override in (("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.25)):
        pool = crops(name, override)
        rng = np.random.default_rng(0)
        for dense in (1.0, 2.0, 3.0):
            img = np.full((1400, 7000, 3), 240, np.uint8)
            for x in range(200, 6800, 64):
                for y in range(572, 828, 64):  # 256 px = 0.5 mm wide
                    c = pool[rng.integers(len(pool))].astype(np.float32)
                    img[y : y + 64, x : x + 64] = np.clip(240 * (c / 240) ** dense, 0, 255).astype(np.uint8)
            slide = ArraySlide([img], mpp=2.0)
            shares = []
            for params in ({}, {"ink_same_hue_min_ratio": 0}):
                m = tissue_mask(slide, 8.0, **params)
                shares.append(np.mean(m == INK) / max(np.mean(m > 0), 1e-9))
            print(f"{name:<30} {len(pool):3d} crops  OD x{dense:.0f}: ink share {shares[0]:.3f} (defaults), "
                  f"{shares[1]:.3f} (ink_same_hue_min_ratio=0)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
