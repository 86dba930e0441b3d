"""Fixed cost of a per-slide job: interpreter + imports + Snakemake's script preamble.

Usage::

    python benchmarks/bench_job_cost.py [--slides 6]

Runs the real workflow (default config, ``--cores 1`` so jobs do not compete)
on tiny slides (512 x 384 px, one tile of work per step), where a job's wall
time is almost all fixed cost, and, in the same run, a workflow of empty
``script:`` jobs (the floor Snakemake's script preamble sets) and of empty
``shell:`` jobs starting the interpreter (the floor of the per-slide shell
jobs: tissue_mask, tiles, filter_tiles, pixels). Prints the median seconds
per job of each rule from Snakemake's benchmark files, the bare floors, and
each rule's warm cost over the shell floor, then (JSON) the wall time of the
whole runs per job and per slide (Snakemake's start-up, DAG and scheduling
included). Bar of issue 9: every per-slide job <= 0.35 s.

The real workflow runs twice: with warm start (the default: the per-slide
jobs are forks of one process that imported the libraries,
``mask_first/forkserver.py``) and with ``warm_start: false`` (every job its
own interpreter), so both figures come from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a plain checkout
from mask_first.synthetic import write_synthetic_slide  # noqa: E402

BARE_SNAKEFILE = """\
import sys

rule all:
    input: expand("out/{i}.txt", i=range(N)), expand("out_shell/{i}.txt", i=range(N))

rule bare:
    output: "out/{i}.txt"
    benchmark: "bench/bare/{i}.tsv"
    script: "bare.py"

# the interpreter alone, started as the per-slide shell jobs start it
rule bare_shell:
    output: "out_shell/{i}.txt"
    benchmark: "bench/bare_shell/{i}.tsv"
    shell: "{sys.executable:q} -c 'import pathlib, sys; pathlib.Path(sys.argv[1]).touch()' {output:q}"
"""


def _seconds(tsv: Path) -> float:
    header, values = tsv.read_text().splitlines()[:2]
    return float(dict(zip(header.split("\t"), values.split("\t")))["s"])


def _per_rule(bench_dir: Path) -> dict[str, list[float]]:
    """Seconds of every job, by rule (``<rule>/<slide>.tsv`` or ``<rule>/<slide>/<key>.tsv``)."""
    out: dict[str, list[float]] = {}
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        out.setdefault(tsv.relative_to(bench_dir).parts[0], []).append(_seconds(tsv))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=6, help="tiny slides (jobs per rule)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the floor: empty script jobs
        bare = work / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text(BARE_SNAKEFILE.replace("N", str(args.slides)))
        (bare / "bare.py").write_text("open(snakemake.output[0], 'w').close()\n")
        t0 = time.perf_counter()
        subprocess.run(["snakemake", "-s", str(bare / "Snakefile"), "-d", str(bare), "--cores", "1", "--quiet"],
                       check=True, capture_output=True)
        bare_wall = time.perf_counter() - t0
        bare_jobs = _per_rule(bare / "bench")
        floor = statistics.median(bare_jobs["bare"])
        shell_floor = statistics.median(bare_jobs["bare_shell"])

        # the real workflow on tiny slides, with warm start (the default) and without
        real = work / "real"
        real.mkdir()
        rows = []
        for i in range(args.slides):
            path = write_synthetic_slide(real / f"s{i}.tiff", 512, 384, mpp=0.5, seed=100 + i, n_levels=1)
            rows.append(f"s{i}\t{path}\n")
        (real / "slides.tsv").write_text("slide_id\tpath\n" + "".join(rows))
        runs = {}
        for mode in ("warm", "cold"):
            d = real / mode
            d.mkdir()
            (d / "cfg.yaml").write_text(f"samples: {real / 'slides.tsv'}\nwarm_start: {str(mode == 'warm').lower()}\n")
            t0 = time.perf_counter()
            subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(d), "--configfile",
                            str(d / "cfg.yaml"), "--cores", "1", "--quiet"], check=True, capture_output=True)
            runs[mode] = (time.perf_counter() - t0, _per_rule(d / "results" / "benchmarks"))

    print(f"{'job':<14}{'warm s':>9}{'cold s':>9}{'warm-bare':>11}")
    print(f"{'bare script':<14}{floor:>9.3f}")
    print(f"{'bare shell':<14}{shell_floor:>9.3f}")
    report = {"bare_script_s": round(floor, 3), "bare_shell_s": round(shell_floor, 3)}
    for mode, (wall, per_rule) in runs.items():
        for rule, secs in per_rule.items():
            report[f"{rule}_{mode}"] = round(statistics.median(secs), 3)
        n_real = sum(len(v) for v in per_rule.values())
        report[f"run_s_per_job_{mode}"] = round(wall / n_real, 3)
        report[f"run_s_per_slide_{mode}"] = round(wall / args.slides, 3)
    for rule in sorted(runs["warm"][1]):
        warm, cold = report[f"{rule}_warm"], report[f"{rule}_cold"]
        print(f"{rule:<14}{warm:>9.3f}{cold:>9.3f}{warm - shell_floor:>+11.3f}")
    per_slide = ("tissue_mask", "tiles", "filter_tiles", "pixels")
    report["max_per_slide_job_s_warm"] = max(report[f"{r}_warm"] for r in per_slide)
    report["max_per_slide_job_s_cold"] = max(report[f"{r}_cold"] for r in per_slide)
    report["bare_run_s_per_job"] = round(bare_wall / (2 * args.slides), 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
