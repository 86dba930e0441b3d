# QC thumbnails and the cohort summary.


rule qc:
    input:
        unpack(
            lambda wc: {
                "slide": slide_path(wc),
                "retained": f"results/retained/{wc.slide}.parquet",
            }
            | ({"mask": f"results/masks/{wc.slide}.tiff"} if uses_mask() else {})
        ),
    output:
        report(
            "results/qc/{slide}.png",
            caption="../report/qc.rst",
            category="QC",
            labels={"slide": "{slide}"},
        ),
    params:
        size=config.get("qc", {}).get("size", 1024),
        mpp_override=mpp_override,
    log:
        "results/logs/qc/{slide}.log",
    benchmark:
        "results/benchmarks/qc/{slide}.tsv"
    group:
        "slide"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/qc.py"


rule summary:
    input:
        retained=expand("results/retained/{slide}.parquet", slide=SLIDES),
        masks=expand("results/masks/{slide}.tiff", slide=SLIDES) if uses_mask() else [],
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
