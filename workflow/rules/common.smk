# Sample sheet, input functions and wildcard constraints.
import glob
import json
import re
import hashlib
import sys
from pathlib import Path

import pandas as pd

from mask_first.cohort import failure_path
from mask_first.ids import stable_id

SHEET_COLUMNS = ["slide_id", "path", "mpp", "mask", "tissue_method"]


def _fail(msg):
    raise WorkflowError(f"mask-first: {msg}")


def _demo_sheet():
    from mask_first.synthetic import demo_cohort_specs

    specs = {s["slide_id"]: s for s in demo_cohort_specs(large_size=config["demo"]["large_size"])}
    sheet = pd.DataFrame(
        {"slide_id": list(specs), "path": [f"resources/demo/{sid}.tiff" for sid in specs]}
    )
    return sheet, specs


def _glob_sheet(pattern):
    paths = sorted(glob.glob(pattern))
    if not paths:
        _fail(f"slides_glob {pattern!r} matches no file")
    stems = [Path(p).name.split(".")[0] for p in paths]
    ids = []
    for p, stem in zip(paths, stems):
        # two files may share a stem (a.svs, a.tif, or dir1/a.svs, dir2/a.svs): keep ids unique
        if stems.count(stem) > 1:
            stem = f"{stem}-{hashlib.sha256(p.encode()).hexdigest()[:8]}"
        ids.append("".join(c if c.isalnum() or c in "._-" else "_" for c in stem))
    return pd.DataFrame({"slide_id": ids, "path": paths})


def _read_sheet(path):
    if not Path(path).exists():
        _fail(f"sample sheet {path} not found")
    sheet = pd.read_csv(path, sep="\t", dtype=str, comment="#").dropna(how="all")
    unknown = [c for c in sheet.columns if c not in SHEET_COLUMNS]
    if unknown:
        _fail(f"sample sheet {path}: unknown column(s) {', '.join(unknown)} (allowed: {', '.join(SHEET_COLUMNS)})")
    for col in ("slide_id", "path"):
        if col not in sheet.columns:
            _fail(f"sample sheet {path}: missing column {col!r}")
    if "mpp" in sheet.columns:
        bad = sheet.loc[pd.to_numeric(sheet.mpp, errors="coerce").isna() & sheet.mpp.notna(), "slide_id"]
        if len(bad):
            _fail(f"sample sheet {path}: slide {bad.iloc[0]}: mpp must be a number")
        sheet["mpp"] = pd.to_numeric(sheet.mpp)
    return sheet


def load_samples():
    specs = {}
    source = config.get("samples") or ""
    if source == "demo":
        sheet, specs = _demo_sheet()
    elif source:
        sheet = _read_sheet(source)
    elif config.get("slides_glob"):
        sheet = _glob_sheet(config["slides_glob"])
    else:
        _fail("set `samples` (demo or a sheet path) or `slides_glob` in the config")
    for col in SHEET_COLUMNS:
        if col not in sheet.columns:
            sheet[col] = None
    sheet = sheet[SHEET_COLUMNS].astype(object).where(sheet[SHEET_COLUMNS].notna(), None)
    dup = sheet.slide_id[sheet.slide_id.duplicated()]
    if len(dup):
        _fail(f"duplicate slide_id {dup.iloc[0]!r} in the sample sheet")
    validate(sheet, "../schemas/samples.schema.yaml")
    # validate() writes rows back and turns None into NaN again
    sheet = sheet.astype(object).where(sheet.notna(), None)
    if not specs:  # demo slides are made by the workflow; real ones must exist now
        for row in sheet.itertuples():
            if not Path(row.path).is_file():
                _fail(f"slide {row.slide_id}: file not found: {row.path}")
            if row.mask and not Path(row.mask).is_file():
                _fail(f"slide {row.slide_id}: mask file not found: {row.mask}")
    return sheet.set_index("slide_id", drop=False), specs


