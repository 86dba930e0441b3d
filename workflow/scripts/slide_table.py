from mask_first.pipeline import run_step, write_slide_table

run_step(None, snakemake.log[0], write_slide_table, list(snakemake.params.slides), snakemake.output[0])
