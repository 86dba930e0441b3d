from mask_first.pipeline import run_step, write_predictions

i, p, o = snakemake.input, snakemake.params, snakemake.output
run_step(snakemake.wildcards.slide, snakemake.log[0], write_predictions, i.retained, i.slide_info,
         o.predictions, o.tiff, o.png, model=p.model, onnx=p.onnx, pixels=i.get("pixels"),
         slide_path=i.get("slide"), columns=list(p.columns), batch_size=p.batch_size,
         edge_clipping=p.edge_clipping, map_dtype=p.map_dtype, normalisation=dict(p.input),
         providers=list(p.providers), aggregation=p.aggregation, storage=p.storage, size=p.size,
         threads=snakemake.threads, mpp_override=p.mpp_override,
         resample=p.resample, mpp=p.mpp, tile_extent=p.tile_extent)
