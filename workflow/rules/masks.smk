# Tissue masks, one per slide and mask setting. The key (a hash of every mask
# parameter) is part of the path, so switching back to an earlier setting finds
# its mask already made, and the filter that reads it sees its input change.


rule tissue_mask:
    input:
        slide=slide_path,
    output:
        "results/masks/{slide}/{key}.tiff",
    params:
        mpp=config["mask"]["mpp"],
        method=tissue_method,
        extra=config["mask"]["params"],
        mpp_override=mpp_override,
    log:
        "results/logs/tissue_mask/{slide}/{key}.log",
    benchmark:
        "results/benchmarks/tissue_mask/{slide}/{key}.tsv"
    group:
        "slide"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    script:
        "../scripts/tissue_mask.py"
