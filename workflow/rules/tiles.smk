# The slide's row of the slide table and its tile grid, then each tile's mask
# coverage, the retained tiles and the QC picture.


rule tiles:
    input:
        slide=slide_path,
    output:
        info="results/slides/{slide}.parquet",
        tiles="results/tiles/{slide}.parquet",
    params:
        files=step_files,
        job=step_job(
            mpp=config["tiling"]["mpp"],
            level=config["tiling"]["level"],
            tile_extent=config["tiling"]["tile_extent"],
            stride=config["tiling"]["stride"],
            last=config["tiling"]["last"],
            mpp_override=mpp_override,
        ),
    log:
        "results/logs/tiles/{slide}.log",
    benchmark:
        "results/benchmarks/tiles/{slide}.tsv"
    group:
        "slide"
    priority: slide_priority
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        STEP_SHELL


rule filter_tiles:
    input:
        unpack(filter_inputs),
    output:
        retained="results/retained/{slide}.parquet",
        qc=report(
            "results/qc/{slide}.png",
            caption="../report/qc.rst",
            category="QC",
            labels={"slide": "{slide}"},
        ),
        # retained tiles' level-0 (x, y) for CLAM / TRIDENT feature extraction
        coords="results/coords/{slide}.h5",
        # mask annotations + retained tiles as QuPath tile objects (qc.tile_objects)
        **({"tile_objects": "results/qc/{slide}.geojson"} if TILE_OBJECTS else {}),
    params:
        files=step_files,
        job=step_job(
            method=config["filter"]["method"],
            threshold=(
                config["filter"]["tissue_threshold"]
                if USES_MASK
                else config["filter"]["pixel_std_threshold"]
            ),
            value=config["filter"]["tissue_value"],
            user_mask=user_mask,
            qc_size=config["qc"]["size"],
            mpp_override=mpp_override,
        ),
    log:
        "results/logs/filter_tiles/{slide}.log",
    benchmark:
        "results/benchmarks/filter_tiles/{slide}.tsv"
    group:
        "slide"
    priority: slide_priority
    threads: 1 if USES_MASK else config["threads"]
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        STEP_SHELL
