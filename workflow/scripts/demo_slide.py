from mask_first.pipeline import run_step, write_demo_slide

run_step(snakemake.wildcards.slide, snakemake.log[0], write_demo_slide, snakemake.output[0],
         spec=snakemake.params.spec)
