from mask_first.pipeline import run_step, write_slide_info

p = snakemake.params
run_step(snakemake.wildcards.slide, snakemake.log[0], write_slide_info, snakemake.input.slide, snakemake.output[0],
         slide_id=snakemake.wildcards.slide, mpp=p.mpp, level=p.level, tile_extent=p.tile_extent,
         stride=p.stride, mpp_override=p.mpp_override)
