# Per-tile predictions assembled back into slide-aligned heatmaps (MaskBuilder).


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
        columns=heatmap_columns(),
        aggregation=config.get("heatmap", {}).get("aggregation", "mean"),
        storage=config.get("heatmap", {}).get("storage", "memmap"),
        size=config.get("qc", {}).get("size", 1024),
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
