from mask_first.pipeline import run_step, write_slide_table

run_step(None, snakemake.log[0], write_slide_table, list(snakemake.input), snakemake.output[0],
         masks=list(snakemake.params.masks))
