"""The loop closed: a user's model on the retained tiles, assembled into heatmaps, real snakemake runs.

The bar: every heatmap cell under a retained tile holds the model's value computed
independently from OpenSlide's pixels of that tile (abs. diff < 0.01).
"""

from __future__ import annotations

import copy
import re
import shlex

import numpy as np
import openslide
import pytest

from conftest import REPO, SMALL_CONFIG, area_average, planned_jobs, run_workflow, write_sheet
from mask_first.assembly.heatmaps import read_heatmap_tiff
from mask_first.io import read_table
from mask_first.predict import read_predictions

pytestmark = pytest.mark.slow

SLIDE = "cmu"

#: the user's model, written into the working directory: (B, 1) scores
USER_MODEL = """
import numpy as np

def score(tiles):
    # share of dark-ish pixels plus the mean blue level: nonlinear, in [0, 2]
    grey = tiles.astype(np.float32).mean(axis=-1)
    dark = (grey < 200).mean(axis=(1, 2))
    blue = tiles[..., 2].mean(axis=(1, 2)) / 255
    return np.stack([dark + blue], axis=1)
"""


def _reference_score(rgb: np.ndarray) -> float:
    """The same score in float64 on one tile, written separately."""
    grey = rgb.astype(np.float64).sum(axis=-1) / 3
    return float(np.count_nonzero(grey < 200) / grey.size + rgb[..., 2].astype(np.float64).mean() / 255)


