"""Scale: planning a 10,000-slide cohort, and every step on a 100,000 x 100,000 px slide.

Timing is not asserted here (machines differ); ``benchmarks/bench_scale.py``
measures the dry run. Memory is asserted: every job of the big slide must stay
under 2 GB.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import SNAKEFILE, mask_of, run_workflow
from mask_first.tissue.overlay import read_mask_overlay

pytestmark = pytest.mark.slow

#: rules that run once per slide with the default config (mask filter and pixels on, no predictions)
PER_SLIDE_RULES = ("tissue_mask", "tiles", "filter_tiles", "pixels")
COHORT_RULES = ("slide_table", "summary", "all")


def job_stats(text: str) -> dict[str, int]:
    """The first "Job stats" table of a Snakemake log, total included."""
    assert "Job stats:" in text, text[-3000:]
    jobs = {}
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    return jobs


def test_dry_run_of_10000_slides_plans_every_job(tmp_path):
    from mask_first.synthetic import write_synthetic_slide

    n = 10_000
    slide = write_synthetic_slide(tmp_path / "slide.tiff", 512, 512, mpp=0.5, seed=3)
    # 10,000 distinct files (hard links: one slide's bytes), as a real cohort has
    (tmp_path / "cohort").mkdir()
    for i in range(n):
        (tmp_path / "cohort" / f"s{i:05d}.tiff").hardlink_to(slide)
    sheet = tmp_path / "slides.tsv"
    sheet.write_text("slide_id\tpath\n" + "".join(f"s{i:05d}\t{tmp_path}/cohort/s{i:05d}.tiff\n" for i in range(n)))
    # `--quiet rules` keeps the 40,000 job descriptions out of the log but still prints the stats
    proc = run_workflow(tmp_path / "work", {"samples": str(sheet)}, "-n", "--quiet", "rules", timeout=3600)
    jobs = job_stats(proc.stdout + proc.stderr)
    expected = {rule: n for rule in PER_SLIDE_RULES} | {rule: 1 for rule in COHORT_RULES}
    assert jobs == expected | {"total": sum(expected.values())}
    assert not (tmp_path / "work" / "results").exists()  # a dry run writes nothing


#: runs a command and reports the peak RSS of its largest descendant (kernel accounting, not sampled)
_PEAK_RSS_WRAPPER = """\
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(rc)
"""


def test_100k_slide_runs_every_step_under_2gb(tmp_path):
    from mask_first.synthetic import write_synthetic_slide

    size, mpp, tile = 100_000, 0.5, 256  # default tiling: 256 px at 0.5 µm/px = level 0 here
    slide = write_synthetic_slide(tmp_path / "big.tiff", size, size, mpp=mpp, seed=7, kind="he", tissue_fraction=0.02)
    work = tmp_path / "work"
    work.mkdir()
    (work / "slides.tsv").write_text(f"slide_id\tpath\nbig\t{slide}\n")
    (work / "cfg.yaml").write_text(yaml.safe_dump({"samples": str(work / "slides.tsv")}))
    cmd = ["snakemake", "-s", str(SNAKEFILE), "-d", str(work), "--configfile", str(work / "cfg.yaml"), "--cores", "2"]
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, *cmd], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    res = work / "results"

    # tiles: the brute-force grid count; retained: some, but only the tissue (~2 % of the slide)
    n_grid = math.ceil(size / tile)
    tiles = pd.read_parquet(res / "tiles/big.parquet", columns=["x", "y"])
    assert len(tiles) == n_grid**2
    retained = pd.read_parquet(res / "retained/big.parquet", columns=["x", "y", "fraction_255", "retained"])
    assert len(retained) == n_grid**2
    n_kept = int(retained.retained.sum())
    assert 0 < n_kept < 0.2 * len(retained)
    assert (retained.retained == (retained.fraction_255 >= 0.5)).all()  # both ways: kept iff at the threshold or above

    mask, mmx, mmy, _ = read_mask_overlay(mask_of(work, "big"))
    side = math.ceil(size * mpp / 8.0)  # default mask: 8 µm/px
    assert mask.shape == (side, side) and (mmx, mmy) == (8.0, 8.0)
    # default method od: background, tissue, and the slide's pen mark as ink (dust label allowed)
    assert {0, 255, 64} <= set(np.unique(mask).tolist()) <= {0, 32, 64, 255}
    assert 0 < np.count_nonzero(mask == 255) < 0.2 * mask.size

    assert pq.ParquetFile(res / "pixels/big.parquet").metadata.num_rows == n_kept
    qc = imagecodecs.png_decode((res / "qc/big.png").read_bytes())
    assert max(qc.shape[:2]) == 1024  # default qc.size
    summary = pd.read_csv(res / "summary.tsv", sep="\t")
    assert summary.tiles_total.tolist() == [n_grid**2] and summary.tiles_retained.tolist() == [n_kept]
    assert pd.read_parquet(res / "slides.parquet").extent_x.tolist() == [size]

    # memory: each step logs its process's peak RSS (the kernel's figure; under warm start the
    # step runs in a fork of the warm process, which Snakemake's benchmark files do not sample) ...
    # <rule>/big.log, or <rule>/big/<key>.log for the keyed mask
    peaks = {}
    for p in (res / "logs").rglob("*.log"):
        rel = p.relative_to(res / "logs").parts
        if rel[0] in PER_SLIDE_RULES and rel[1].startswith("big"):
            peaks[rel[0]] = float(re.search(r"done in [\d.]+ s, peak RSS (\d+) MiB", p.read_text()).group(1))
    assert set(peaks) == set(PER_SLIDE_RULES)
    for rule, peak in peaks.items():
        assert peak < 2000, f"{rule}: peak RSS {peak} MiB"
    # ... and the kernel's peak of the largest process of the run (Snakemake, the warm process and
    # its forks included: a reaped child's peak reaches its parent's RUSAGE_CHILDREN)
    peak_kb = int(re.search(r"PEAK_RSS_KB (\d+)", proc.stderr).group(1))
    assert peak_kb < 2000 * 1024, f"a process of the run peaked at {peak_kb / 1024:.0f} MiB"
