from mask_first.pipeline import run_step, write_tiles

p, o = snakemake.params, snakemake.output
run_step(snakemake.wildcards.slide, snakemake.log[0], write_tiles, snakemake.input.slide, o.info, o.tiles,
         slide_id=snakemake.wildcards.slide, mpp=p.mpp, level=p.level, tile_extent=p.tile_extent,
         stride=p.stride, last=p.last, mpp_override=p.mpp_override)