SAMPLES, DEMO_SPECS = load_samples()
SLIDES = list(SAMPLES.index)


def _is_geojson(path):
    return str(path).lower().endswith((".geojson", ".json"))


def _mask_key(row):
    """Cache key of a generated mask: everything the mask depends on, nothing else.

    A GeoJSON mask from the sheet is rasterised by the tissue_mask rule too: its
    key holds the file and the grid settings, and the file's mtime reruns it."""
    if row["mask"]:
        return stable_id(
            {
                "geojson": row["mask"],
                "path": row["path"],
                "mpp_override": row["mpp"],
                "mask_mpp": config["mask"]["mpp"],
                "classes": config["mask"]["geojson_classes"] or [],
            }
        )
    return stable_id(
        {
            "path": row["path"],
            "mpp_override": row["mpp"],
            "mask_mpp": config["mask"]["mpp"],
            "method": row["tissue_method"] or config["mask"]["method"],
            "params": config["mask"]["params"],
        }
    )


def _slide_entry(row):
    """Everything the rules need of one slide, computed once: input functions then
    cost a dict look-up per job, which keeps 10,000-slide DAGs quick to build."""
    mpp = None if row["mpp"] is None else float(row["mpp"])
    method = row["tissue_method"] or config["mask"]["method"]
    geojson = row["mask"] if row["mask"] and _is_geojson(row["mask"]) else None
    key = None if (row["mask"] and not geojson) else _mask_key(row)
    mask = f"results/masks/{row['slide_id']}/{key}.tiff" if key else row["mask"]
    return {"path": row["path"], "mpp_override": mpp, "tissue_method": method, "mask": mask,
            "mask_key": key, "geojson": geojson}


SLIDE = {sid: _slide_entry(row) for sid, row in SAMPLES.to_dict("index").items()}
USES_MASK = config["filter"]["method"] == "mask"
TILE_OBJECTS = config["qc"]["tile_objects"]


wildcard_constraints:
    # the sheet schema's id pattern: no "/", so per-slide paths never nest
    slide="[A-Za-z0-9][A-Za-z0-9._-]*",
    key="[0-9a-f]{16}",


# -- per-slide shell jobs ------------------------------------------------------
# tissue_mask, tiles, filter_tiles and pixels are `shell:` jobs: Snakemake's interpreter
# runs workflow/scripts/step.py on the job's log, threads, files and settings
# (the last two as JSON params; mask_first/jobs.py). Against `script:` a job skips Snakemake's
# script preamble (unpickling the job object imports Snakemake) and the DAG
# skips the per-job script check; see docs/benchmarks.md. The command names
# these globals rather than their values, so moving the checkout or the
# environment does not count as a code change.
STEP_PYTHON = sys.executable
STEP_RUNNER = f"{workflow.basedir}/workflow/scripts/step.py"
STEP_SHELL = "{STEP_PYTHON:q} {STEP_RUNNER:q} {rule} {log:q} {threads} {params.files:q} {params.job:q}"


def step_job(**settings):
    """The ``job`` param of a shell step: its settings as JSON.

    ``settings`` are the step's config values and per-slide functions of the
    wildcards (called here). A function of the wildcards alone, so Snakemake
    compares it with the last run's like any param: a changed setting reruns
    the job."""

    def job(wildcards):
        return json.dumps({k: v(wildcards) if callable(v) else v for k, v in settings.items()})

    return job


def step_files(wildcards, input, output):
    """The ``files`` param of a shell step: slide id, named input and output paths, as JSON.

    Derived from the job's files, so Snakemake leaves it out of the params it
    compares between runs (files have their own rerun triggers). Threads go
    on the command line as ``{threads}``: a param function asking for them
    makes Snakemake evaluate every job's resources while it builds the DAG
    (about 10 % of a dry run)."""
    return json.dumps({"slide": wildcards.slide, "input": dict(input.items()), "output": dict(output.items())})


# -- per-slide values (input functions and params) ----------------------------


