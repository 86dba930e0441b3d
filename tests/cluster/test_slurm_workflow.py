"""The real mask-first workflow through profiles/slurm on a real single-node SLURM cluster.

Needs root and Debian's slurm-wlm + munge (``bash .ci/install-slurm.sh``);
skips with the reason otherwise. The cluster is started and stopped by
tests/slurm_cluster.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, mask_of, write_sheet  # noqa: E402
from slurm_cluster import profile_overrides_for, run_snakemake_with_profile, require_slurm, slurm_cluster  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_real_workflow_runs_on_slurm_and_second_run_has_nothing_to_do(tmp_path: Path) -> None:
    require_slurm()
    from mask_first.tissue.overlay import read_mask_overlay
    from mask_first.synthetic import write_synthetic_slide
    from mask_first.tiles import load_tile_pixels

    wd = tmp_path / "run"
    wd.mkdir()
    slides = {sid: write_synthetic_slide(wd / f"{sid}.tiff", 2048, 1536, seed=seed) for sid, seed in (("a", 21), ("b", 22))}
    sheet = write_sheet(wd / "slides.tsv", [{"slide_id": s, "path": str(p)} for s, p in slides.items()])
    cfg = wd / "cluster-config.yaml"
    cfg.write_text(yaml.safe_dump({
        "samples": str(sheet),
        "tiling": {"mpp": 1.0, "level": None, "tile_extent": 128, "stride": 128, "last": "keep"},
        "qc": {"size": 256},
        "heatmap": {"predictions": "results/retained/{slide}.parquet"},
    }))
    with slurm_cluster(tmp_path / "cluster") as cluster:
        args, env = profile_overrides_for(cluster)
        common = ["--snakefile", str(REPO / "Snakefile"), "--configfile", str(cfg)]
        first = run_snakemake_with_profile(wd, [*common, *args], env=env, timeout_s=900,
                                           log_path=tmp_path / "first.log")
        assert first.returncode == 0, first.stdout[-6000:]
        again = run_snakemake_with_profile(wd, [*common, *args, "-n"], env=env, timeout_s=300)
        assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-3000:]
        records = cluster.jobcomp_records()
    # jobs really ran as SLURM jobs, and the per-slide rules were grouped into fewer jobs
    job_ids = {r["JobId"] for r in records if r.get("JobState") == "COMPLETED"}
    assert job_ids, "no completed SLURM job in slurmctld's job-completion log"
    assert "group_slide" in first.stdout or any("group" in r.get("Name", "") for r in records)
    assert len(job_ids) < 10  # 2 slides x 5 per-slide rules would be 10 jobs without grouping
    # every output, with content checked
    for sid in slides:
        tiles = pd.read_parquet(wd / f"results/tiles/{sid}.parquet")
        assert len(tiles) == math.ceil(1024 / 128) * math.ceil(768 / 128)
        ret = pd.read_parquet(wd / f"results/retained/{sid}.parquet")
        mask, mx, my, _ = read_mask_overlay(mask_of(wd, sid))
        # 128 px at 1 µm/px = 16 mask pixels of 8 µm: brute-force coverage of a few tiles
        for t in ret.iloc[::7].itertuples():
            block = mask[t.y // 8 : t.y // 8 + 16, t.x // 8 : t.x // 8 + 16] == 255
            assert t.fraction_255 == pytest.approx(block.sum() / 256, abs=1e-12)
        kept = list(zip(ret.x[ret.retained], ret.y[ret.retained]))
        assert [(r["x"], r["y"]) for r, _ in load_tile_pixels(wd / f"results/pixels/{sid}.parquet")] == kept
        assert (wd / f"results/qc/{sid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (wd / f"results/heatmaps/{sid}.tiff").stat().st_size > 0
    summary = pd.read_csv(wd / "results/summary.tsv", sep="\t").set_index("slide_id")
    assert list(summary.index) == ["a", "b"]
    assert summary.loc["a", "tiles_total"] == 48
