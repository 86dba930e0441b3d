# Sample sheet, input functions and wildcard constraints.
import csv
import glob
import json
import math
import hashlib
import inspect
import sys
from pathlib import Path

from mask_first.cohort import failure_path
from mask_first.ids import stable_id

SHEET_COLUMNS = ["slide_id", "path", "mpp", "mask", "tissue_method"]


def _fail(msg):
    raise WorkflowError(f"mask-first: {msg}")


# The sheet is read with the csv module, not pandas: every Snakemake start
# (each dry run, each rerun, each cluster job's parent) would otherwise pay
# pandas' import, 0.3-1.2 s here, for a few thousand short rows.


def _demo_sheet():
    from mask_first.synthetic import demo_cohort_specs

    specs = {s["slide_id"]: s for s in demo_cohort_specs(large_size=config["demo"]["large_size"])}
    return [{"slide_id": sid, "path": f"resources/demo/{sid}.tiff"} for sid in specs], specs


def _glob_sheet(pattern):
    paths = sorted(glob.glob(pattern))
    if not paths:
        _fail(f"slides_glob {pattern!r} matches no file")
    stems = [Path(p).name.split(".")[0] for p in paths]
    counts = {s: stems.count(s) for s in set(stems)}
    rows = []
    for p, stem in zip(paths, stems):
        # two files may share a stem (a.svs, a.tif, or dir1/a.svs, dir2/a.svs): keep ids unique
        if counts[stem] > 1:
            stem = f"{stem}-{hashlib.sha256(p.encode()).hexdigest()[:8]}"
        rows.append({"slide_id": "".join(c if c.isalnum() or c in "._-" else "_" for c in stem), "path": p})
    return rows


