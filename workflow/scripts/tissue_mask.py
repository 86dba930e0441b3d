from mask_first.pipeline import make_tissue_mask, run_step

i, p, o = snakemake.input, snakemake.params, snakemake.output
run_step(snakemake.wildcards.slide, snakemake.log[0], make_tissue_mask, i.slide, o.mask,
         slide_id=snakemake.wildcards.slide, mpp=p.mpp, method=p.method, params=dict(p.extra),
         mpp_override=p.mpp_override, out_geojson=o.geojson, geojson=i.get("geojson"),
         geojson_classes=list(p.geojson_classes or []))
