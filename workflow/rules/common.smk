# Sample sheet, input functions and wildcard constraints.
import glob
import re
import hashlib
from pathlib import Path

import pandas as pd

from mask_first.tiling.utils import row_hash

SHEET_COLUMNS = ["slide_id", "path", "mpp", "mask", "tissue_method"]


def _fail(msg):
    raise WorkflowError(f"mask-first: {msg}")


def _demo_sheet():
    from mask_first.synthetic import demo_cohort_specs

    specs = {s["slide_id"]: s for s in demo_cohort_specs(large_size=config.get("demo", {}).get("large_size", 20480))}
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
# one plain dict per slide, built once: the input functions below run for every
# job, and a pandas .loc per call dominated the DAG building of large cohorts
SAMPLE_ROWS = SAMPLES.to_dict("index")


wildcard_constraints:
    # the sheet schema's id pattern: no "/", so per-slide paths never nest
    slide="[A-Za-z0-9][A-Za-z0-9._-]*",
    key="[0-9a-f]{16}",


# -- per-slide values -------------------------------------------------------


def sample(wildcards):
    return SAMPLE_ROWS[wildcards.slide]


def slide_path(wildcards):
    return sample(wildcards)["path"]


def mpp_override(wildcards):
    v = sample(wildcards)["mpp"]
    return None if v is None else float(v)


def tissue_method(wildcards):
    return sample(wildcards)["tissue_method"] or config["mask"]["method"]


_MASK_KEYS = {}


def mask_key(wildcards):
    """Cache key of a generated mask: everything the mask depends on, nothing else."""
    # computed once per slide (config and sheet are fixed once parsed)
    key = _MASK_KEYS.get(wildcards.slide)
    if key is None:
        key = _MASK_KEYS[wildcards.slide] = row_hash(
            {
                "path": slide_path(wildcards),
                "mpp_override": mpp_override(wildcards),
                "mask_mpp": config["mask"]["mpp"],
                "method": tissue_method(wildcards),
                "params": config["mask"].get("params") or {},
            }
        )
    return key


def mask_source(wildcards):
    user = sample(wildcards)["mask"]
    if user:
        return user
    return f"results/masks/cache/{wildcards.slide}/{mask_key(wildcards)}.tiff"


def uses_mask():
    return config["filter"]["method"] == "mask"


def filter_inputs(wildcards):
    inputs = {"tiles": f"results/tiles/{wildcards.slide}.parquet"}
    if uses_mask():
        inputs["mask"] = f"results/masks/{wildcards.slide}.tiff"
    else:
        inputs["slide"] = slide_path(wildcards)
    return inputs


def step_benchmarks(slide):
    steps = ["slide_info", "tiles", "filter_tiles"]
    if uses_mask():
        steps.append("mask")
    if config["pixels"]["enabled"]:
        steps.append("pixels")
    files = [f"results/benchmarks/{s}/{slide}.tsv" for s in steps]
    if uses_mask() and not SAMPLE_ROWS[slide]["mask"]:
        key = mask_key(type("W", (), {"slide": slide})())
        files.append(f"results/benchmarks/tissue_mask/{slide}-{key}.tsv")
    return files


def all_targets():
    targets = ["results/slides.parquet", "results/summary.tsv"]
    for s in SLIDES:
        targets += [f"results/tiles/{s}.parquet", f"results/retained/{s}.parquet", f"results/qc/{s}.png"]
        if uses_mask():
            targets.append(f"results/masks/{s}.tiff")
        if config["pixels"]["enabled"]:
            targets.append(f"results/pixels/{s}.parquet")
        if config.get("heatmap", {}).get("enabled", False):
            targets += [f"results/heatmaps/{s}.tiff", f"results/heatmaps/{s}.png"]
    return targets


def heatmap_columns():
    """Prediction columns to assemble; the built-in default follows the filter method."""
    hm = config.get("heatmap", {})
    columns = list(hm.get("columns", ["fraction_255"]))
    own_table = hm.get("predictions", "").startswith("results/retained/")
    if own_table and not uses_mask() and columns == ["fraction_255"]:
        return ["pixel_std"]  # the mask-free filter has no mask fractions, only the pixel std
    return columns


# -- DAG-building speed for large cohorts ------------------------------------
# Neither block changes a job, a param or a rerun decision; together they take
# `snakemake -n --quiet` on 10,000 slides (80,003 jobs) from 104 to 49 s CPU
# (benchmarks/bench_scale.py).
import atexit
import gc

# Snakemake keeps every job object alive until it exits, so the collector's full
# passes over that growing heap (18 of them for 80,000 jobs, and one more at
# interpreter exit) cost about a third of a large dry run. Young collections still
# reclaim short-lived cycles; what is left at exit is freed by the OS.
gc.set_threshold(100_000, 50, 100)
atexit.register(gc.freeze)


def _check_each_script_once():
    """Snakemake 9 re-reads a rule's script for *every* job only to check that it
    exists (dag.ScriptProcessor), parsing its path with smart_open, which builds
    a namedtuple class per call: ~40 % of what is left. A script whose path
    has no {wildcards}/{params} is the same file for all jobs of its rule, so it
    is checked once per rule (a missing script still fails the same way). A
    no-op when Snakemake's internals differ."""
    import functools

    try:
        import snakemake.dag as smdag
        import snakemake.sourcecache as smsc

        original, parse_uri = smdag.ScriptProcessor.process_job, smsc.parse_uri
    except (ImportError, AttributeError):
        return
    if getattr(original, "_mask_first_once", False):
        return
    checked = set()

    @functools.wraps(original)
    def process_job(self, job, *args, **kwargs):
        entry = getattr(job.rule, getattr(self, "script_type", ""), None)
        if entry is None or "{" in str(entry):
            return original(self, job, *args, **kwargs)
        key = (self.script_type, job.rule.name, str(entry))
        if key not in checked:
            original(self, job, *args, **kwargs)
            checked.add(key)

    process_job._mask_first_once = True
    smdag.ScriptProcessor.process_job = process_job
    smsc.parse_uri = functools.lru_cache(maxsize=1024)(parse_uri)


_check_each_script_once()
