"""A cohort of good, blank and broken slides: the cohort outputs list every slide with its status.

The bar of issue 12: run with --keep-going, the summary and the slide table
exist and list every slide, the broken one with its cause, the blank one
flagged for no tissue; the run exits non-zero; after the broken file is
replaced by a good slide the rerun succeeds and the summary shows it done.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

from browser import Cards, dump_dom
from conftest import mask_of, run_workflow, write_sheet
from mask_first.slides import SlideError, open_slide
from mask_first.synthetic import write_synthetic_slide
from mask_first.tissue.overlay import read_mask_overlay

pytestmark = pytest.mark.slow

CONFIG = {"tiling": {"mpp": 1.0, "tile_extent": 128, "stride": 128}, "qc": {"size": 256}}


def _cause(path) -> str:
    """The reader's own one-line error for a broken file (what the summary must carry)."""
    try:
        with open_slide(path):
            pass
    except SlideError as exc:
        return str(exc)
    raise AssertionError(f"{path} opened")


def test_cohort_tables_list_every_slide_and_a_rerun_clears_the_failure(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    good = write_synthetic_slide(d / "good.tiff", 2048, 1536, seed=41)
    write_synthetic_slide(d / "blank.tiff", 1024, 1024, kind="blank", seed=42)
    spare = write_synthetic_slide(tmp_path / "spare.tiff", 1536, 1024, seed=43)
    broken = d / "broken.tiff"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    ids = ["good", "broken", "blank"]
    sheet = write_sheet(tmp_path / "slides.tsv", [{"slide_id": s, "path": d / f"{s}.tiff"} for s in ids])
    wd = tmp_path / "work"

    proc = run_workflow(wd, CONFIG | {"samples": str(sheet)}, "--keep-going", check=False)
    assert proc.returncode != 0
    res = wd / "results"
    summary = pd.read_csv(res / "summary.tsv", sep="\t", keep_default_na=False, na_values=[""])
    table = pd.read_parquet(res / "slides.parquet")
    assert summary.slide_id.tolist() == ids and table.slide_id.tolist() == ids  # every slide, sheet order
    s, t = summary.set_index("slide_id"), table.set_index("slide_id")
    cause = _cause(broken)
    assert "truncated" in cause
    for frame in (s, t):
        assert frame.loc["broken", "status"] == "failed"
        assert frame.loc["broken", "failed_step"] in ("tissue_mask", "tiles")  # both read the file first
        assert frame.loc["broken", "error"] == cause
        assert frame.loc["good", "status"] == frame.loc["blank", "status"] == "done"
    assert s.loc["broken", "flags"] == "failed"
    assert t.loc["broken", "path"] == str(broken) and math.isnan(t.loc["broken", "extent_x"])
    assert t.loc["good", "extent_x"] == 1024  # level 1 of 2048 px at 0.5 µm/px is 1 µm/px
    # the blank slide: flagged, and its mask has indeed no tissue
    assert s.loc["blank", "flags"] == "no tissue found; nothing retained"
    blank_mask = read_mask_overlay(mask_of(wd, "blank"))[0]
    assert not (blank_mask == 255).any() and s.loc["blank", "tiles_total"] == 16  # 512 x 512 px / 128²
    # the good slide's figures against its own mask and retained table
    mask, mmx, mmy, _ = read_mask_overlay(mask_of(wd, "good"))
    assert s.loc["good", "tissue_area_mm2"] == pytest.approx(np.count_nonzero(mask == 255) * mmx * mmy / 1e6,
                                                            rel=1e-5)
    retained = pd.read_parquet(res / "retained/good.parquet")
    assert s.loc["good", "tiles_total"] == 48 and s.loc["good", "tiles_retained"] == retained.retained.sum()
    assert s.loc["good", "tiles_retained"] == (retained.fraction_255 >= 0.5).sum()
    # ink: the mask's ink label (its label table names it) times the pixel area; flagged above qc.ink_area_mm2
    prov = read_mask_overlay(mask_of(wd, "good"))[3]
    ink_values = [int(v) for v, name in prov["labels"].items() if name == "ink"]
    ink = np.isin(mask, ink_values).sum() * mmx * mmy / 1e6
    assert s.loc["good", "ink_area_mm2"] == pytest.approx(ink, rel=1e-5, abs=1e-9)
    good_flags = s.loc["good", "flags"] if isinstance(s.loc["good", "flags"], str) else ""
    assert ("ink area above threshold" in good_flags.split("; ")) == (ink > 1.0)
    assert "no tissue found" not in good_flags
    ring = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    assert s.loc["good", "border_tissue_fraction"] == pytest.approx(np.mean(ring == 255), abs=1e-6)
    # the failure is on disk where the README says, and in the log the failure file names
    rec = [json.loads(p.read_text()) for p in (res / "status").rglob("*.failed.json")]
    assert {r["slide_id"] for r in rec} == {"broken"} and all(r["error"] == cause for r in rec)
    assert all(cause in (wd / r["log"]).read_text() for r in rec)
    assert "1 of 3 slides not done" in proc.stderr

    # the contact sheet lists all three, the broken one with its cause, in a real browser
    try:
        cards = {c["data-slide"]: c for c in Cards(dump_dom(res / "contact_sheet.html", tmp=tmp_path)).cards}
    except pytest.skip.Exception as exc:  # the bar above holds without a browser; say what was not checked
        warnings.warn(f"contact sheet not opened in a browser: {exc}")
        cards = None
    if cards is not None:
        assert set(cards) == set(ids)
        assert cards["good"]["data-rendered"] == cards["blank"]["data-rendered"] == "image"
        assert cards["broken"]["data-rendered"] == "text" and cause in cards["broken"]["text"]
        assert "no tissue found" in cards["blank"]["data-flags"]

    # the broken file replaced by a good slide: the rerun succeeds and the slide is done
    shutil.copy(spare, broken)
    proc = run_workflow(wd, CONFIG | {"samples": str(sheet)}, "--keep-going")
    summary = pd.read_csv(res / "summary.tsv", sep="\t", keep_default_na=False, na_values=[""])
    s = summary.set_index("slide_id")
    assert summary.slide_id.tolist() == ids and (summary.status == "done").all()
    assert summary.failed_step.isna().all() and summary.error.isna().all()
    assert not list((res / "status").rglob("*.failed.json"))  # no stale failure
    assert (pd.read_parquet(res / "slides.parquet").status == "done").all()
    with tifffile.TiffFile(spare) as tf:
        w, h = tf.pages[0].imagewidth, tf.pages[0].imagelength
    assert s.loc["broken", "tiles_total"] == math.ceil(w / 2 / 128) * math.ceil(h / 2 / 128)  # level 1
    assert s.loc["broken", "tiles_retained"] == pd.read_parquet(res / "retained/broken.parquet").retained.sum()
    assert pq.ParquetFile(res / "pixels/broken.parquet").metadata.num_rows == s.loc["broken", "tiles_retained"]
    assert s.loc["blank", "flags"] == "no tissue found; nothing retained"


def test_corrupt_tiles_fail_the_slide_by_default_and_are_skipped_and_named_with_skip(tmp_path):
    path = write_synthetic_slide(tmp_path / "dented.tiff", 1024, 1024, kind="tissue", seed=44)
    with tifffile.TiffFile(path) as tf:  # level 1 (1 µm/px) is what the 128-px tiles read
        page = tf.series[0].levels[1].keyframe
        off, cnt = page.dataoffsets[0], page.databytecounts[0]  # stored tile (0, 0), 256 px
        stored = page.tilewidth
    data = bytearray(path.read_bytes())
    data[off: off + cnt] = bytes(cnt)
    path.write_bytes(bytes(data))
    sheet = write_sheet(tmp_path / "slides.tsv", [{"slide_id": "dented", "path": path}])
    with open_slide(path) as s:
        try:
            s.read_region(1, 0, 0, 128, 128)
        except SlideError as exc:
            cause = str(exc)
    assert "corrupt image data in level 1" in cause

    wd = tmp_path / "fail"
    proc = run_workflow(wd, CONFIG | {"samples": str(sheet)}, "--keep-going", check=False)
    assert proc.returncode != 0
    row = pd.read_csv(wd / "results/summary.tsv", sep="\t").iloc[0]
    assert (row.status, row.failed_step, row.error) == ("failed", "pixels", cause)

    wd = tmp_path / "skip"
    run_workflow(wd, CONFIG | {"samples": str(sheet), "pixels": {"corrupt_tiles": "skip"}})
    row = pd.read_csv(wd / "results/summary.tsv", sep="\t").iloc[0]
    retained = pd.read_parquet(wd / "results/retained/dented.parquet")
    kept = retained[retained.retained]
    bad = kept[(kept.x < stored) & (kept.y < stored)]  # the retained tiles inside the zeroed stored tile
    assert len(bad) == (stored // 128) ** 2
    # a slide covered edge to edge by tissue: its tissue touches the border as well
    assert row.status == "done" and row["flags"] == "tissue touches the slide border; corrupt tiles skipped"
    assert row.tiles_skipped == len(bad)
    assert row.skipped_tiles == " ".join(f"{t.tile_id}@{t.x},{t.y}" for t in bad.itertuples())
    pixels = pd.read_parquet(wd / "results/pixels/dented.parquet", columns=["tile_id"])
    assert sorted(pixels.tile_id) == sorted(set(kept.tile_id) - set(bad.tile_id))
    log = (wd / "results/logs/pixels/dented.log").read_text()
    assert f"{len(bad)} corrupt tile(s) skipped" in log and f"tile {bad.tile_id.iloc[0]} at x=0 y=0" in log
