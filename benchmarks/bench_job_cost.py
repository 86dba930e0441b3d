"""Fixed cost of a per-slide job: interpreter + imports + Snakemake's script preamble.

Usage::

    python benchmarks/bench_job_cost.py [--slides 6]

Runs the real workflow (default config, ``--cores 1`` so jobs do not compete)
on tiny slides (512 x 384 px, one tile of work per step), where a job's wall
time is almost all fixed cost, and, in the same run, a workflow of empty
``script:`` jobs (the floor Snakemake's script preamble sets) and of empty
``shell:`` jobs starting the interpreter (the floor of the per-slide shell
jobs: tissue_mask, tiles, filter_tiles). Prints the median seconds per job of
each rule from Snakemake's benchmark files, the bare floors, and each rule's
cost over the script floor, then the wall time of both whole runs per job
(Snakemake's start-up, DAG and scheduling included). Bar of issue 9: every
per-slide job <= 0.35 s.
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

        # the real workflow on tiny slides
        real = work / "real"
        real.mkdir()
        rows = []
        for i in range(args.slides):
            path = write_synthetic_slide(real / f"s{i}.tiff", 512, 384, mpp=0.5, seed=100 + i, n_levels=1)
            rows.append(f"s{i}\t{path}\n")
        (real / "slides.tsv").write_text("slide_id\tpath\n" + "".join(rows))
        (real / "cfg.yaml").write_text(f"samples: {real / 'slides.tsv'}\n")
        t0 = time.perf_counter()
        subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(real), "--configfile",
                        str(real / "cfg.yaml"), "--cores", "1", "--quiet"], check=True, capture_output=True)
        real_wall = time.perf_counter() - t0
        per_rule = _per_rule(real / "results" / "benchmarks")

    print(f"{'job':<14}{'median s':>10}{'over floor':>12}")
    print(f"{'bare script':<14}{floor:>10.3f}{'':>12}")
    print(f"{'bare shell':<14}{shell_floor:>10.3f}{'':>12}")
    report = {"bare_script_s": round(floor, 3), "bare_shell_s": round(shell_floor, 3)}
    for rule, secs in sorted(per_rule.items()):
        med = statistics.median(secs)
        report[rule] = round(med, 3)
        print(f"{rule:<14}{med:>10.3f}{med - floor:>+12.3f}")
    per_slide = {r: s for r, s in report.items() if r in ("tissue_mask", "tiles", "filter_tiles", "pixels")}
    report["max_per_slide_job_s"] = max(per_slide.values())
    # whole runs, Snakemake's own start-up and scheduling included
    n_real = sum(len(v) for v in per_rule.values())
    report["bare_run_s_per_job"] = round(bare_wall / (2 * args.slides), 3)
    report["real_run_s_per_job"] = round(real_wall / n_real, 3)
    report["real_run_s_per_slide"] = round(real_wall / args.slides, 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
