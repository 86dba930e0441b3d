"""Config edits rerun exactly what they touch: checked with dry runs and file mtimes of real runs."""

from __future__ import annotations

import pytest

from conftest import SMALL_CONFIG, mask_of, planned_jobs, run_workflow, write_sheet
from mask_first.synthetic import write_synthetic_slide

pytestmark = pytest.mark.slow

BASE = SMALL_CONFIG | {"qc": {"size": 256}}
# both cohort tables carry every slide's status, so they wait for (and follow) every per-slide output
DOWNSTREAM_OF_FILTER = {"filter_tiles", "pixels", "slide_table", "summary", "heatmap", "all"}


def _with(config: dict, section: str, **values) -> dict:
    return config | {section: config[section] | values}


def _mtimes(wd, pattern: str) -> dict[str, int]:
    return {p.relative_to(wd).as_posix(): p.stat().st_mtime_ns for p in sorted(wd.glob(pattern))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("reruns")
    a = write_synthetic_slide(wd / "a.tiff", 2048, 1536, seed=11)
    b = write_synthetic_slide(wd / "b.tiff", 1536, 1024, seed=12)
    sheet = write_sheet(wd / "slides.tsv", [{"slide_id": "a", "path": str(a)}, {"slide_id": "b", "path": str(b)}])
    config = BASE | {"samples": str(sheet)}
    run_workflow(wd, config)
    return wd, config


def test_threshold_edit_reruns_only_filter_and_pixels(workdir):
    wd, base = workdir
    edited = _with(base, "filter", tissue_threshold=0.3)
    assert set(planned_jobs(wd, edited)) == DOWNSTREAM_OF_FILTER
    masks, tiles = _mtimes(wd, "results/masks/**/*.tiff"), _mtimes(wd, "results/tiles/*.parquet")
    retained = _mtimes(wd, "results/retained/*.parquet")
    run_workflow(wd, edited)
    assert _mtimes(wd, "results/masks/**/*.tiff") == masks
    assert _mtimes(wd, "results/tiles/*.parquet") == tiles
    assert all(v != retained[k] for k, v in _mtimes(wd, "results/retained/*.parquet").items())
    assert planned_jobs(wd, edited) == {}
    run_workflow(wd, base)  # back to the base state for the next test


def test_tiling_edit_reruns_tiles_and_below_never_masks(workdir):
    wd, base = workdir
    for edited in (_with(base, "tiling", tile_extent=64, stride=64), _with(base, "tiling", mpp=2.0)):
        jobs = planned_jobs(wd, edited)
        assert {"tiles", "filter_tiles", "pixels"} <= set(jobs)
        assert not {"tissue_mask", "demo_slide"} & set(jobs)
    masks = _mtimes(wd, "results/masks/**/*.tiff")
    run_workflow(wd, _with(base, "tiling", tile_extent=64, stride=64))
    assert _mtimes(wd, "results/masks/**/*.tiff") == masks
    run_workflow(wd, base)


def test_mask_edit_reruns_everything_below_the_mask(workdir):
    wd, base = workdir
    jobs = planned_jobs(wd, _with(base, "mask", mpp=16.0))
    assert jobs["tissue_mask"] == 2
    assert DOWNSTREAM_OF_FILTER <= set(jobs)
    assert "tiles" not in jobs


def test_toggling_back_to_an_earlier_mask_method_reuses_the_cached_mask(workdir):
    wd, base = workdir
    saturation = _with(base, "mask", method="saturation")
    run_workflow(wd, saturation)
    cache = _mtimes(wd, "results/masks/*/*.tiff")
    assert len(cache) == 4  # two slides x two methods, each under its own key
    jobs = planned_jobs(wd, base)
    assert "tissue_mask" not in jobs and jobs["filter_tiles"] == 2  # the filter reads the otsu mask again
    run_workflow(wd, base)
    assert _mtimes(wd, "results/masks/*/*.tiff") == cache
    # and forth again: still nothing to recompute for masks
    assert "tissue_mask" not in planned_jobs(wd, saturation)
    # the published mask is the otsu one again
    from mask_first.tissue.overlay import read_mask_overlay

    assert read_mask_overlay(mask_of(wd, "a"))[3]["method"] == "otsu"


def test_disabling_pixels_removes_only_that_target(workdir):
    wd, base = workdir
    assert set(planned_jobs(wd, _with(base, "pixels", enabled=False))) == {"slide_table", "summary", "all"}


def test_flag_threshold_edit_reruns_only_the_summary(workdir):
    wd, base = workdir
    for key, value in (("border_fraction", 0.5), ("area_outlier_z", 2.0), ("ink_area_mm2", 10.0)):
        assert set(planned_jobs(wd, _with(base, "qc", **{key: value}))) == {"summary", "all"}, key
