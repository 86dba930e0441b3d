from mask_first.pipeline import run_step, write_heatmap

p, o = snakemake.params, snakemake.output
run_step(snakemake.wildcards.slide, snakemake.log[0], write_heatmap, snakemake.input.predictions,
         snakemake.input.slide_info, o.tiff, o.png, columns=list(p.columns), storage=p.storage,
         aggregation=p.aggregation, size=p.size)
