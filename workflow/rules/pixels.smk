# RGB pixels of the retained tiles only, streamed into Parquet row groups.


rule pixels:
    input:
        retained="results/retained/{slide}.parquet",
        slide=slide_path,
    output:
        pixels="results/pixels/{slide}.parquet",
    params:
        files=step_files,
        job=step_job(
            encoding=config["pixels"]["encoding"],
            jpeg_quality=config["pixels"]["jpeg_quality"],
            compression=config["pixels"]["compression"],
            row_group_tiles=config["pixels"]["row_group_tiles"],
            corrupt_tiles=config["pixels"]["corrupt_tiles"],
            mpp_override=mpp_override,
            resample=config["pixels"]["resample"],
            mpp=config["tiling"]["mpp"],
            tile_extent=config["tiling"]["tile_extent"],
        ),
    log:
        "results/logs/pixels/{slide}.log",
    benchmark:
        "results/benchmarks/pixels/{slide}.tsv"
    priority: slide_priority
    threads: config["threads"]
    resources:
        mem_mb=1500,
        runtime=60,
    shell:
        STEP_SHELL
