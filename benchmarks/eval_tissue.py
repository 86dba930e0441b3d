"""Accuracy of the tissue-mask methods: synthetic slides with ground truth, real slides against an OD reference.

Synthetic slides (written here with :mod:`mask_first.synthetic`, fixed seeds,
8192 x 6144 px at 0.5 µm/px, so the 8 µm mask reads level 4 at f = 1):

* ``he-ink-dust``: H&E, holes, the blue/green pen loop, four marker strokes
  (blue, green, black, red) across tissue and glass, 60 dust specks;
* ``blue-stain-blue-ink``: Giemsa / toluidine-like tissue as blue as the blue
  marker, a blue and a black stroke;
* ``pale``, ``hematoxylin``, ``ihc``: faint H&E, nuclear stain only, DAB brown
  with a light counterstain, each with one stroke;
* ``ihc-fragment``: one small IHC fragment (0.3 % of the slide) on an empty field.

Per slide and method: IoU of ``mask == 255`` with the truth
(:func:`~mask_first.synthetic.synthetic_tissue_mask`; tissue under ink counts
as tissue), IoU with the truth minus the ink (``IoU-ink``: what a mask that
leaves ink out can reach), the fraction of ink pixels (:func:`synthetic_pen_mask`) marked
tissue, and the fraction labelled ink.

Real slides (``../shared/data/slides``, tcga and kidney with the mpp overrides
0.25 / 0.5 of tests/conftest.py): IoU with an optical-density reference,
computed independently of the module: on the pixels of the level the mask
reads, mean OD over R, G, B against a white of 255, ``>= 0.1`` (glass ~0.03,
fat in the bone DICOM ~0.07), then a mask pixel is reference tissue when at
least half of its area is (area fractions by ``cv2.resize(INTER_AREA)``).

Usage::

    python benchmarks/eval_tissue.py [--methods od otsu saturation] [--keep DIR] [--seed-offsets 0 100 200]
        [--size 24576 18432] [--slide-mpp 0.5054] [--params KEY=VALUE ...] [--no-real]

Prints one line per (slide, method).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from mask_first.slides import open_slide  # noqa: E402
from mask_first.synthetic import synthetic_pen_mask, synthetic_tissue_mask, write_synthetic_slide  # noqa: E402
from mask_first.tissue.detection import INK, TISSUE, tissue_mask_with_info  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "slides"
REAL = {
    "CMU-1-Small-Region.svs": None,
    "CMU-1-Small-Region_generic-pyramid_jpeg.tif": None,
    "CMU-1-Small-Region.ome.tif": None,
    "tcga-cr-7395-01a-01-ts1.svs": 0.25,
    "kidney-48-5.tif": 0.5,
    "wsi2dcm_bone_jpeg.dcm": None,
    "wsi2dcm_bone_jpeg2000.dcm": None,
}
W, H, MPP0 = 8192, 6144, 0.5
SCENES = {
    "he-ink-dust": dict(seed=11, stain="he", pen_mark=True, inks=("blue", "green", "black", "red"), dust=60),
    "blue-stain-blue-ink": dict(seed=12, stain="blue", pen_mark=False, inks=("blue", "black")),
    "pale": dict(seed=13, stain="pale", pen_mark=False, inks=("green",)),
    "hematoxylin": dict(seed=14, stain="hematoxylin", pen_mark=False, inks=("red",)),
    "ihc": dict(seed=15, stain="ihc", pen_mark=False, inks=("black",), dust=30),
    "ihc-fragment": dict(seed=16, stain="ihc", pen_mark=False, n_regions=1, tissue_fraction=0.003),
}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def od_reference(path: Path, override, mpp: float, shape: tuple[int, int], threshold: float = 0.1) -> np.ndarray:
    """Reference tissue on the mask grid: mean OD (white 255) >= threshold on >= half of the mask pixel."""
    import cv2

    with open_slide(path, override) as s:
        level = s.best_level_for_mpp(mpp)
        rgb = s.read_level(level).astype(np.float32)
        lmx, lmy = s.level_mpp(level)
    od = -np.log10(np.maximum(rgb, 1) / 255).mean(axis=2)
    tissue = (od >= threshold).astype(np.float32)
    h, w = shape
    # the level covers h * mpp / lmy level rows of the mask grid; outside is glass
    ph, pw = round(h * mpp / lmy), round(w * mpp / lmx)
    padded = np.zeros((max(ph, tissue.shape[0]), max(pw, tissue.shape[1])), np.float32)
    padded[: tissue.shape[0], : tissue.shape[1]] = tissue
    frac = cv2.resize(padded[:ph, :pw], (w, h), interpolation=cv2.INTER_AREA)
    return frac >= 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["od", "otsu", "saturation"])
    parser.add_argument("--keep", type=Path, help="write the synthetic slides here (reused when present)")
    parser.add_argument("--mpp", type=float, default=8.0)
    parser.add_argument("--seed-offsets", nargs="+", type=int, default=[0], metavar="K",
                        help="also run each synthetic scene with its seed + K (other tissue, strokes and dust)")
    parser.add_argument("--no-real", action="store_true", help="synthetic slides only")
    parser.add_argument("--size", nargs=2, type=int, default=[W, H], metavar=("WIDTH", "HEIGHT"),
                        help="synthetic slides' level-0 size in px at 0.5 µm/px (strokes are 1 %% of the short side wide)")
    parser.add_argument("--slide-mpp", type=float, default=MPP0, metavar="UM",
                        help="read the synthetic slides as if scanned at this level-0 µm/px (an mpp override): 0.5054 makes "
                             "the 8 µm mask read level 4 at 8.09 µm/px (f = 0.99), as the 32x level of an Aperio "
                             "0.2527 µm/px slide")
    parser.add_argument("--params", nargs="*", default=[], metavar="KEY=VALUE",
                        help="method parameters for every method run, e.g. min_hole_um2=200")
    args = parser.parse_args(argv)
    from bench_tissue import _parse_param

    params = dict(_parse_param(t) for t in args.params)
    tmp = tempfile.TemporaryDirectory()
    folder = args.keep or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    ds = args.mpp / args.slide_mpp
    slide_override = None if args.slide_mpp == MPP0 else args.slide_mpp
    print(f"{'slide':<44} {'method':<11} {'IoU':>6} {'IoU-ink':>7} {'ink->tissue':>11} {'ink labelled':>12} {'tissue %':>8}")
    scenes = {
        name + (f"+{k}" if k else ""): {**spec, "seed": spec["seed"] + k}
        for k in args.seed_offsets for name, spec in SCENES.items()
    }  # fmt: skip
    width, height = args.size
    for name, spec in scenes.items():
        path = folder / (f"{name}.tiff" if (width, height) == (W, H) else f"{name}-{width}x{height}.tiff")
        if not path.exists():
            write_synthetic_slide(path, width, height, mpp=MPP0, **spec)
        geometry = {k: v for k, v in spec.items() if k in ("seed", "n_regions", "tissue_fraction")}
        truth = synthetic_tissue_mask(width, height, downsample=ds, **geometry)
        ink = synthetic_pen_mask(width, height, downsample=ds, pen_mark=spec.get("pen_mark"), inks=spec.get("inks", ()),
                                 **geometry)  # fmt: skip
        for method in args.methods:
            mask = tissue_mask_with_info(path, args.mpp, method, mpp_override=slide_override, **params).mask
            mask = mask[: truth.shape[0], : truth.shape[1]]
            got = mask == TISSUE
            ink_t = f"{got[ink].mean():11.3f}" if ink.any() else f"{'-':>11}"
            ink_l = f"{(mask == INK)[ink].mean():12.3f}" if ink.any() else f"{'-':>12}"
            print(f"{'synthetic ' + name:<44} {method:<11} {iou(got, truth):6.3f} {iou(got, truth & ~ink):7.3f} {ink_t} {ink_l}"
                  f" {100 * got.mean():8.2f}",
                  flush=True)  # fmt: skip
    if args.no_real:
        return 0
    if not SHARED.is_dir():
        print(f"(real slides not found at {SHARED})")
        return 0
    for name, override in REAL.items():
        path = SHARED / name
        if not path.exists():
            continue
        for method in args.methods:
            res = tissue_mask_with_info(path, args.mpp, method, mpp_override=override, **params)
            ref = od_reference(path, override, args.mpp, res.mask.shape)
            got = res.mask == TISSUE
            print(f"{name:<44} {method:<11} {iou(got, ref):6.3f} {'-':>7} {'-':>11} {100 * (res.mask == INK).mean():11.2f}%"
                  f" {100 * got.mean():8.2f}  (reference {100 * ref.mean():.2f} %)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
