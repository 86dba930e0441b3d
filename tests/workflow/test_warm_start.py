"""Warm start in a real run: every per-slide job is a fork of the warm process, and nothing else changes.

mask_first/forkserver.py; the unit tests (tests/unit/test_forkserver.py) cover
signals, refusals and fallbacks job by job.
"""

from __future__ import annotations

import re
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from conftest import run_workflow, write_sheet
from mask_first.synthetic import write_synthetic_slide

pytestmark = pytest.mark.slow

PER_SLIDE_RULES = ("tissue_mask", "tiles", "filter_tiles", "pixels")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("warm")
    slides = {f"s{i}": write_synthetic_slide(d / f"s{i}.tiff", 2048, 1536, mpp=0.5, seed=30 + i) for i in range(3)}
    sheet = write_sheet(d / "slides.tsv", [{"slide_id": s, "path": str(p)} for s, p in slides.items()])
    config = {"samples": str(sheet), "pixels": {"enabled": True}}
    warm = run_workflow(d / "warm", {**config, "warm_start": True})
    cold = run_workflow(d / "cold", {**config, "warm_start": False})
    return d, slides, warm, cold


def test_every_per_slide_job_ran_as_a_fork_of_the_warm_process_and_exited_0(runs):
    d, slides, _, _ = runs
    log = (d / "warm" / "results" / "logs" / "warm_start.log").read_text()
    assert "ready" in log
    jobs: dict[str, list[str]] = {}
    for pid, line in re.findall(r"^job (\d+): (.*)$", log, re.M):
        jobs.setdefault(pid, []).append(line)
    started = sorted(lines[0] for lines in jobs.values())
    assert started == sorted(f"{r} {s}" for r in PER_SLIDE_RULES for s in slides)
    assert all(lines[1:] == ["exit 0"] for lines in jobs.values()), jobs
    # the cold run started no server
    assert not (d / "cold" / "results" / "logs" / "warm_start.log").exists()
    # and the server is gone once the run is over: its address no longer answers
    address = re.search(r"warm start: (\S+) ready", log).group(1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, pytest.raises(ConnectionRefusedError):
        s.connect("\0" + address)


def test_warm_and_cold_runs_write_the_same_tables_masks_and_pixels(runs):
    d, slides, _, _ = runs
    for s in slides:
        for table in ("slides", "tiles", "retained", "pixels"):
            a = pq.read_table(d / "warm" / "results" / table / f"{s}.parquet")
            b = pq.read_table(d / "cold" / "results" / table / f"{s}.parquet")
            assert a.equals(b), (table, s)
        (ma,), (mb,) = (list((d / run / "results" / "masks" / s).glob("*.tiff")) for run in ("warm", "cold"))
        assert ma.name == mb.name
        assert np.array_equal(tifffile.imread(ma), tifffile.imread(mb))
        # the retained tiles are the slide's tissue tiles: some, not all
        kept = pq.read_table(d / "warm" / "results" / "retained" / f"{s}.parquet").column("retained").to_numpy()
        assert 0 < kept.sum() < kept.size
    warm, cold = (_summary(d / run / "results" / "summary.tsv") for run in ("warm", "cold"))
    assert warm == cold and len(warm) == len(slides)


def _summary(path):
    """The cohort summary's rows without the per-step ``seconds_*`` (those differ by design)."""
    header, *rows = (line.split("\t") for line in path.read_text().splitlines())
    keep = [i for i, c in enumerate(header) if not c.startswith("seconds_")]
    assert len(keep) < len(header)
    return [[r[i] for i in keep] for r in rows]
