# The synthetic demo cohort: made by the workflow itself, no download.


rule demo_slide:
    output:
        "resources/demo/{slide}.tiff",
    params:
        spec=lambda wc: DEMO_SPECS[wc.slide],
    log:
        "results/logs/demo_slide/{slide}.log",
    benchmark:
        "results/benchmarks/demo_slide/{slide}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    script:
        "../scripts/demo_slide.py"
