"""Slide status, failure files and QC flags against hand-worked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mask_first.cohort import (
    area_outliers,
    failure_path,
    ink_label_values,
    mask_stats,
    qc_flags,
    read_failure,
    slide_status,
)
from mask_first.pipeline import run_step


def test_failure_path_mirrors_the_log():
    assert failure_path("results/logs/tiles/a.log").as_posix() == "results/status/tiles/a.failed.json"
    assert (failure_path("results/logs/tissue_mask/a/0123456789abcdef.log").as_posix()
            == "results/status/tissue_mask/a/0123456789abcdef.failed.json")
    assert failure_path("/x/logs/run/logs/pixels/b.log").as_posix() == "/x/logs/run/status/pixels/b.failed.json"
    assert failure_path("elsewhere/b.log").as_posix() == "elsewhere/b.failed.json"


def _fail(path):
    raise ValueError(f"{path}: no microns-per-pixel (mpp) in the slide metadata\nsecond line")


def _ok(out):
    with open(out, "w") as f:
        f.write("ok")
    return 7


def test_run_step_records_a_failure_and_removes_it_when_the_step_succeeds(tmp_path):
    log = tmp_path / "results/logs/tiles/s1.log"
    with pytest.raises(SystemExit) as exc:
        run_step("s1", str(log), _fail, "s1.svs")
    assert exc.value.code == 1
    rec = json.loads(failure_path(log).read_text())
    assert rec["slide_id"] == "s1" and rec["step"] == "tiles" and rec["log"] == str(log)
    assert rec["error"] == "s1.svs: no microns-per-pixel (mpp) in the slide metadata"  # first line only
    assert not list(failure_path(log).parent.glob(".*"))  # atomic: no temporary left
    assert run_step("s1", str(log), _ok, tmp_path / "out.txt") == 7
    assert not failure_path(log).exists()


def test_run_step_records_unexpected_errors_and_keeps_their_traceback(tmp_path):
    log = tmp_path / "results/logs/pixels/s2.log"

    def boom():
        raise RuntimeError("decoder exploded")

    with pytest.raises(RuntimeError):
        run_step("s2", str(log), boom)
    assert read_failure(failure_path(log))["error"] == "RuntimeError: decoder exploded"


def test_cohort_steps_record_no_failure_file(tmp_path):
    log = tmp_path / "results/logs/summary.log"
    with pytest.raises(SystemExit):
        run_step(None, str(log), _fail, "x")
    assert not (tmp_path / "results/status").exists()


def test_slide_status_first_failure_in_workflow_order_then_missing_outputs(tmp_path):
    out = tmp_path / "out.parquet"
    f1, f2 = tmp_path / "status/tissue_mask/a.failed.json", tmp_path / "status/tiles/a.failed.json"
    assert slide_status([f1, f2], [out]) == {
        "status": "incomplete", "failed_step": None, "log": None,
        "error": f"not run or interrupted (no failure recorded): {out} missing"}
    out.write_text("x")
    assert slide_status([f1, f2], [out])["status"] == "done"
    f2.parent.mkdir(parents=True)
    f2.write_text(json.dumps({"step": "tiles", "error": "b.svs: file is truncated", "log": "l"}))
    assert slide_status([f1, f2], [out]) == {"status": "failed", "failed_step": "tiles",
                                             "error": "b.svs: file is truncated", "log": "l"}
    f1.parent.mkdir(parents=True)
    f1.write_text("{trunc")  # a damaged record still says the step failed
    st = slide_status([f1, f2], [out])
    assert st["status"] == "failed" and st["failed_step"] == "tissue_mask" and "unreadable" in st["error"]


def test_mask_stats_hand_worked():
    # 10 x 10 mask at 8 x 4 µm/px: tissue (255) block rows 2-5, cols 0-2 touches the left edge;
    # ink (3) 2 x 2 inside; 0 elsewhere. Outer ring: 10 + 10 + 8 + 8 = 36 pixels, tissue on 4 of them.
    m = np.zeros((10, 10), np.uint8)
    m[2:6, 0:3] = 255
    m[7:9, 7:9] = 3
    s = mask_stats(m, (8.0, 4.0), 255, ink=[3])
    px = 8.0 * 4.0 / 1e6
    assert s["tissue_area_mm2"] == pytest.approx(12 * px)
    assert s["border_tissue_fraction"] == pytest.approx(4 / 36)
    assert s["ink_area_mm2"] == pytest.approx(4 * px)
    assert s["label_area_mm2"] == pytest.approx({"0": 84 * px, "3": 4 * px, "255": 12 * px})
    assert mask_stats(m, (8.0, 4.0), 255)["ink_area_mm2"] is None  # no ink label: no ink figure
    inner = np.zeros((10, 10), np.uint8)
    inner[1:9, 1:9] = 255  # one pixel clear of every edge
    assert mask_stats(inner, (1.0, 1.0), 255)["border_tissue_fraction"] == 0.0
    assert mask_stats(np.full((1, 5), 255, np.uint8), (1.0, 1.0), 255)["border_tissue_fraction"] == 1.0


@pytest.mark.parametrize("prov, expected", [
    ({}, []),
    ({"labels": {"0": "background", "255": "tissue", "128": "ink"}}, [128]),
    ({"labels": {"background": 0, "tissue": 255, "pen ink": 100, "marker": 101}}, [100, 101]),
    ({"label_table": [{"value": 0, "name": "background"}, {"value": 64, "name": "Ink"}]}, [64]),
    ({"labels": "0 background, 255 tissue"}, []),
])
def test_ink_label_values_from_the_label_table(prov, expected):
    assert ink_label_values(prov) == expected


def test_area_outliers_hand_worked():
    areas = [1.0, 1.1, 0.9, 1.05, 0.95, 100.0]
    # log10: 0, .0414, -.0458, .0212, -.0223, 2 -> median .0106; |dev| sorted .0106 .0117 .0308 .0329 .0564 1.989
    # MAD = (.0308 + .0329) / 2 = .0318; z(100) = .6745 * 1.989 / .0318 = 42; z(0.9) = .6745 * .0564 / .0318 = 1.2
    assert area_outliers(areas, 3.5) == [False] * 5 + [True]
    assert area_outliers(areas, 50.0) == [False] * 6
    # slides without tissue (0, None, NaN) take no part; fewer than 5 with tissue: no verdict
    assert area_outliers([1.0, 1.0, 100.0, 0.0, None, math.nan], 3.5) == [False] * 6
    # MAD 0 (most areas equal): the mean absolute deviation stands in
    # log dev: 0,0,0,0,0,1 -> meanAD 1/6; z(10) = 1 / (1.253314 / 6) = 4.79 > 3.5
    assert area_outliers([1.0] * 5 + [10.0], 3.5) == [False] * 5 + [True]
    assert area_outliers([1.0] * 6, 3.5) == [False] * 6


def test_qc_flags_in_words():
    kw = {"outlier": False, "border_fraction": 0.01, "ink_area_mm2": 1.0}
    clean = {"status": "done", "tiles_retained": 5, "tissue_area_mm2": 2.0, "border_tissue_fraction": 0.0,
             "ink_area_mm2": None, "tiles_skipped": 0, "mpp_override": None}
    assert qc_flags(clean, **kw) == []
    assert qc_flags(clean | {"tissue_area_mm2": 0.0, "tiles_retained": 0}, **kw) == ["no tissue found",
                                                                                      "nothing retained"]
    assert qc_flags(clean | {"tiles_retained": 0}, **kw) == ["nothing retained"]
    assert qc_flags(clean | {"border_tissue_fraction": 0.01}, **kw) == []  # at the threshold: not above
    assert qc_flags(clean | {"border_tissue_fraction": 0.02}, **kw) == ["tissue touches the slide border"]
    assert qc_flags(clean, **kw | {"outlier": True}) == ["tissue area outlier"]
    assert qc_flags(clean | {"ink_area_mm2": 1.5}, **kw) == ["ink area above threshold"]
    assert qc_flags(clean | {"ink_area_mm2": 0.5}, **kw) == []
    assert qc_flags(clean | {"tiles_skipped": 2}, **kw) == ["corrupt tiles skipped"]
    assert qc_flags(clean | {"mpp_override": 0.25}, **kw) == ["mpp from override"]
    assert qc_flags(clean | {"mpp_override": math.nan}, **kw) == []
    failed = {"status": "failed", "tiles_retained": None, "tissue_area_mm2": None, "mpp_override": 0.5}
    assert qc_flags(failed, **kw) == ["failed", "mpp from override"]
    # pixel_std filter: no mask, no tissue area, so no "no tissue" verdict from the area
    assert qc_flags(clean | {"tissue_area_mm2": math.nan, "tiles_retained": 0}, **kw) == ["nothing retained"]
