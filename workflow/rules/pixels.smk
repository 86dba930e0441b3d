# RGB pixels of the retained tiles only, streamed into Parquet row groups.


rule pixels:
    input:
        retained="results/retained/{slide}.parquet",
        slide=slide_path,
    output:
        "results/pixels/{slide}.parquet",
    params:
        encoding=config["pixels"].get("encoding", "raw"),
        jpeg_quality=config["pixels"].get("jpeg_quality", 90),
        row_group_tiles=config["pixels"].get("row_group_tiles", 256),
        mpp_override=mpp_override,
    log:
        "results/logs/pixels/{slide}.log",
    benchmark:
        "results/benchmarks/pixels/{slide}.tsv"
    threads: config.get("threads", 2)
    resources:
        mem_mb=1500,
        runtime=60,
    script:
        "../scripts/pixels.py"
