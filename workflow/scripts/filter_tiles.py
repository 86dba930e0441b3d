from mask_first.pipeline import filter_tiles, run_step

i, p, o = snakemake.input, snakemake.params, snakemake.output
run_step(snakemake.wildcards.slide, snakemake.log[0], filter_tiles, i.tiles, i.slide, o.retained, o.qc,
         method=p.method, threshold=p.threshold, mask=i.get("mask"), value=p.value, user_mask=p.user_mask,
         qc_size=p.qc_size, threads=snakemake.threads, mpp_override=p.mpp_override,
         slide_id=snakemake.wildcards.slide, out_coords=o.coords, out_tile_objects=o.get("tile_objects"),
         mask_geojson=i.get("mask_geojson"))
