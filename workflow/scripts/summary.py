from mask_first.pipeline import run_step, write_summary

i, p = snakemake.input, snakemake.params
run_step(None, snakemake.log[0], write_summary, p.slides, list(i.retained), p.benchmarks, snakemake.output[0])
