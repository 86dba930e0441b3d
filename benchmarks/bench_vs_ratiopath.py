"""mask-first against the seed system (ratiopath 1.5.0) on the same slides and settings, in one run.

Usage::

    bash ../shared/tools/ratiopath/install.sh /tmp/rp-venv       # once; this script installs nothing
    python benchmarks/bench_vs_ratiopath.py --venv /tmp/rp-venv [--with-seed] [--work /tmp/mf-vs-rp]

The cohort (generated once into ``--work`` and reused):

* ``resection``: 60000 x 45000 px synthetic H&E at 0.25 µm/px (a 40x resection);
* ``biopsy-a``: 20000 x 15000 px at 0.25 µm/px; ``biopsy-b``: 24000 x 18000 px at 0.5 µm/px;
* ``cmu-mosaic``: real pixels -- CMU-1-Small-Region.svs (../shared) tiled 3 x 2 on glass, 0.499 µm/px,
  written as a JPEG pyramid.

Settings are the seed document's: tiles of 512 px at 0.5 µm/px, stride 512, mask at 8 µm/px,
threshold 0.5, RGB of the retained tiles read. ratiopath runs ``seed_pipeline.py --mask-mode lowres``
(its best mode: mask from a low-resolution page) and, with ``--with-seed``, ``--mask-mode seed`` (the
document verbatim, mask from level 0); mask-first runs ``snakemake --cores 2`` in a fresh directory
(masks, tile tables, retained tables, QC pictures and the retained tiles' pixels written to Parquet).
Both get 2 CPUs. Peak memory is the summed resident memory of the whole process tree (Ray workers,
Snakemake jobs), sampled every 0.25 s by the same method for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SEED_PIPELINE = SHARED / "tools" / "ratiopath" / "seed_pipeline.py"
sys.path.insert(0, str(REPO))  # runnable from a plain checkout

SETTINGS = {"mpp": 0.5, "tile": 512, "stride": 512, "mask_mpp": 8.0, "threshold": 0.5}


# ---------------------------------------------------------------- the cohort
def _cmu_mosaic(path: Path) -> Path:
    """Real H&E pixels at a biopsy-like size: CMU-1-Small-Region tiled 3 x 2 on white glass."""
    import numpy as np
    import tifffile

    from mask_first.slides import open_slide

    with open_slide(SHARED / "data" / "slides" / "CMU-1-Small-Region.svs") as s:
        tile = s.read_level(0)
        mpp = s.mpp_x
    h, w = tile.shape[:2]
    gap = 256
    mosaic = np.full((2 * h + 3 * gap, 3 * w + 4 * gap, 3), 242, np.uint8)
    for j in range(2):
        for i in range(3):
            y, x = gap + j * (h + gap), gap + i * (w + gap)
            mosaic[y : y + h, x : x + w] = tile
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
        img, k = mosaic, 0
        while True:
            res = 1e4 / (mpp * 2**k)
            tw.write(img, tile=(256, 256), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                     subfiletype=1 if k else 0, resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)
            if max(img.shape[:2]) <= 512:
                break
            img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
            img = img.reshape(img.shape[0] // 2, 2, img.shape[1] // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            k += 1
    os.replace(tmp, path)
    return path


def make_cohort(work: Path) -> dict[str, Path]:
    from mask_first.synthetic import write_synthetic_slide

    slides_dir = work / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    specs = {
        "resection": dict(width=60000, height=45000, mpp=0.25, seed=61),
        "biopsy-a": dict(width=20000, height=15000, mpp=0.25, seed=62),
        "biopsy-b": dict(width=24000, height=18000, mpp=0.5, seed=63),
    }
    out = {}
    for sid, spec in specs.items():
        path = slides_dir / f"{sid}.tiff"
        if not path.exists():
            print(f"generating {sid} ({spec['width']} x {spec['height']} px) ...", flush=True)
            write_synthetic_slide(path, spec.pop("width"), spec.pop("height"), kind="he", **spec)
        out[sid] = path
    mosaic = slides_dir / "cmu-mosaic.tiff"
    out["cmu-mosaic"] = mosaic if mosaic.exists() else _cmu_mosaic(mosaic)
    return out


# ---------------------------------------------------------------- measuring
class TreeRSS:
    """Peak of the summed resident memory of a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def _run(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """(wall seconds, peak tree RSS MiB) of one command; its output goes to ``log``."""
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        mem = TreeRSS(proc.pid)
        rc = proc.wait()
        wall = time.perf_counter() - t0
        peak = mem.stop()
    if rc != 0:
        raise SystemExit(f"{cmd[0]} failed (exit {rc}); see {log}")
    return wall, peak


def run_ratiopath(venv: Path, slides: dict[str, Path], work: Path, mode: str) -> dict:
    out = work / f"ratiopath-{mode}"
    masks = out / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for old in masks.iterdir():
        old.unlink()
    cmd = [str(venv / "bin" / "python"), str(SEED_PIPELINE), "--slides", *map(str, slides.values()),
           "--mask-dir", str(masks), "--mask-mode", mode, "--mask-mpp", str(SETTINGS["mask_mpp"]),
           "--mpp", str(SETTINGS["mpp"]), "--tile", str(SETTINGS["tile"]), "--stride", str(SETTINGS["stride"]),
           "--threshold", str(SETTINGS["threshold"]), "--safe-get", "--num-cpus", "2"]
    log = out / "run.log"
    wall, peak = _run(cmd, out, log)
    summary = json.loads(next(ln for ln in reversed(log.read_text().splitlines()) if ln.startswith("SUMMARY "))[8:])
    return {"system": f"ratiopath {mode}", "wall_s": wall, "peak_rss_mib": peak,
            "tiles_total": summary["tiles_total"], "tiles_retained": summary["tiles_retained"]}


def run_mask_first(slides: dict[str, Path], work: Path, snakemake: str = "snakemake") -> dict:
    import yaml

    out = work / "mask-first"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    sheet = out / "slides.tsv"
    sheet.write_text("slide_id\tpath\n" + "".join(f"{sid}\t{p}\n" for sid, p in slides.items()))
    config = {
        "samples": str(sheet),
        "mask": {"mpp": SETTINGS["mask_mpp"]},
        "tiling": {"mpp": SETTINGS["mpp"], "tile_extent": SETTINGS["tile"], "stride": SETTINGS["stride"]},
        "filter": {"tissue_threshold": SETTINGS["threshold"]},
    }
    (out / "bench.yaml").write_text(yaml.safe_dump(config))
    cmd = [snakemake, "-s", str(REPO / "Snakefile"), "-d", str(out), "--configfile", str(out / "bench.yaml"),
           "--cores", "2", "--quiet"]
    wall, peak = _run(cmd, out, out / "run.log")
    rows = (out / "results" / "summary.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    recs = [dict(zip(header, r.split("\t"))) for r in rows[1:]]
    return {"system": "mask-first snakemake --cores 2", "wall_s": wall, "peak_rss_mib": peak,
            "tiles_total": sum(int(r["tiles_total"]) for r in recs),
            "tiles_retained": sum(int(r["tiles_retained"]) for r in recs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, required=True, help="ratiopath venv made by ../shared/tools/ratiopath/install.sh")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mf-vs-rp"), help="slides and outputs (slides are reused)")
    parser.add_argument("--with-seed", action="store_true", help="also run the seed document verbatim (mask from level 0; slow)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate mask-first and ratiopath lowres this often")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each system back to back within a round (all kept; the fastest counts): a "
                             "machine that pages cold memory out, this one included, slows whichever system runs "
                             "first after the other one")
    parser.add_argument("--snakemake", default="snakemake",
                        help="the snakemake to run, e.g. VENV/bin/snakemake of a plain `pip install -e .` (the "
                             "README's install: no SLURM plugin, which costs every snakemake start ~0.4 s)")
    args = parser.parse_args(argv)
    if not (args.venv / "bin" / "python").exists():
        raise SystemExit(f"no ratiopath venv at {args.venv}: run bash {SHARED}/tools/ratiopath/install.sh {args.venv}")
    slides = make_cohort(args.work)
    # alternate the systems round by round and keep each one's fastest run: load from
    # other work on a shared machine then hits both alike
    runs: dict[str, list[dict]] = {}
    systems = (lambda: run_mask_first(slides, args.work, args.snakemake),
               lambda: run_ratiopath(args.venv, slides, args.work, "lowres"))
    for _ in range(args.rounds):
        for run in systems:
            for _ in range(args.repeat):
                r = run()
                runs.setdefault(r["system"], []).append(r)
                print(f"  {r['system']}: {r['wall_s']:.1f} s, {r['peak_rss_mib']:.0f} MiB", flush=True)
    if args.with_seed:
        r = run_ratiopath(args.venv, slides, args.work, "seed")
        runs[r["system"]] = [r]
    results = []
    for rs in runs.values():
        best = dict(min(rs, key=lambda r: r["wall_s"]))
        best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rs)  # memory: the worst run
        best["walls_s"] = [round(r["wall_s"], 2) for r in rs]
        results.append(best)
    base = results[0]
    print(f"\n{'system':<34}{'wall s':>9}{'peak RSS MiB':>14}{'tiles':>9}{'retained':>10}{'time ratio':>12}{'RSS ratio':>11}")
    for r in results:
        r["time_ratio_vs_mask_first"] = round(r["wall_s"] / base["wall_s"], 2)
        r["rss_ratio_vs_mask_first"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 2)
        print(f"{r['system']:<34}{r['wall_s']:>9.1f}{r['peak_rss_mib']:>14.0f}{r['tiles_total']:>9}"
              f"{r['tiles_retained']:>10}{r['time_ratio_vs_mask_first']:>11.2f}x{r['rss_ratio_vs_mask_first']:>10.2f}x")
    print(json.dumps({"slides": {k: str(v) for k, v in slides.items()}, "settings": SETTINGS, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
