# Tissue masks: made once per (slide, mask parameters) and cached under a key of
# those parameters, so toggling between two configs never recomputes a mask.


rule tissue_mask:
    input:
        slide=slide_path,
    output:
        "results/masks/cache/{slide}/{key}.tiff",
    params:
        mpp=config["mask"]["mpp"],
        method=tissue_method,
        extra=config["mask"].get("params") or {},
        mpp_override=mpp_override,
    log:
        "results/logs/tissue_mask/{slide}-{key}.log",
    benchmark:
        "results/benchmarks/tissue_mask/{slide}-{key}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    script:
        "../scripts/tissue_mask.py"


rule mask:
    input:
        mask=mask_source,
        slide=slide_path,
    output:
        "results/masks/{slide}.tiff",
    params:
        # the key makes a parameter change visible even when the cached file is older
        source=mask_source,
        user_mask=lambda wc: bool(sample(wc)["mask"]),
        mpp_override=mpp_override,
    log:
        "results/logs/mask/{slide}.log",
    benchmark:
        "results/benchmarks/mask/{slide}.tsv"
    group:
        "slide"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/mask.py"
