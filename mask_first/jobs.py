"""The per-slide shell jobs' entry point: ``step.py STEP LOG THREADS FILES_JSON JOB_JSON``.

The rules ``tissue_mask``, ``tiles``, ``filter_tiles`` and ``pixels`` run as ``shell:``
jobs (``workflow/scripts/step.py``, see ``workflow/rules/common.smk``) rather
than ``script:`` jobs: the job's process then skips Snakemake's script preamble
(unpickling the job object imports Snakemake, 0.05-0.08 s a job), and the DAG
skips Snakemake's per-job script check (about 13 % of a 10,000-slide dry run);
figures in docs/benchmarks.md.

``FILES_JSON`` and ``JOB_JSON`` are the rule's ``params.files`` and
``params.job`` (``common.smk``'s ``step_files`` and ``step_job``)::

    {"slide": <slide id>, "input": {name: path}, "output": {name: path}}
    {name: value}                                  # the step's settings

Each step unpacks it exactly as a ``script:`` adapter unpacks ``snakemake``
and calls its :mod:`mask_first.pipeline` function through
:func:`~mask_first.pipeline.run_step` (same log, failure file and exit status).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def _tissue_mask(slide: str, log: str, i: Mapping, o: Mapping, p: Mapping[str, Any], threads: int) -> None:
    from mask_first.pipeline import make_tissue_mask, run_step

    run_step(slide, log, make_tissue_mask, i["slide"], o["mask"], slide_id=slide, mpp=p["mpp"],
             method=p["method"], params=dict(p["extra"]), mpp_override=p["mpp_override"],
             out_geojson=o["geojson"], geojson=i.get("geojson"),
             geojson_classes=list(p["geojson_classes"] or []))


def _tiles(slide: str, log: str, i: Mapping, o: Mapping, p: Mapping[str, Any], threads: int) -> None:
    from mask_first.pipeline import run_step, write_tiles

    run_step(slide, log, write_tiles, i["slide"], o["info"], o["tiles"], slide_id=slide, mpp=p["mpp"],
             level=p["level"], tile_extent=p["tile_extent"], stride=p["stride"], last=p["last"],
             mpp_override=p["mpp_override"])


def _filter_tiles(slide: str, log: str, i: Mapping, o: Mapping, p: Mapping[str, Any], threads: int) -> None:
    from mask_first.pipeline import filter_tiles, run_step

    run_step(slide, log, filter_tiles, i["tiles"], i["slide"], o["retained"], o["qc"], method=p["method"],
             threshold=p["threshold"], mask=i.get("mask"), value=p["value"], user_mask=p["user_mask"],
             qc_size=p["qc_size"], threads=threads, mpp_override=p["mpp_override"], slide_id=slide,
             out_coords=o["coords"], out_tile_objects=o.get("tile_objects"), mask_geojson=i.get("mask_geojson"))


def _pixels(slide: str, log: str, i: Mapping, o: Mapping, p: Mapping[str, Any], threads: int) -> None:
    from mask_first.pipeline import run_step, write_retained_pixels

    run_step(slide, log, write_retained_pixels, i["retained"], i["slide"], o["pixels"], encoding=p["encoding"],
             jpeg_quality=p["jpeg_quality"], compression=p["compression"], row_group_tiles=p["row_group_tiles"],
             threads=threads, mpp_override=p["mpp_override"], resample=p["resample"], mpp=p["mpp"],
             tile_extent=p["tile_extent"], corrupt_tiles=p["corrupt_tiles"])


#: rule name -> step
STEPS = {"tissue_mask": _tissue_mask, "tiles": _tiles, "filter_tiles": _filter_tiles, "pixels": _pixels}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one step: ``argv`` is ``[STEP, LOG, THREADS, FILES_JSON, JOB_JSON]``; returns 0 (a failed step exits 1 in run_step)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 5 or argv[0] not in STEPS:
        raise SystemExit(f"usage: step.py {{{','.join(STEPS)}}} LOG THREADS FILES_JSON JOB_JSON")
    step, log, threads, files, settings = argv
    files = json.loads(files)
    STEPS[step](files["slide"], log, files["input"], files["output"], json.loads(settings), int(threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
