# mask-first: tissue masks first, RGB pixels only for the tiles that hold tissue.
#
#   snakemake --cores 2                       # demo cohort, generated on the fly
#   snakemake --cores 8 --config samples=config/slides.tsv
#   snakemake --profile profiles/slurm        # on a SLURM cluster
from snakemake.utils import min_version, validate

min_version("8.0")


# defaults live beside the Snakefile, so the workflow also runs from another
# working directory; --configfile / --config values override them
configfile: f"{workflow.basedir}/config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/tiles.smk"
include: "workflow/rules/pixels.smk"
include: "workflow/rules/cohort.smk"

# heatmaps come from the configured model, or else from a table of predictions
if predict_enabled():

    include: "workflow/rules/predict.smk"

else:

    include: "workflow/rules/heatmaps.smk"



# local runs: the per-slide jobs fork one warm process (workflow/rules/common.smk)
onstart:
    start_warm_process()


# A failed slide stops the cohort rules from running; write the cohort tables
# anyway, listing every slide with its status (workflow/rules/cohort.smk).
# Snakemake still exits non-zero.
onerror:
    stop_warm_process()
    write_cohort_tables("failure")


# after a successful run, rewrite them only if a slide's status changed since
onsuccess:
    stop_warm_process()
    write_cohort_tables("success")


rule all:
    input:
        all_targets(),
    default_target: True
