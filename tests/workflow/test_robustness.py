"""Bad input, crashes and reruns: clear one-line errors, no partial files, deterministic results."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SNAKEFILE, planned_jobs, run_workflow, write_sheet
from mask_first.tissue.overlay import read_mask_overlay, write_mask_overlay
from mask_first.assembly.heatmaps import read_heatmap_tiff
from mask_first.synthetic import write_synthetic_slide
from mask_first.tiles import load_tile_pixels

pytestmark = pytest.mark.slow

CONFIG = {
    "tiling": {"mpp": 1.0, "level": None, "tile_extent": 128, "stride": 128, "last": "keep"},
    "qc": {"size": 256},
    "pixels": {"enabled": True, "encoding": "raw", "jpeg_quality": 90, "row_group_tiles": 32, "resample": True},
}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Good and bad slide files shared by the tests (outside every work dir, so paths match)."""
    d = tmp_path_factory.mktemp("slides")
    good = write_synthetic_slide(d / "good.tiff", 2048, 1536, seed=31)
    blank = write_synthetic_slide(d / "blank.tiff", 1024, 1024, kind="blank", seed=32)
    full = write_synthetic_slide(d / "full.tiff", 1024, 768, kind="tissue", seed=33)
    tiny = write_synthetic_slide(d / "tiny.tiff", 200, 150, seed=34, n_levels=1)
    truncated = d / "truncated.tiff"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = d / "notes.svs"
    text.write_text("this is a text file, not a slide\n" * 20)
    nompp = d / "nompp.tif"
    import tifffile

    tifffile.imwrite(nompp, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    bad_mask = d / "bad_mask.tiff"  # a mask of the wrong size for good.tiff (which needs 96 x 128 at 8 µm/px)
    write_mask_overlay(bad_mask, np.full((40, 40), 255, np.uint8), 8.0)
    return {k: v for k, v in locals().items() if k not in ("d", "tmp_path_factory", "tifffile")}


def test_bad_slides_fail_alone_with_one_line_errors_and_good_ones_finish(tmp_path, slides):
    rows = [
        {"slide_id": "good", "path": slides["good"]},
        {"slide_id": "blank", "path": slides["blank"]},
        {"slide_id": "full", "path": slides["full"]},
        {"slide_id": "tiny", "path": slides["tiny"]},
        {"slide_id": "truncated", "path": slides["truncated"]},
        {"slide_id": "text", "path": slides["text"]},
        {"slide_id": "nompp", "path": slides["nompp"]},
        {"slide_id": "badmask", "path": slides["good"], "mask": slides["bad_mask"]},
    ]
    sheet = write_sheet(tmp_path / "slides.tsv", rows)
    proc = run_workflow(tmp_path, CONFIG | {"samples": str(sheet)}, "--keep-going", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    expected = {
        "truncated": "file is truncated",
        "text": "not a readable slide",
        "nompp": "no microns-per-pixel",
        "badmask": "bad_mask.tiff",
    }
    for sid, cause in expected.items():
        lines = [ln for ln in out.splitlines() if f"mask-first: slide {sid}:" in ln]
        assert lines and cause in lines[0], (sid, lines)
        assert not (tmp_path / f"results/retained/{sid}.parquet").exists()
    # every good slide finished: all per-slide targets, with sensible content
    for sid in ("good", "blank", "full", "tiny"):
        for target in ("tiles/{}.parquet", "retained/{}.parquet", "pixels/{}.parquet", "qc/{}.png"):
            assert (tmp_path / "results" / target.format(sid)).exists(), (sid, target)
        assert len(list((tmp_path / "results/masks" / sid).glob("*.tiff"))) == 1, sid
    retained = {sid: pd.read_parquet(tmp_path / f"results/retained/{sid}.parquet")
                for sid in ("good", "blank", "full", "tiny")}
    assert retained["blank"].retained.sum() == 0  # no tissue is a result, not an error
    assert len(list(load_tile_pixels(tmp_path / "results/pixels/blank.parquet"))) == 0
    full = retained["full"]
    inside = (full.x + 128 <= 512) & (full.y + 128 <= 384)  # tiles wholly inside the 512 x 384 level
    assert full.retained[inside].all()
    assert len(retained["tiny"]) == 1  # smaller than one tile: one padded tile
    assert 0 < retained["good"].retained.sum() < len(retained["good"])


def test_blank_slide_is_reported_in_the_summary(tmp_path, slides):
    sheet = write_sheet(tmp_path / "slides.tsv", [{"slide_id": "blank", "path": slides["blank"]}])
    run_workflow(tmp_path, CONFIG | {"samples": str(sheet)})
    summary = pd.read_csv(tmp_path / "results/summary.tsv", sep="\t")
    assert summary.loc[0, "tiles_retained"] == 0 and summary.loc[0, "tissue_area_mm2"] == 0
    assert summary.loc[0, "tiles_total"] == 16


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"slide_id": "a", "path": "missing.svs"}], "slide a: file not found: missing.svs"),
        ([{"slide_id": "a", "path": "{good}"}, {"slide_id": "a", "path": "{good}"}], "duplicate slide_id 'a'"),
        ([{"slide_id": "a", "path": "{good}", "stain": "HE"}], "unknown column(s) stain"),
        ([{"slide_id": "a", "path": "{good}", "mpp": "fast"}], "slide a: mpp must be a number"),
        ([{"slide_id": "a", "path": "{good}", "mpp": "nan"}], "slide a: mpp must be a number"),
        ([{"slide_id": "a/b", "path": "{good}"}], "does not match"),
    ],
)
def test_sample_sheet_errors_stop_at_start_up_with_a_clear_message(tmp_path, slides, rows, message):
    rows = [{k: str(v).format(good=slides["good"]) for k, v in r.items()} for r in rows]
    sheet = write_sheet(tmp_path / "slides.tsv", rows)
    proc = run_workflow(tmp_path, CONFIG | {"samples": str(sheet)}, "-n", check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


def test_sheet_with_bom_crlf_comments_blank_lines_and_short_rows_is_read_like_a_spreadsheet(tmp_path, slides):
    # hand-written TSV: a comment, a blank line, a row without its trailing cells, an empty mpp cell
    sheet = tmp_path / "slides.tsv"
    text = (f"# cohort of two\nslide_id\tpath\tmpp\ttissue_method\n\n"
            f"a\t{slides['good']}\t2.5e-1\totsu\nb\t{slides['good']}\t\n")
    # as a spreadsheet program saves it: byte-order mark, CRLF line ends
    sheet.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    proc = run_workflow(tmp_path, CONFIG | {"samples": str(sheet)}, "-n", "-p")
    text = proc.stdout + proc.stderr
    commands = [ln for ln in text.splitlines() if "step.py tiles" in ln]
    assert len(commands) == 2
    by_slide = {("a" if '"slide": "a"' in c else "b"): c for c in commands}
    assert '"mpp_override": 0.25' in by_slide["a"] and '"mpp_override": null' in by_slide["b"]
    masks = [ln for ln in text.splitlines() if "step.py tissue_mask" in ln]
    assert any('"method": "otsu"' in m and '"slide": "a"' in m for m in masks)
    assert any('"method": "od"' in m and '"slide": "b"' in m for m in masks)


def test_a_row_longer_than_the_header_is_named_by_its_line_in_the_file(tmp_path, slides):
    sheet = tmp_path / "slides.tsv"
    # line 4 of the file, after a comment and a blank line
    sheet.write_text(f"# two slides\nslide_id\tpath\n\nb\t{slides['good']}\textra\n")
    proc = run_workflow(tmp_path, CONFIG | {"samples": str(sheet)}, "-n", check=False)
    assert proc.returncode != 0 and "line 4 has 3 fields, the header 2" in proc.stdout + proc.stderr


def test_invalid_config_value_names_the_key(tmp_path):
    proc = run_workflow(tmp_path, {"filter": {"method": "mask", "tissue_threshold": 2}}, "-n", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "tissue_threshold" in text and "maximum" in text


def test_files_sharing_a_stem_get_distinct_ids(tmp_path, slides):
    for sub in ("scanner1", "scanner2"):
        (tmp_path / sub).mkdir()
        shutil.copy(slides["good"], tmp_path / sub / "case.tiff")
    jobs = planned_jobs(tmp_path, CONFIG | {"samples": "", "slides_glob": str(tmp_path / "scanner*" / "*.tiff")})
    assert jobs["tissue_mask"] == 2 and jobs["pixels"] == 2


def _content_digest(wd) -> dict[str, str]:
    """Checksums of the decoded content of every result (not of file bytes, which carry no meaning)."""
    out = {}
    for p in sorted((wd / "results").rglob("*")):
        rel = p.relative_to(wd).as_posix()
        if "benchmarks" in rel or "logs" in rel or p.is_dir() or rel.endswith("summary.tsv"):
            continue
        if p.name.startswith(".") or p.name.endswith((".tmp", ".part")):
            continue  # an interrupted write's temporary file: never taken for a result
        if p.suffix == ".parquet" and "pixels" in rel:
            h = hashlib.sha256()
            for meta, px in load_tile_pixels(p):
                h.update(repr(sorted(meta.items())).encode())
                h.update(px.tobytes())
            out[rel] = h.hexdigest()
        elif p.suffix == ".parquet":
            df = pd.read_parquet(p)
            out[rel] = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()
        elif "masks" in rel and p.suffix == ".tiff":
            out[rel] = hashlib.sha256(read_mask_overlay(p)[0].tobytes()).hexdigest()
        elif p.suffix == ".h5":  # coordinates and attributes, not HDF5's byte layout
            import h5py

            with h5py.File(p, "r") as f:
                attrs = sorted((k, np.asarray(v).tolist()) for k, v in f["coords"].attrs.items())
                out[rel] = hashlib.sha256(f["coords"][:].tobytes() + repr(attrs).encode()).hexdigest()
        elif "heatmaps" in rel and p.suffix == ".tiff":
            out[rel] = hashlib.sha256(read_heatmap_tiff(p)[0].tobytes()).hexdigest()
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_two_runs_give_identical_results_and_sigkill_midway_loses_nothing(tmp_path, slides):
    big = write_synthetic_slide(tmp_path / "big.tiff", 8192, 8192, seed=35, tissue_fraction=0.3)
    rows = [{"slide_id": "good", "path": str(slides["good"])}, {"slide_id": "big", "path": str(big)},
            {"slide_id": "full", "path": str(slides["full"])}]
    config = CONFIG | {"tiling": CONFIG["tiling"] | {"mpp": 0.5}}

    def setup(name):
        wd = tmp_path / name
        wd.mkdir()
        sheet = write_sheet(wd / "slides.tsv", rows)
        return wd, config | {"samples": str(sheet)}

    ref_dir, ref_cfg = setup("reference")
    run_workflow(ref_dir, ref_cfg)
    again_dir, again_cfg = setup("again")
    run_workflow(again_dir, again_cfg)
    reference = _content_digest(ref_dir)
    assert _content_digest(again_dir) == reference  # determinism

    killed_dir, killed_cfg = setup("killed")
    (killed_dir / "test-config.yaml").write_text(yaml.safe_dump(killed_cfg))
    cmd = ["snakemake", "-s", str(SNAKEFILE), "-d", str(killed_dir), "--configfile",
           str(killed_dir / "test-config.yaml"), "--cores", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    # kill once the run is well under way: some tables written, the pixel reads not all done
    while time.monotonic() < deadline and len(list((killed_dir / "results").glob("retained/*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _content_digest(killed_dir)
    assert len(partial) < len(reference), "the run finished before it could be killed"
    # whatever exists under its final name is complete and equal to the reference
    for rel, digest in partial.items():
        assert digest == reference[rel], rel
    # a SIGKILL leaves Snakemake's directory lock behind: --unlock is the documented way out
    run_workflow(killed_dir, killed_cfg, "--unlock")
    run_workflow(killed_dir, killed_cfg)
    assert _content_digest(killed_dir) == reference
