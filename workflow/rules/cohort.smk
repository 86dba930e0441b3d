# Cohort outputs: the slide table and the summary, one job each.


rule slide_table:
    input:
        expand("results/slides/{slide}.parquet", slide=SLIDES),
    output:
        "results/slides.parquet",
    params:
        masks=[SLIDE[s]["mask"] if USES_MASK else None for s in SLIDES],
    log:
        "results/logs/slide_table.log",
    localrule: True
    script:
        "../scripts/slide_table.py"


rule summary:
    input:
        retained=expand("results/retained/{slide}.parquet", slide=SLIDES),
        benchmarks=[f for s in SLIDES for f in step_benchmarks(s)],
    output:
        report("results/summary.tsv", caption="../report/summary.rst", category="Summary"),
    params:
        slides=SLIDES,
        benchmarks=[step_benchmarks(s) for s in SLIDES],
    log:
        "results/logs/summary.log",
    localrule: True
    script:
        "../scripts/summary.py"
