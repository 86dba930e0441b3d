# Per-tile predictions assembled back into slide-aligned heatmaps (MaskBuilder);
# only when `heatmap.predictions` names a table.


rule heatmap:
    input:
        predictions=lambda wc: config["heatmap"]["predictions"].format(slide=wc.slide),
        slide_info="results/slides/{slide}.parquet",
    output:
        tiff="results/heatmaps/{slide}.tiff",
        png=report(
            "results/heatmaps/{slide}.png",
            caption="../report/heatmap.rst",
            category="Heatmaps",
            labels={"slide": "{slide}"},
        ),
    params:
        columns=config["heatmap"]["columns"],
        aggregation=config["heatmap"]["aggregation"],
        storage=config["heatmap"]["storage"],
        size=config["qc"]["size"],
    log:
        "results/logs/heatmap/{slide}.log",
    benchmark:
        "results/benchmarks/heatmap/{slide}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    script:
        "../scripts/heatmap.py"
