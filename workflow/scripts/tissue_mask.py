from mask_first.pipeline import make_tissue_mask, run_step

p = snakemake.params
run_step(snakemake.wildcards.slide, snakemake.log[0], make_tissue_mask, snakemake.input.slide, snakemake.output[0],
         slide_id=snakemake.wildcards.slide, mpp=p.mpp, method=p.method, params=dict(p.extra),
         mpp_override=p.mpp_override)
