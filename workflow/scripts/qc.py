from mask_first.pipeline import run_step, write_qc_image

i = snakemake.input
run_step(snakemake.wildcards.slide, snakemake.log[0], write_qc_image, i.slide, i.retained, snakemake.output[0],
         mask=i.get("mask"), size=snakemake.params.size, mpp_override=snakemake.params.mpp_override)
