from mask_first.pipeline import filter_tiles_by_mask, filter_tiles_by_pixel_std, run_step

p, i = snakemake.params, snakemake.input
if p.method == "mask":
    run_step(snakemake.wildcards.slide, snakemake.log[0], filter_tiles_by_mask, i.tiles, i.mask,
             snakemake.output[0], threshold=p.threshold, value=p.value)
else:
    run_step(snakemake.wildcards.slide, snakemake.log[0], filter_tiles_by_pixel_std, i.tiles, i.slide,
             snakemake.output[0], threshold=p.threshold, threads=snakemake.threads, mpp_override=p.mpp_override)
