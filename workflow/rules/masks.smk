# Tissue masks, one per slide and mask setting. The key (a hash of every mask
# parameter) is part of the path, so switching back to an earlier setting finds
# its mask already made, and the filter that reads it sees its input change.


# A sheet mask given as GeoJSON (QuPath) comes through here as well, rasterised
# on the same grid, so every later step sees a mask overlay like any other.
# Next to each mask: its QuPath GeoJSON (one annotation per label).


rule tissue_mask:
    input:
        unpack(mask_inputs),
    output:
        mask="results/masks/{slide}/{key}.tiff",
        geojson="results/masks/{slide}/{key}.geojson",
    params:
        files=step_files,
        job=step_job(
            mpp=config["mask"]["mpp"],
            method=tissue_method,
            extra=config["mask"]["params"],
            mpp_override=mpp_override,
            geojson_classes=config["mask"]["geojson_classes"],
        ),
    log:
        "results/logs/tissue_mask/{slide}/{key}.log",
    benchmark:
        "results/benchmarks/tissue_mask/{slide}/{key}.tsv"
    group:
        "slide"
    priority: slide_priority
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        STEP_SHELL