def _config(**predict):
    cfg = copy.deepcopy(SMALL_CONFIG)
    cfg["heatmap"]["predictions"] = ""
    cfg["predict"] = {
        "model": "usermodel:score", "onnx": "", "providers": [], "batch_size": 16, "columns": ["score"],
        "edge_clipping": 0, "map_dtype": "float16",
        "input": {"layout": "nchw", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
    } | predict
    return cfg


def _openslide_tile(osr: openslide.OpenSlide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """RGB of a tile as OpenSlide reads it, composited on white (as the pipeline's reads are)."""
    ds = osr.level_downsamples[level]
    rgba = np.asarray(osr.read_region((round(x * ds), round(y * ds)), level, (w, h)), np.float64)
    a = rgba[..., 3:] / 255
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def assert_heatmap_holds_the_model_values(wd, slide_path, delivered: int | None = None):
    """``delivered``: the model saw tiles of this many pixels (tiling.tile_extent at tiling.mpp,
    area-averaged from the level region, from the pixel table or the slide); None: the level's native pixels."""
    info = read_table(wd / f"results/slides/{SLIDE}.parquet").to_pylist()[0]
    ret = read_table(wd / f"results/retained/{SLIDE}.parquet").to_pydict()
    kept = [(x, y) for x, y, r in zip(ret["x"], ret["y"], ret["retained"]) if r]
    assert len(kept) > 20
    heat, mpp, desc = read_heatmap_tiff(wd / f"results/heatmaps/{SLIDE}.tiff")
    assert desc["columns"] == ["score"]
    tx, ty, level = info["tile_extent_x"], info["tile_extent_y"], info["level"]
    cx, cy = mpp[0] / info["mpp_x"], mpp[1] / info["mpp_y"]  # heatmap cell in level pixels
    assert cx == pytest.approx(round(cx)) and cy == pytest.approx(round(cy))
    cx, cy = round(cx), round(cy)
    covered = np.zeros(heat.shape[1:], bool)
    worst = 0.0
    with openslide.OpenSlide(str(slide_path)) as osr:
        for x, y in kept:
            tile = _openslide_tile(osr, level, x, y, tx, ty)
            if delivered is not None and (tx, ty) != (delivered, delivered):
                tile = np.round(area_average(tile, delivered, delivered)).astype(np.uint8)
            want = _reference_score(tile)
            cells = heat[0, y // cy : (y + ty) // cy, x // cx : (x + tx) // cx]
            assert cells.size > 0
            worst = max(worst, float(np.abs(cells - want).max()))
            covered[y // cy : (y + ty) // cy, x // cx : (x + tx) // cx] = True
    assert worst < 0.01, worst
    assert np.isnan(heat[0][~covered]).all()  # no prediction where no tile was retained
    cols, d = read_predictions(wd / f"results/predictions/{SLIDE}.parquet")
    assert d["kind"] == "scalar" and sorted(zip(cols["x"], cols["y"])) == sorted(kept)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, shared_slides):
    wd = tmp_path_factory.mktemp("predict")
    (wd / "usermodel.py").write_text(USER_MODEL)
    slide = shared_slides / "CMU-1-Small-Region.svs"
    write_sheet(wd / "slides.tsv", [{"slide_id": SLIDE, "path": str(slide)}])
    cfg = _config() | {"samples": "slides.tsv"}
    assert planned_jobs(wd, cfg) == {"tissue_mask": 1, "tiles": 1, "filter_tiles": 1, "pixels": 1, "predict": 1,
                                     "slide_table": 1, "summary": 1, "all": 1}
    run_workflow(wd, cfg)
    return wd, cfg, slide


def test_heatmap_cells_hold_the_callables_value_from_openslide_pixels(predicted):
    wd, _, slide = predicted
    assert_heatmap_holds_the_model_values(wd, slide, delivered=SMALL_CONFIG["tiling"]["tile_extent"])


def test_report_has_the_prediction_heatmap(predicted, tmp_path):
    import zipfile

    wd, cfg, _ = predicted
    report = tmp_path / "report.zip"
    run_workflow(wd, cfg, "--report", str(report))
    with zipfile.ZipFile(report) as zf:
        embedded = [zf.read(n) for n in zf.namelist() if n.endswith(".png")]
    assert (wd / f"results/heatmaps/{SLIDE}.png").read_bytes() in embedded


def test_model_file_config_and_tiles_rerun_predictions_only(predicted):
    wd, cfg, slide = predicted
    assert planned_jobs(wd, cfg) == {}
    model = wd / "usermodel.py"
    # an edit of the model file (Snakemake >= 9.18 compares checksums: a bare touch is no edit)
    model.write_text(USER_MODEL.replace("nonlinear", "nonlinear (edited)"))
    assert planned_jobs(wd, cfg) == {"predict": 1, "all": 1}
    for edit in ({"predict": _config(batch_size=3)["predict"]},
                 {"heatmap": cfg["heatmap"] | {"aggregation": "max"}}):
        assert planned_jobs(wd, cfg | edit) == {"predict": 1, "all": 1}, edit
    tiles_edit = {"filter": cfg["filter"] | {"tissue_threshold": 0.3}}
    # the slide table follows every slide's outputs too: it carries their status
    assert planned_jobs(wd, cfg | tiles_edit) == {"filter_tiles": 1, "pixels": 1, "predict": 1, "slide_table": 1,
                                                  "summary": 1, "all": 1}

    before = {p: (wd / p).stat().st_mtime_ns for p in
              [f"results/retained/{SLIDE}.parquet", f"results/pixels/{SLIDE}.parquet", "results/summary.tsv",
               f"results/predictions/{SLIDE}.parquet", f"results/heatmaps/{SLIDE}.tiff"]}
    run_workflow(wd, cfg)
    after = {p: (wd / p).stat().st_mtime_ns for p in before}
    assert [p for p in before if after[p] != before[p]] == [f"results/predictions/{SLIDE}.parquet",
                                                            f"results/heatmaps/{SLIDE}.tiff"]
    assert planned_jobs(wd, cfg) == {}


def test_without_stored_pixels_tiles_are_read_from_the_slide(predicted):
    wd, cfg, slide = predicted
    cfg = cfg | {"pixels": cfg["pixels"] | {"enabled": False}}
    # the summary drops its pixels-step timing; nothing upstream reruns
    assert planned_jobs(wd, cfg) == {"predict": 1, "slide_table": 1, "summary": 1, "all": 1}
    (wd / f"results/heatmaps/{SLIDE}.tiff").unlink()
    run_workflow(wd, cfg)
    # read from the slide, the model still gets tiles at tiling.mpp, as from the pixel table
    assert_heatmap_holds_the_model_values(wd, slide, delivered=SMALL_CONFIG["tiling"]["tile_extent"])


def test_a_broken_model_fails_its_slide_with_one_line(tmp_path, shared_slides):
    (tmp_path / "usermodel.py").write_text("def score(tiles):\n    raise RuntimeError('weights missing')\n")
    write_sheet(tmp_path / "slides.tsv", [{"slide_id": SLIDE, "path": str(shared_slides / "CMU-1-Small-Region.svs")}])
    proc = run_workflow(tmp_path, _config() | {"samples": "slides.tsv"}, check=False)
    assert proc.returncode != 0
    assert (f"mask-first: slide {SLIDE}: model usermodel:score failed: RuntimeError: weights missing"
            in proc.stderr + proc.stdout)
    assert not (tmp_path / f"results/predictions/{SLIDE}.parquet").exists()
    assert (tmp_path / f"results/pixels/{SLIDE}.parquet").exists()  # the steps before it are kept


def test_readme_command_runs_the_example_on_the_demo_cohort(tmp_path):
    """The README's `--config predict=...` command, verbatim, on a smaller demo cohort."""
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^snakemake --cores 2 --config predict=.*$", readme, re.M).group(0)
    args = shlex.split(command)[3:]  # --config predict=...
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the command runs from the repository root
    cfg = copy.deepcopy(SMALL_CONFIG) | {"samples": "demo", "demo": {"large_size": 4096}}
    cfg["heatmap"]["predictions"] = ""
    run_workflow(tmp_path, cfg, *args)
    slide = "demo-small-he"
    cols, desc = read_predictions(tmp_path / f"results/predictions/{slide}.parquet")
    assert desc["columns"] == ["haematoxylin"] and len(cols["x"]) > 20
    info = read_table(tmp_path / f"results/slides/{slide}.parquet").to_pylist()[0]
    # Ruifrok-Johnston haematoxylin, float64, straight from the stain matrix
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    h_of_od = np.linalg.inv(stains)[:, 0]
    with openslide.OpenSlide(str(tmp_path / f"resources/demo/{slide}.tiff")) as osr:
        for i in range(0, len(cols["x"]), 7):
            rgb = _openslide_tile(osr, info["level"], int(cols["x"][i]), int(cols["y"][i]),
                                  info["tile_extent_x"], info["tile_extent_y"])
            od = -np.log10(np.maximum(rgb, 1) / 255.0)
            want = np.maximum(od @ h_of_od, 0).mean()
            assert cols["haematoxylin"][i] == pytest.approx(want, abs=1e-3)
    heat, _, _ = read_heatmap_tiff(tmp_path / f"results/heatmaps/{slide}.tiff")
    assert np.nanmax(heat) == pytest.approx(cols["haematoxylin"].max(), rel=1e-5)

    # the README's dense example: the same cohort, only predict reruns
    dense = re.search(r"^snakemake --cores 2 --configfile (examples/\S+\.yaml)$", readme, re.M).group(1)
    import yaml

    cfg |= yaml.safe_load((REPO / dense).read_text())
    assert planned_jobs(tmp_path, cfg) == {"predict": 3, "all": 1}
    run_workflow(tmp_path, cfg)
    cols, desc = read_predictions(tmp_path / f"results/predictions/{slide}.parquet")
    heat, mpp, _ = read_heatmap_tiff(tmp_path / f"results/heatmaps/{slide}.tiff")
    h, w = desc["map_shape"]
    cy, cx = info["tile_extent_y"] // h, info["tile_extent_x"] // w  # level px per output px
    assert mpp == pytest.approx((info["mpp_x"] * cx, info["mpp_y"] * cy))
    painted = np.full(heat.shape[1:], np.nan)
    for x, y, m in zip(cols["x"], cols["y"], cols["haematoxylin_map"]):  # clip 1 output px at every edge
        painted[y // cy + 1 : y // cy + h - 1, x // cx + 1 : x // cx + w - 1] = m[1:-1, 1:-1]
    np.testing.assert_allclose(heat[0], painted, rtol=2e-3, atol=1e-3)  # the table's maps are float16
