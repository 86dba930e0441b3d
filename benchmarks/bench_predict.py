"""Cost of the predict step: a model on the retained tiles plus the heatmap, as a fresh process per job.

Usage::

    python benchmarks/bench_predict.py [--workdir DIR] [--repeats 5]

``DIR`` is a finished workflow run with stored pixels (default: a fresh run of
the demo cohort with 128-px tiles at 1 µm/px in a temporary directory). For
each slide it times, alternately and ``--repeats`` times, in fresh
interpreters as Snakemake's jobs are:

* ``predict``: ``pipeline.write_predictions`` with the example scalar model
  ``examples/haematoxylin.py:score`` (pixels from Parquet, model, predictions
  table, heatmap TIFF + PNG), under ``run_step`` (the pandas block on);
* ``model only``: the same tiles loaded and the model called, nothing else;
* ``pixels``: ``pipeline.write_retained_pixels`` of the same slide (the job
  before it, for scale).

Prints medians and the ratios predict / pixels and predict / model-only, all
measured in this run (the machine is shared: compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PREDICT = """
import sys; sys.path.insert(0, {repo!r})
from mask_first.pipeline import run_step, write_predictions
run_step({slide!r}, None, write_predictions, "results/retained/{slide}.parquet", "results/slides/{slide}.parquet",
         "{tmp}/p.parquet", "{tmp}/p.tiff", "{tmp}/p.png", model={repo!r} + "/examples/haematoxylin.py:score",
         pixels="results/pixels/{slide}.parquet", columns=["haematoxylin"], storage="memmap")
"""

MODEL_ONLY = """
import sys; sys.path.insert(0, {repo!r}); sys.path.insert(0, {repo!r} + "/examples")
import numpy as np
from mask_first.tiles.pixels import load_tile_pixels
from haematoxylin import score
tiles = [a for _, a in load_tile_pixels("results/pixels/{slide}.parquet")]
for i in range(0, len(tiles), 32):
    score(np.stack(tiles[i:i + 32]))
"""

PIXELS = """
import sys; sys.path.insert(0, {repo!r})
from mask_first.pipeline import run_step, write_retained_pixels
run_step({slide!r}, None, write_retained_pixels, "results/retained/{slide}.parquet", {path!r},
         "{tmp}/px.parquet", row_group_tiles=16)
"""


def _time(code: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wd = args.workdir
        if wd is None:
            wd = Path(tmp) / "wd"
            subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "--cores", "2", "-q",
                            "--config", "tiling={mpp: 1.0, level: null, tile_extent: 128, stride: 128, last: keep}"],
                           check=True, capture_output=True)
        import pyarrow.parquet as pq

        slides = pq.read_table(wd / "results/slides.parquet", columns=["slide_id", "path"]).to_pydict()
        print(f"{'slide':<20} {'tiles':>6} {'predict s':>10} {'model s':>9} {'pixels s':>9} "
              f"{'pred/pixels':>12} {'pred/model':>11}")
        for slide, path in zip(slides["slide_id"], slides["path"]):
            n = pq.ParquetFile(wd / f"results/pixels/{slide}.parquet").metadata.num_rows
            fmt = {"repo": str(REPO), "slide": slide, "tmp": tmp, "path": path}
            times: dict[str, list[float]] = {"predict": [], "model": [], "pixels": []}
            for _ in range(args.repeats):
                times["predict"].append(_time(PREDICT.format(**fmt), wd))
                times["model"].append(_time(MODEL_ONLY.format(**fmt), wd))
                times["pixels"].append(_time(PIXELS.format(**fmt), wd))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{slide:<20} {n:>6} {med['predict']:>10.3f} {med['model']:>9.3f} {med['pixels']:>9.3f} "
                  f"{med['predict'] / med['pixels']:>12.2f} {med['predict'] / med['model']:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
