from mask_first.pipeline import run_step, write_summary

i, p = snakemake.input, snakemake.params
masks = list(i.masks) or [None] * len(p.slides)
run_step(None, snakemake.log[0], write_summary, p.slides, list(i.retained), masks, p.benchmarks, snakemake.output[0])
