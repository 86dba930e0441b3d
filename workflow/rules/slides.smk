# The slide table: level for the target µm/px, extents, mpp, stable id.


rule slide_info:
    input:
        slide=slide_path,
    output:
        "results/slides/{slide}.parquet",
    params:
        mpp=config["tiling"].get("mpp"),
        level=config["tiling"].get("level"),
        tile_extent=config["tiling"]["tile_extent"],
        stride=config["tiling"]["stride"],
        mpp_override=mpp_override,
    log:
        "results/logs/slide_info/{slide}.log",
    benchmark:
        "results/benchmarks/slide_info/{slide}.tsv"
    group:
        "slide"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/slide_info.py"


rule slide_table:
    input:
        expand("results/slides/{slide}.parquet", slide=SLIDES),
    output:
        "results/slides.parquet",
    log:
        "results/logs/slide_table.log",
    localrule: True
    script:
        "../scripts/slide_table.py"
