"""Time the dry run (DAG building) of large cohorts: 1,000 and 10,000 slides.

Usage::

    python benchmarks/bench_scale.py                      # 1,000 and 10,000 slides
    python benchmarks/bench_scale.py --sizes 1000 10000 30000 --repeat 2

Every slide of the sheet is a distinct file (a hard link to one small
synthetic slide: the dry run only stats it), the config is the default one, and the command is the
one users run: ``snakemake -s Snakefile --configfile cfg.yaml -n --cores 2 --quiet``.
Each run happens in a fresh process; prints one JSON line per run (wall and
CPU seconds, seconds per slide, peak RSS of the snakemake process) and then the
ratio of the largest to the smallest cohort, which is ~1 for linear scaling.
Wall time includes waiting for the CPU: on a busy machine compare ``user_s``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a plain checkout
from mask_first.synthetic import write_synthetic_slide  # noqa: E402

#: times one command in a fresh process: wall, CPU and peak RSS of the child
_TIMER = """\
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t0, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                  "max_rss_mib": ru.ru_maxrss / 1024}))
"""


def dry_run(workdir: Path, slide: Path, n: int) -> dict:
    cohort = workdir / "cohort"
    cohort.mkdir(exist_ok=True)
    paths = [cohort / f"s{i:06d}.tiff" for i in range(n)]
    for p in paths:
        if not p.exists():
            p.hardlink_to(slide)
    sheet = workdir / f"slides{n}.tsv"
    sheet.write_text("slide_id\tpath\n" + "".join(f"{p.stem}\t{p}\n" for p in paths))
    cfg = workdir / f"cfg{n}.yaml"
    cfg.write_text(f"samples: {sheet}\n")
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(cfg),
           "-n", "--cores", "2", "--quiet"]
    out = subprocess.run([sys.executable, "-c", _TIMER, *cmd], capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout)
    if rec["rc"] != 0:
        raise SystemExit(f"dry run of {n} slides failed: rerun `{' '.join(cmd)}` to see why")
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000], help="cohort sizes (slides)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the median is reported")
    args = parser.parse_args(argv)

    from importlib.metadata import version

    print(json.dumps({"snakemake": version("snakemake")}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide = write_synthetic_slide(work / "slide.tiff", 512, 512, mpp=0.5, seed=3)
        results = {}
        for n in sorted(args.sizes):
            runs = [dry_run(work, slide, n) for _ in range(args.repeat)]
            rec = {
                "slides": n,
                "jobs": 4 * n + 3,  # tissue_mask, tiles, filter_tiles, pixels; slide_table, summary, all
                "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
                "user_s": round(statistics.median(r["user_s"] for r in runs), 2),
                "sys_s": round(statistics.median(r["sys_s"] for r in runs), 2),
                "max_rss_mib": round(max(r["max_rss_mib"] for r in runs)),
            }
            rec["wall_s_per_slide"] = round(rec["wall_s"] / n, 5)
            rec["user_s_per_slide"] = round(rec["user_s"] / n, 5)
            results[n] = rec
            print(json.dumps(rec), flush=True)
    small, large = results[min(results)], results[max(results)]
    if large is not small:
        print(json.dumps({
            "ratio": f"{large['slides']}/{small['slides']}",
            "slides_ratio": large["slides"] / small["slides"],
            "wall_ratio": round(large["wall_s"] / small["wall_s"], 2),
            "per_slide_wall_ratio": round(large["wall_s_per_slide"] / small["wall_s_per_slide"], 2),
            "per_slide_user_ratio": round(large["user_s_per_slide"] / small["user_s_per_slide"], 2),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
