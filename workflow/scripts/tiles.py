from mask_first.pipeline import run_step, write_tile_table

run_step(snakemake.wildcards.slide, snakemake.log[0], write_tile_table, snakemake.input[0], snakemake.output[0],
         last=snakemake.params.last)
