from mask_first.pipeline import run_step, write_retained_pixels

p = snakemake.params
run_step(snakemake.wildcards.slide, snakemake.log[0], write_retained_pixels, snakemake.input.retained,
         snakemake.input.slide, snakemake.output[0], encoding=p.encoding, jpeg_quality=p.jpeg_quality, compression=p.compression,
         row_group_tiles=p.row_group_tiles, threads=snakemake.threads, mpp_override=p.mpp_override,
         resample=p.resample, mpp=p.mpp, tile_extent=p.tile_extent, corrupt_tiles=p.corrupt_tiles)
