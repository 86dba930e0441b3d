"""Scheduling: a slide's jobs carry its size on disk as priority, so the largest slide runs first.

Without it Snakemake ran the per-slide jobs breadth first and the resection's pixel
job (the longest job of a cohort) started last, alone on an idle machine.
"""

from __future__ import annotations

import re

import pytest

from conftest import run_workflow, write_sheet
from mask_first.synthetic import write_synthetic_slide

pytestmark = pytest.mark.slow

PER_SLIDE_RULES = {"tissue_mask", "tiles", "filter_tiles", "pixels"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("sched")
    slides = {
        # listed first and sorted first: the default order would start with them
        "a-small": write_synthetic_slide(d / "a-small.tiff", 768, 512, mpp=0.5, seed=11),
        "b-small": write_synthetic_slide(d / "b-small.tiff", 768, 512, mpp=0.5, seed=12),
        "z-big": write_synthetic_slide(d / "z-big.tiff", 6000, 4500, mpp=0.5, seed=13),
    }
    assert slides["z-big"].stat().st_size >= 3 * 2**20 > slides["a-small"].stat().st_size
    sheet = write_sheet(d / "slides.tsv", [{"slide_id": s, "path": str(p)} for s, p in slides.items()])
    return d, slides, {"samples": str(sheet), "pixels": {"enabled": True}}


def test_dry_run_gives_each_slide_job_its_size_in_mb_as_priority(cohort):
    d, slides, config = cohort
    proc = run_workflow(d / "dry", config, "-n")
    seen = {}
    # group jobs (the `slide` group) list their rules indented
    for block in re.split(r"\n\s*(?:local)?rule ", proc.stdout + proc.stderr)[1:]:
        rule = block.split(":", 1)[0]
        if rule not in PER_SLIDE_RULES:
            continue
        slide = re.search(r"wildcards: slide=([\w.-]+)", block).group(1)
        m = re.search(r"\n\s+priority: (\d+)", block)
        seen[rule, slide] = int(m.group(1)) if m else 0  # Snakemake prints no line for priority 0
    assert set(seen) == {(r, s) for r in PER_SLIDE_RULES for s in slides}
    for (rule, slide), priority in seen.items():
        assert priority == slides[slide].stat().st_size // 2**20, (rule, slide)
    assert seen["pixels", "z-big"] >= 3


def test_one_core_runs_every_job_of_the_largest_slide_before_the_small_ones(cohort):
    d, slides, config = cohort
    work = d / "run"
    run_workflow(work, config, "--cores", "1")
    # one core: jobs run one at a time, so the order their benchmark files were
    # finished in is the order they ran in
    ends = {}
    for tsv in (work / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(work / "results" / "benchmarks").parts[0]
        if rule in PER_SLIDE_RULES:
            slide = tsv.parent.name if rule == "tissue_mask" else tsv.stem
            ends[rule, slide] = tsv.stat().st_mtime_ns
    assert len(ends) == len(PER_SLIDE_RULES) * len(slides)
    big_last = max(t for (r, s), t in ends.items() if s == "z-big")
    small_first = min(t for (r, s), t in ends.items() if s != "z-big")
    assert big_last < small_first, sorted(ends, key=ends.get)