def _read_sheet(path):
    """Rows of a TSV sheet as dicts; empty cells are None, lines starting with ``#`` are comments."""
    if not Path(path).exists():
        _fail(f"sample sheet {path} not found")
    # utf-8-sig: a sheet saved by a spreadsheet program may start with a byte-order mark
    with open(path, newline="", encoding="utf-8-sig") as f:
        numbered = [(n, ln) for n, ln in enumerate(f, start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.reader((ln for _, ln in numbered), delimiter="\t")
    header = next(reader, None)
    if header is None:
        _fail(f"sample sheet {path} is empty")
    unknown = [c for c in header if c not in SHEET_COLUMNS]
    if unknown:
        _fail(f"sample sheet {path}: unknown column(s) {', '.join(unknown)} (allowed: {', '.join(SHEET_COLUMNS)})")
    for col in ("slide_id", "path"):
        if col not in header:
            _fail(f"sample sheet {path}: missing column {col!r}")
    rows = []
    for cells in reader:
        if len(cells) > len(header):
            line = numbered[reader.line_num - 1][0]  # the file's line number, comments and blank lines counted
            _fail(f"sample sheet {path}: line {line} has {len(cells)} fields, the header {len(header)}")
        rows.append({c: (v if v != "" else None) for c, v in zip(header, cells)})
    for row in rows:
        if row.get("mpp") is not None:
            try:
                row["mpp"] = float(row["mpp"])
            except ValueError:
                row["mpp"] = math.nan
            if not math.isfinite(row["mpp"]):
                _fail(f"sample sheet {path}: slide {row.get('slide_id')}: mpp must be a number")
    return rows


def load_samples():
    specs = {}
    source = config.get("samples") or ""
    if source == "demo":
        rows, specs = _demo_sheet()
    elif source:
        rows = _read_sheet(source)
    elif config.get("slides_glob"):
        rows = _glob_sheet(config["slides_glob"])
    else:
        _fail("set `samples` (demo or a sheet path) or `slides_glob` in the config")
    seen = set()
    for row in rows:
        if row.get("slide_id") in seen:
            _fail(f"duplicate slide_id {row['slide_id']!r} in the sample sheet")
        seen.add(row.get("slide_id"))
    # one validation of the whole sheet (a schema of rows), with None cells left out as they are absent
    try:
        validate({"slides": [{k: v for k, v in r.items() if v is not None} for r in rows]},
                 "../schemas/samples.schema.yaml")
    except WorkflowError as e:  # its text says "config file" and names the row as slides[i]
        _fail(f"sample sheet {source or config.get('slides_glob')}: {str(e).split(chr(10), 1)[-1]}")
    rows = [{c: r.get(c) for c in SHEET_COLUMNS} for r in rows]
    if not specs:  # demo slides are made by the workflow; real ones must exist now
        for row in rows:
            if not Path(row["path"]).is_file():
                _fail(f"slide {row['slide_id']}: file not found: {row['path']}")
            if row["mask"] and not Path(row["mask"]).is_file():
                _fail(f"slide {row['slide_id']}: mask file not found: {row['mask']}")
    return {r["slide_id"]: r for r in rows}, specs


SAMPLES, DEMO_SPECS = load_samples()
SLIDES = list(SAMPLES)


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


SLIDE = {sid: _slide_entry(row) for sid, row in SAMPLES.items()}
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


# Warm start (mask_first/forkserver.py): a local run's per-slide jobs fork one
# process that has imported the libraries, instead of each starting its own
# interpreter. Cluster jobs and subprocess modes never see the server.
_WARM = {}


def start_warm_process():
    """Start the run's warm process (``onstart``; local runs with ``warm_start: true``)."""
    if not config["warm_start"] or not workflow.local_exec or workflow.remote_exec or workflow.subprocess_exec:
        return
    import os
    import secrets

    from mask_first.forkserver import ENV, start

    address = f"mask-first-{os.getuid()}-{os.getpid()}-{secrets.token_hex(4)}"
    Path("results/logs").mkdir(parents=True, exist_ok=True)
    with open("results/logs/warm_start.log", "w") as log:
        # returns once the socket is bound (about 0.1 s; the imports come after)
        process = start([STEP_PYTHON, STEP_RUNNER], address, log)
    if process is None:
        from snakemake.logging import logger

        logger.warning("mask-first: the warm process did not start; every job starts its own interpreter")
        return
    _WARM["process"] = process
    os.environ[ENV] = address


def stop_warm_process():
    """Stop it (``onsuccess`` / ``onerror``): every job has ended by then."""
    import os

    from mask_first.forkserver import ENV, stop

    process = _WARM.pop("process", None)
    os.environ.pop(ENV, None)
    if process is not None:
        stop(process)


def fixed_signature(func):
    """Give ``func`` its signature as ``__signature__``, which ``inspect`` returns as is.

    Snakemake reads the signature of every input and params function once per
    job to see which arguments it takes (``inspect.signature``: 7 % of a
    10,000-slide dry run under py-spy); with ``__signature__`` set it is not
    worked out again each time.
    """
    func.__signature__ = inspect.signature(func)
    return func


def step_job(**settings):
    """The ``job`` param of a shell step: its settings as JSON.

    ``settings`` are the step's config values and per-slide functions of the
    wildcards (called here). A function of the wildcards alone, so Snakemake
    compares it with the last run's like any param: a changed setting reruns
    the job."""

    def job(wildcards):
        return json.dumps({k: v(wildcards) if callable(v) else v for k, v in settings.items()})

    return fixed_signature(job)


@fixed_signature
def step_files(wildcards, input, output):
    """The ``files`` param of a shell step: slide id, named input and output paths, as JSON.

    Derived from the job's files, so Snakemake leaves it out of the params it
    compares between runs (files have their own rerun triggers). Threads go
    on the command line as ``{threads}``: a param function asking for them
    makes Snakemake evaluate every job's resources while it builds the DAG
    (about 10 % of a dry run)."""
    return json.dumps({"slide": wildcards.slide, "input": dict(input.items()), "output": dict(output.items())})


# -- per-slide values (input functions and params) ----------------------------


@fixed_signature
def slide_path(wildcards):
    return SLIDE[wildcards.slide]["path"]


def mpp_override(wildcards):
    return SLIDE[wildcards.slide]["mpp_override"]


_PRIORITY = {}


@fixed_signature
def slide_priority(wildcards):
    """Scheduling priority of a slide's jobs: its size on disk in MB.

    Largest slide first (longest-processing-time-first list scheduling): the
    pixel job of a resection takes several times a biopsy's, and started last
    it runs alone on an otherwise idle machine (on the 4-slide benchmark cohort
    it started at 8.4 s of an 11.8 s run). File size stands in for the work,
    which scales with the tissue, i.e. with the compressed bytes. A slide not
    on disk yet (the demo's, made by a job) gets 0.
    """
    slide = wildcards.slide
    if slide not in _PRIORITY:
        path = Path(SLIDE[slide]["path"])
        try:
            size = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
        except OSError:
            size = 0
        _PRIORITY[slide] = size // 2**20
    return _PRIORITY[slide]


def tissue_method(wildcards):
    return SLIDE[wildcards.slide]["tissue_method"]


def mask_path(wildcards):
    """The slide's mask: the user's file, or the generated one under its cache key."""
    return SLIDE[wildcards.slide]["mask"]


def user_mask(wildcards):
    return SLIDE[wildcards.slide]["mask_key"] is None


@fixed_signature
def mask_inputs(wildcards):
    """The slide, and the sheet's GeoJSON when the mask is drawn rather than detected."""
    entry = SLIDE[wildcards.slide]
    inputs = {"slide": entry["path"]}
    if entry["geojson"]:
        inputs["geojson"] = entry["geojson"]
    return inputs


@fixed_signature
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
