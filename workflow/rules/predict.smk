# A model on the retained tiles, its outputs assembled into a heatmap (MaskBuilder):
# one job per slide, only when `predict.model` or `predict.onnx` is set. The
# model's file is an input, so editing it (or its config, or the tiles) reruns
# exactly these jobs.
from mask_first.predict import model_source

if config["heatmap"]["predictions"]:
    _fail("set either predict.model/predict.onnx or heatmap.predictions, not both: both make results/heatmaps/")
try:
    MODEL_FILE = model_source(config["predict"]["model"]) if config["predict"]["model"] else config["predict"]["onnx"]
except ValueError as exc:
    _fail(str(exc))
if not Path(MODEL_FILE).is_file():
    _fail(f"predict.onnx: file {MODEL_FILE} not found")


@fixed_signature
def predict_inputs(wildcards):
    inputs = {
        "retained": f"results/retained/{wildcards.slide}.parquet",
        "slide_info": f"results/slides/{wildcards.slide}.parquet",
        "model": MODEL_FILE,
    }
    if pixels_enabled():
        inputs["pixels"] = f"results/pixels/{wildcards.slide}.parquet"
    else:
        inputs["slide"] = SLIDE[wildcards.slide]["path"]
    return inputs


rule predict:
    input:
        unpack(predict_inputs),
    output:
        predictions="results/predictions/{slide}.parquet",
        tiff="results/heatmaps/{slide}.tiff",
        png=report(
            "results/heatmaps/{slide}.png",
            caption="../report/predictions.rst",
            category="Predictions",
            labels={"slide": "{slide}"},
        ),
    params:
        model=config["predict"]["model"],
        onnx=config["predict"]["onnx"],
        input=config["predict"]["input"],
        providers=config["predict"]["providers"],
        batch_size=config["predict"]["batch_size"],
        columns=config["predict"]["columns"],
        edge_clipping=config["predict"]["edge_clipping"],
        map_dtype=config["predict"]["map_dtype"],
        aggregation=config["heatmap"]["aggregation"],
        storage=config["heatmap"]["storage"],
        size=config["qc"]["size"],
        mpp_override=mpp_override,
        resample=config["pixels"]["resample"],
        mpp=config["tiling"]["mpp"],
        tile_extent=config["tiling"]["tile_extent"],
    log:
        "results/logs/predict/{slide}.log",
    benchmark:
        "results/benchmarks/predict/{slide}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/predict.py"
