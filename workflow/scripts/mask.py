from mask_first.pipeline import copy_or_import_mask, run_step

run_step(snakemake.wildcards.slide, snakemake.log[0], copy_or_import_mask, snakemake.input.mask,
         snakemake.input.slide, snakemake.output[0], user_mask=snakemake.params.user_mask,
         mpp_override=snakemake.params.mpp_override)
