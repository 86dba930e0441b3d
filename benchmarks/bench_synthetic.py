"""Time and peak-RSS of the streaming synthetic slide writer.

Usage (each run in a fresh process so ru_maxrss is this run's peak)::

    python benchmarks/bench_synthetic.py --size 100000 --tissue-fraction 0.02
    python benchmarks/bench_synthetic.py --size 20480 --tissue-fraction 0.03
    python benchmarks/bench_synthetic.py --cohort

Prints one JSON line: wall seconds, CPU seconds, peak RSS (MiB, from
``resource.getrusage``), output size, and the pyramid as OpenSlide reports it.
The output is written to a temporary directory and deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import openslide

# Runnable from a plain checkout without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mask_first.synthetic import write_demo_cohort, write_synthetic_slide  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="level-0 width = height in pixels")
    parser.add_argument("--tissue-fraction", type=float, default=0.02)
    parser.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 pixel")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--cohort", action="store_true", help="time write_demo_cohort() instead")
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep the output")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        outdir = args.keep or Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        t0, c0 = time.perf_counter(), time.process_time()
        if args.cohort:
            paths = write_demo_cohort(outdir / "cohort", workers=args.workers)
        else:
            paths = [
                write_synthetic_slide(
                    outdir / f"synthetic_{args.size}.tiff",
                    args.size,
                    args.size,
                    mpp=args.mpp,
                    seed=args.seed,
                    tissue_fraction=args.tissue_fraction,
                    workers=args.workers,
                )
            ]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        slides = []
        for p in paths:
            with openslide.OpenSlide(p) as s:
                slides.append(
                    {
                        "file": p.name,
                        "bytes": p.stat().st_size,
                        "level_count": s.level_count,
                        "level0": list(s.level_dimensions[0]),
                        "mpp_x": s.properties.get(openslide.PROPERTY_NAME_MPP_X),
                    }
                )
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "peak_rss_mib": round(peak_rss_mib, 1),
                "slides": slides,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
