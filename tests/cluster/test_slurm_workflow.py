"""The real mask-first workflow through profiles/slurm on a real single-node SLURM cluster.

Needs root and Debian's slurm-wlm + munge (``bash .ci/install-slurm.sh``);
skips with the reason otherwise. The cluster is started and stopped by
tests/slurm_cluster.py.
"""

from __future__ import annotations

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
    # every output, with content checked against a computation of its own
    import imagecodecs
    import numpy as np
    import tifffile

    from mask_first.assembly.heatmaps import read_heatmap_tiff

    threshold = yaml.safe_load((REPO / "config/config.yaml").read_text())["filter"]["tissue_threshold"]
    summary = pd.read_csv(wd / "results/summary.tsv", sep="\t").set_index("slide_id")
    assert list(summary.index) == ["a", "b"]
    for sid in slides:
        # 2048 x 1536 px at 0.5 µm/px, tiled at 1 µm/px: level 1, 1024 x 768 px, 8 x 6 tiles of 128 px
        tiles = pd.read_parquet(wd / f"results/tiles/{sid}.parquet")
        assert sorted(zip(tiles.y, tiles.x)) == [(j * 128, i * 128) for j in range(6) for i in range(8)]
        assert (tiles.level == 1).all() and (tiles.tile_extent_x == 128).all()
        ret = pd.read_parquet(wd / f"results/retained/{sid}.parquet")
        mask, mx, my, _ = read_mask_overlay(mask_of(wd, sid))
        assert (mx, my) == (8.0, 8.0) and mask.shape == (1536 // 16, 2048 // 16)
        # 128 px at 1 µm/px = 16 mask pixels of 8 µm: brute-force coverage of every tile
        for t in ret.itertuples():
            block = mask[t.y // 8 : t.y // 8 + 16, t.x // 8 : t.x // 8 + 16] == 255
            assert t.fraction_255 == pytest.approx(block.sum() / 256, abs=1e-12)
        assert (ret.retained == (ret.fraction_255 >= threshold)).all() and 0 < ret.retained.sum() < len(ret)
        # pixels: exactly the retained tiles, each equal to tifffile's decode of level 1 at (x, y)
        stored = list(load_tile_pixels(wd / f"results/pixels/{sid}.parquet"))
        assert [(r["x"], r["y"]) for r, _ in stored] == list(zip(ret.x[ret.retained], ret.y[ret.retained]))
        with tifffile.TiffFile(slides[sid]) as tf:
            page = np.asarray(tf.series[0].levels[1].asarray())[..., :3]
        for meta, px in stored:
            ref = page[meta["y"] : meta["y"] + 128, meta["x"] : meta["x"] + 128]
            assert px.shape == ref.shape and np.abs(px.astype(np.int16) - ref).max() <= 2
        # heatmap: one 128 µm cell per tile holding that tile's fraction
        heat, (hx, hy), _ = read_heatmap_tiff(wd / f"results/heatmaps/{sid}.tiff")
        assert heat.shape == (1, 6, 8) and (hx, hy) == pytest.approx((128.0, 128.0))
        np.testing.assert_allclose(heat[0, ret.y // 128, ret.x // 128], ret.fraction_255, rtol=1e-6)
        # QC: 256 x 192 px picture, 32 px per tile; the green tint marks exactly the retained tiles
        qc = imagecodecs.png_decode((wd / f"results/qc/{sid}.png").read_bytes()).astype(np.int16)
        assert qc.shape == (192, 256, 3)
        green = (qc[..., 1] > qc[..., 0] + 40) & (qc[..., 1] > qc[..., 2] + 20)
        kept = np.zeros((6, 8), bool)
        kept[ret.y[ret.retained] // 128, ret.x[ret.retained] // 128] = True
        np.testing.assert_array_equal(green.reshape(6, 32, 8, 32).any(axis=(1, 3)), kept)
        # summary: the counts of the retained table, the tissue area of the mask
        row = summary.loc[sid]
        assert (row.tiles_total, row.tiles_retained) == (48, int(ret.retained.sum()))
        assert row.tissue_area_mm2 == pytest.approx(np.count_nonzero(mask == 255) * 64 / 1e6, rel=1e-6)