def slide_path(wildcards):
    return SLIDE[wildcards.slide]["path"]


def mpp_override(wildcards):
    return SLIDE[wildcards.slide]["mpp_override"]


def tissue_method(wildcards):
    return SLIDE[wildcards.slide]["tissue_method"]


def mask_path(wildcards):
    """The slide's mask: the user's file, or the generated one under its cache key."""
    return SLIDE[wildcards.slide]["mask"]


def user_mask(wildcards):
    return SLIDE[wildcards.slide]["mask_key"] is None


def mask_inputs(wildcards):
    """The slide, and the sheet's GeoJSON when the mask is drawn rather than detected."""
    entry = SLIDE[wildcards.slide]
    inputs = {"slide": entry["path"]}
    if entry["geojson"]:
        inputs["geojson"] = entry["geojson"]
    return inputs


def filter_inputs(wildcards):
    entry = SLIDE[wildcards.slide]
    inputs = {"tiles": f"results/tiles/{wildcards.slide}.parquet", "slide": entry["path"]}
    if USES_MASK:
        inputs["mask"] = entry["mask"]
        if TILE_OBJECTS and entry["mask_key"]:
            inputs["mask_geojson"] = entry["mask"][: -len(".tiff")] + ".geojson"
    return inputs


def pixels_enabled():
    return config["pixels"]["enabled"]


def predict_enabled():
    return bool(config["predict"]["model"] or config["predict"]["onnx"])


def heatmap_enabled():
    return bool(config["heatmap"]["predictions"]) or predict_enabled()


def step_benchmarks(slide):
    """Benchmark files of a slide's jobs (wall seconds per step go into the summary)."""
    steps = ["tiles", "filter_tiles"] + (["pixels"] if pixels_enabled() else [])
    files = [f"results/benchmarks/{s}/{slide}.tsv" for s in steps]
    key = SLIDE[slide]["mask_key"]
    if USES_MASK and key:
        files.append(f"results/benchmarks/tissue_mask/{slide}/{key}.tsv")
    return files


def step_logs(slide):
    """Rule logs of a slide's jobs in workflow order; their failure files say which step failed."""
    key = SLIDE[slide]["mask_key"]
    logs = [f"results/logs/tissue_mask/{slide}/{key}.log"] if USES_MASK and key else []
    logs += [f"results/logs/tiles/{slide}.log", f"results/logs/filter_tiles/{slide}.log"]
    if pixels_enabled():
        logs.append(f"results/logs/pixels/{slide}.log")
    if predict_enabled():
        logs.append(f"results/logs/predict/{slide}.log")
    if config["heatmap"]["predictions"]:  # the heatmap rule; with a model, predict makes the heatmaps
        logs.append(f"results/logs/heatmap/{slide}.log")
    return logs


def slide_outputs(slide, core=False):
    """Every per-slide output of the run (a slide is done when all exist); ``core``: the model's left out."""
    s = slide
    outputs = [f"results/slides/{s}.parquet", f"results/retained/{s}.parquet", f"results/qc/{s}.png"]
    if pixels_enabled():
        outputs.append(f"results/pixels/{s}.parquet")
    if core:
        return outputs
    if predict_enabled():
        outputs.append(f"results/predictions/{s}.parquet")
    if heatmap_enabled():
        outputs += [f"results/heatmaps/{s}.tiff", f"results/heatmaps/{s}.png"]
    return outputs


def all_targets():
    # the cohort tables wait for the slides' own outputs; the model's and the
    # heatmaps are asked for here (see workflow/rules/cohort.smk)
    targets = ["results/slides.parquet", "results/summary.tsv", "results/contact_sheet.html"]
    for s in SLIDES:
        targets += slide_outputs(s)[len(slide_outputs(s, core=True)):] + [f"results/coords/{s}.h5"]
        if USES_MASK and SLIDE[s]["mask_key"]:
            targets.append(SLIDE[s]["mask"][: -len(".tiff")] + ".geojson")
    return targets
