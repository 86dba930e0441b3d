from mask_first.pipeline import run_step, write_summary

p, o = snakemake.params, snakemake.output
run_step(None, snakemake.log[0], write_summary, list(p.slides), o.summary, o.sheet,
         border_fraction=p.border_fraction, area_outlier_z=p.area_outlier_z, ink_area_mm2=p.ink_area_mm2)
