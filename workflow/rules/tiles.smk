# Tile grid, then each tile's mask coverage and the retained tiles.


rule tiles:
    input:
        "results/slides/{slide}.parquet",
    output:
        "results/tiles/{slide}.parquet",
    params:
        last=config["tiling"].get("last", "keep"),
    log:
        "results/logs/tiles/{slide}.log",
    benchmark:
        "results/benchmarks/tiles/{slide}.tsv"
    group:
        "slide"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/tiles.py"


rule filter_tiles:
    input:
        unpack(filter_inputs),
    output:
        "results/retained/{slide}.parquet",
    params:
        method=config["filter"]["method"],
        threshold=(
            config["filter"]["tissue_threshold"]
            if config["filter"]["method"] == "mask"
            else config["filter"].get("pixel_std_threshold", 8.0)
        ),
        value=config["filter"].get("tissue_value", 255),
        mpp_override=mpp_override,
    log:
        "results/logs/filter_tiles/{slide}.log",
    benchmark:
        "results/benchmarks/filter_tiles/{slide}.tsv"
    group:
        "slide"
    threads: 1 if config["filter"]["method"] == "mask" else config.get("threads", 2)
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/filter_tiles.py"
