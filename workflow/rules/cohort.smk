# Cohort outputs: the slide table, and the summary with its contact sheet; one job each.
#
# Both list every slide of the sheet with its status. The slide table waits for
# every per-slide output (the model's aside), the summary for the slide table,
# so when all slides finish they run as ordinary rules. When a slide fails, Snakemake never runs them; the `onerror`
# handler in the Snakefile then writes the same files from what exists (pipeline.write_cohort_tables),
# naming the failed step and cause from the failure files that
# pipeline.run_step leaves under results/status/. A later run retries the
# failed slides and, once they succeed, their new outputs are newer than the
# tables, so the rules run again and replace the handler's files; `onsuccess`
# rewrites them only if a status still differs (e.g. a predict job fixed).


def _slide_record(s):
    """What the cohort steps need of one slide: paths only, nothing read at DAG time."""
    entry = SLIDE[s]
    return {
        "slide_id": s,
        "path": entry["path"],
        "mpp_override": entry["mpp_override"],
        "mask": entry["mask"] if USES_MASK else None,
        "info": f"results/slides/{s}.parquet",
        "retained": f"results/retained/{s}.parquet",
        "pixels": f"results/pixels/{s}.parquet" if pixels_enabled() else None,
        "benchmarks": step_benchmarks(s),
        "failures": [str(failure_path(f)) for f in step_logs(s)],
        "outputs": slide_outputs(s),
    }


COHORT = [_slide_record(s) for s in SLIDES]
# the cohort rules wait for the slide's own outputs, not for the model's
# (predict) or the heatmaps: a model edit then reruns predict alone, and the
# onsuccess handler brings the tables up to date if those change a status
# Only each slide's last core output: it exists only after that slide's tiles
# and filter jobs (info, retained, QC picture) finished, and a 10,000-slide DAG
# then carries 10,000 cohort inputs instead of 40,000 (the summary takes the
# slide table, so the two rules carry them once).
COHORT_INPUTS = [slide_outputs(s, core=True)[-1] for s in SLIDES]
QC_THRESHOLDS = {
    "border_fraction": config["qc"]["border_fraction"],
    "area_outlier_z": config["qc"]["area_outlier_z"],
    "ink_area_mm2": config["qc"]["ink_area_mm2"],
}


def write_cohort_tables(after):
    """The onerror / onsuccess handlers' work (see the top of this file)."""
    from mask_first.pipeline import write_cohort_tables

    write_cohort_tables(COHORT, "results/slides.parquet", "results/summary.tsv", "results/contact_sheet.html",
                        log_path=f"results/logs/cohort_after_{after}.log", only_if_stale=after == "success",
                        **QC_THRESHOLDS)


rule slide_table:
    input:
        COHORT_INPUTS,
    output:
        "results/slides.parquet",
    params:
        slides=COHORT,
    log:
        "results/logs/slide_table.log",
    localrule: True
    script:
        "../scripts/slide_table.py"


rule summary:
    input:
        # after the slide table, which waits for every slide: one DAG input
        # instead of one per slide, and the same reruns
        "results/slides.parquet",
    output:
        summary=report("results/summary.tsv", caption="../report/summary.rst", category="Summary"),
        sheet=report("results/contact_sheet.html", caption="../report/contact_sheet.rst", category="Summary"),
    params:
        slides=COHORT,
        **QC_THRESHOLDS,
    log:
        "results/logs/summary.log",
    localrule: True
    script:
        "../scripts/summary.py"
