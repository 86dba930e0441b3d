from mask_first.pipeline import concat_tables, run_step

run_step(None, snakemake.log[0], concat_tables, list(snakemake.input), snakemake.output[0])
