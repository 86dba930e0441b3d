#!/usr/bin/env python
"""Mutation audit of the core modules: one small plausible bug at a time, then the tests that target it.

Each mutant is ``(id, file, original snippet, replacement, tests)``: the exact
original text must occur exactly once in the file, else the audit stops with
an error before running anything (the code moved: update the snippet; a
mutant is never skipped silently). Mutants run in a temporary copy of the
tree with ``PYTHONPATH`` pointing at it, never in the working tree. A mutant
is *killed* when its test selection fails (any non-zero pytest exit status
but 5, "no tests collected", which is an error of the audit itself), *survived*
when it passes. The unmutated copy must pass every selection first, with
``CI=true`` so that no test of a selection can skip (the real slides are
taken from ``../shared`` beside the working tree, or ``MASK_FIRST_SHARED_SLIDES``).

Usage::

    python tools/mutation.py                 # all mutants, 2 workers
    python tools/mutation.py --jobs 1 -k coverage   # mutants whose id contains "coverage"
    python tools/mutation.py --markdown docs/mutation.md   # also write the table

Exit status: 0 when at least ``--bar`` (default 95 %) of the mutants are
killed, 1 when fewer, 2 when a snippet is missing or the baseline fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: what a test run needs from the tree (results/, .git etc. are not copied)
COPIED = ("mask_first", "tests", "workflow", "config", "Snakefile", "pyproject.toml", "environment.yml")

SHARED_SLIDES = REPO.parent / "shared" / "data" / "slides"
UT = "tests/unit"


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    what: str


def M(id, file, original, replacement, tests, what) -> Mutant:  # noqa: N802 (a table row)
    return Mutant(id, file, original, replacement, tuple(tests.split()), what)


GRID = "mask_first/tiles/grid.py"
COV = "mask_first/tiles/coverage.py"
PIPE = "mask_first/pipeline.py"
SLIDES = "mask_first/slides.py"
PIX = "mask_first/tiles/pixels.py"
MB = "mask_first/assembly/mask_builders.py"
GEO = "mask_first/interop/geojson.py"
H5 = "mask_first/interop/h5.py"

T_GRID = f"{UT}/tiles/test_grid.py"
T_COV = f"{UT}/tiles/test_coverage.py {UT}/tiles/test_coverage_exact.py"
T_FILTER = f"{UT}/test_filter_tiles.py"
T_LEVEL = f"{UT}/test_level_choice.py {UT}/test_slides.py"
T_PIX = f"{UT}/tiles/test_pixels.py {UT}/tiles/test_pixels_levels.py"
T_MB = f"{UT}/assembly/test_mask_builders.py {UT}/assembly/test_mask_fill.py"
T_GEO = f"{UT}/interop/test_geojson.py {UT}/interop/test_interop_anisotropic.py"
T_H5 = f"{UT}/interop/test_h5.py {UT}/interop/test_interop_anisotropic.py"

MUTANTS: list[Mutant] = [
    # -- grid ------------------------------------------------------------------------------
    M("grid-full-count", GRID, "n_full = (extent - tile) // stride + 1", "n_full = (extent - tile) // stride",
      T_GRID, "one full tile fewer per axis"),
    M("grid-remainder-test", GRID, "if covered < extent:", "if covered <= extent:", T_GRID,
      "an extra tile when the grid ends exactly at the edge"),
    M("grid-shift-position", GRID, "starts = np.append(starts, extent - tile)",
      "starts = np.append(starts, extent - tile - 1)", T_GRID, "shifted last tile one pixel short of the edge"),
    M("grid-oversize", GRID, "if tile > extent:", "if tile >= extent:", T_GRID,
      "a tile exactly as large as the slide treated as oversize"),
    M("grid-y-uses-x-tile", GRID, "starts = [_axis_starts(a, b, c, last) for a, b, c in zip(e, t, st)]",
      "starts = [_axis_starts(a, t[0], c, last) for a, b, c in zip(e, t, st)]",
      T_GRID, "rows laid out with the tile width"),
    # -- coverage / overlap ----------------------------------------------------------------
    M("coverage-mask-mpp-y", COV, "sy = broadcast(mpp_y, n, np.float64) / mmy",
      "sy = broadcast(mpp_y, n, np.float64) / mmx", T_COV, "mask mpp y taken from x"),
    M("coverage-slide-mpp-y", COV, "sy = broadcast(mpp_y, n, np.float64) / mmy",
      "sy = broadcast(mpp_x, n, np.float64) / mmy", T_COV, "slide mpp y taken from x"),
    M("coverage-roi-height", COV, "y1 = y0 + rh * csy", "y1 = y0 + rh * csx", T_COV,
      "ROI height scaled with the x scale"),
    M("coverage-roi-offset-y", COV, "y0 = (tile_y[c : c + _CHUNK] + ry) * csy",
      "y0 = (tile_y[c : c + _CHUNK] + rx) * csy", T_COV, "ROI y offset taken from x"),
    M("coverage-area-y", COV, "area = (rw * rh) * csx * csy", "area = (rw * rh) * csx * csx", T_COV,
      "ROI area with the x scale twice"),
    M("coverage-poly-offset-y", COV, "oy = tile_y * sy", "oy = tile_y * sx", T_COV,
      "polygon tile offsets in y with the x scale"),
    M("coverage-poly-scale-y", COV, "poly = affinity.scale(roi, xfact=sx, yfact=sy, origin=(0, 0))",
      "poly = affinity.scale(roi, xfact=sx, yfact=sx, origin=(0, 0))", T_COV, "polygon scaled in y with x"),
    M("coverage-bilinear-fy", COV, "fy = y - j", "fy = y - i", T_COV, "bilinear SAT weight in y from x"),
    M("coverage-clip-edge", COV, "x0 = np.clip(x0, 0, w)", "x0 = np.clip(x0, 0, w - 1)", T_COV,
      "rectangles clipped one mask pixel short"),
    M("coverage-poly-inside-rows", COV, "inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)",
      "inside = (cols >= 0) & (cols < w) & (rows >= 0)", T_COV,
      "polygon cells below the mask counted as the last row"),
    M("coverage-box-detection", COV, "if roi.equals(roi.envelope):", "if roi.equals(roi.convex_hull):", T_COV,
      "any convex polygon treated as its bounding box"),
    M("coverage-background-polygon", COV, 'out["0"] = np.clip(roi_fraction - covered, 0.0, 1.0)',
      'out["0"] = np.clip(1.0 - covered, 0.0, 1.0)', T_COV, "polygon background fraction as if a rectangle"),
    # -- keep rule -------------------------------------------------------------------------
    M("keep-threshold-strict", COV, "return np.asarray(frac) >= threshold - 1e-9", "return np.asarray(frac) > threshold",
      f"{T_FILTER} {UT}/tiles/test_coverage_exact.py", "a tile exactly at the threshold dropped"),
    M("keep-no-rounding-slack", COV, "return np.asarray(frac) >= threshold - 1e-9", "return np.asarray(frac) >= threshold",
      f"{T_FILTER} {UT}/tiles/test_coverage_exact.py", "a tile 2e-16 short of the threshold (float rounding) dropped"),
    M("keep-tile-height", PIPE, 'int(table.column("tile_extent_y")[0].as_py())',
      'int(table.column("tile_extent_x")[0].as_py())', T_FILTER, "tile height read from tile_extent_x"),
    M("keep-mpp-y", PIPE, 'float(table.column("mpp_y")[0].as_py())', 'float(table.column("mpp_x")[0].as_py())',
      T_FILTER, "tile mpp_y read from mpp_x"),
    M("keep-mask-mpp-swap", PIPE, "overlap_fractions(labels, (mmx, mmy), (0, 0, tx, ty), x, y, mx, my)",
      "overlap_fractions(labels, (mmy, mmx), (0, 0, tx, ty), x, y, mx, my)", T_FILTER,
      "mask x/y mpp swapped"),
    M("keep-area-y", "mask_first/cohort.py", "px_mm2 = float(mpp[0]) * float(mpp[1]) / 1e6",
      "px_mm2 = float(mpp[0]) * float(mpp[0]) / 1e6", T_FILTER, "tissue area with mask mpp x twice"),
    # -- level choice ----------------------------------------------------------------------
    M("level-boundary", SLIDES, "if max(mx, my) <= mpp * (1 + tolerance):", "if max(mx, my) < mpp * (1 + tolerance):",
      T_LEVEL, "a level exactly at the target rejected"),
    M("level-min-axis", SLIDES, "if max(mx, my) <= mpp * (1 + tolerance):", "if min(mx, my) <= mpp * (1 + tolerance):",
      T_LEVEL, "anisotropic level judged by its finer axis"),
    M("level-no-tolerance", SLIDES, "if max(mx, my) <= mpp * (1 + tolerance):", "if max(mx, my) <= mpp:",
      T_LEVEL, "tolerance ignored"),
    M("level-mpp-y-downsample", SLIDES, "return self.mpp_x * lv.downsample_x, self.mpp_y * lv.downsample_y",
      "return self.mpp_x * lv.downsample_x, self.mpp_y * lv.downsample_x", T_LEVEL,
      "level mpp y with the x downsample"),
    M("level-tiff-downsample-y", SLIDES, "w0 / p.imagewidth, h0 / p.imagelength", "w0 / p.imagewidth, w0 / p.imagewidth",
      T_LEVEL, "TIFF level y downsample from the widths"),
    M("level-tile-extent-y", SLIDES, "tx, ty = round(tx * mpp / lmx), round(ty * mpp / lmy)",
      "tx, ty = round(tx * mpp / lmx), round(ty * mpp / lmx)", T_LEVEL, "tile height rescaled with mpp x"),
    M("level-stride-y", SLIDES, "sx, sy = round(sx * mpp / lmx), round(sy * mpp / lmy)",
      "sx, sy = round(sx * mpp / lmx), round(sy * mpp / lmx)", T_LEVEL, "stride y rescaled with mpp x"),
    # -- pixels ----------------------------------------------------------------------------
    M("pixels-openslide-downsample", SLIDES, "x0 = int(round(x * lv.downsample_x))", "x0 = int(round(x))", T_PIX,
      "OpenSlide reader ignores the downsample at level > 0"),
    M("pixels-white-outside", SLIDES, "for k in partial:\n            out[k] = WHITE",
      "for k in partial:\n            out[k] = 0", T_PIX, "area outside the slide black instead of white"),
    M("pixels-paste-image-height", SLIDES, "ay1 = min(sy0 + seg.shape[0], self.height, y + out.shape[0])",
      "ay1 = min(sy0 + seg.shape[0], y + out.shape[0])", T_PIX,
      "padding rows of the last stored tile row pasted past the image bottom"),
    M("pixels-paste-row", SLIDES, "out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = seg[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]",
      "out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = seg[ay0 - sx0 : ay1 - sx0, ax0 - sx0 : ax1 - sx0]", T_PIX,
      "segment rows offset by the segment's x"),
    M("pixels-direct-offset", SLIDES, "dy, dx = j * sh - ys[k0], i * sw - xs[k0]",
      "dy, dx = j * sh - ys[k0], i * sw - ys[k0]", T_PIX,
      "a stored tile decoded in place lands at the request's y offset on the x axis"),
    M("pixels-direct-image-edge", SLIDES, "(i + 1) * sw <= min(x1, W)", "(i + 1) * sw <= x1", T_PIX,
      "a stored tile reaching past the image's right edge decoded in place (its padding over the white)"),
    M("pixels-column-run-start", PIX, "start = index.start + sub.start", "start = sub.start", T_PIX,
      "per-slide runs of a tile column written from row 0"),
    M("pixels-column-ragged-rows", PIX, "rows = np.arange(n)[index][sub]", "rows = np.arange(n)[sub]", T_PIX,
      "ragged tiles of the second slide stored at the first slide's rows"),
    M("pixels-std-channel", PIX, "grey3 += tiles[..., 2]", "grey3 += tiles[..., 1]", T_PIX,
      "grey level without the blue channel"),
    M("pixels-row-groups", PIX, "batch_size=row_group_tiles, threads=threads,\n",
      "batch_size=row_group_tiles + 1, threads=threads,\n", T_PIX,
      "row groups one tile too large"),
    M("pixels-load-shape", PIX, "arr = np.frombuffer(data, np.uint8).reshape(h, w, 3)",
      "arr = np.frombuffer(data, np.uint8).reshape(w, h, 3)", T_PIX, "stored tiles reshaped (w, h)"),
    # -- GeoJSON (QuPath) and HDF5 (CLAM/TRIDENT) writers ----------------------------------
    M("geojson-scale-y", GEO, "geom = _scale_to_level0(mask_polygons(mask == value), mmx / smx, mmy / smy)",
      "geom = _scale_to_level0(mask_polygons(mask == value), mmx / smx, mmx / smx)", T_GEO,
      "mask polygons scaled to level 0 in y with the x ratio"),
    M("geojson-run-rows", GEO, "boxes = shapely.box(cs, rs, ce, rs + 1)", "boxes = shapely.box(cs, rs, ce, rs + 2)",
      T_GEO, "each run of mask pixels two rows high"),
    M("geojson-area", GEO, '"Area px^2": float(geom.area)', '"Area px^2": float(geom.length)', T_GEO,
      "area measurement is the perimeter"),
    M("geojson-raster-y", GEO, "ys = (np.arange(i0, i1) + 0.5) / sy", "ys = (np.arange(i0, i1) + 0.5) / sx", T_GEO,
      "rasterised pixel centres in y with the x scale"),
    M("geojson-mask-height", GEO, "mh = max(1, int(np.ceil(h0 * smy / mask_mpp - 1e-6)))",
      "mh = max(1, int(np.ceil(h0 * smx / mask_mpp - 1e-6)))", T_GEO, "mask height from the slide's x mpp"),
    M("h5-y-downsample", H5, "xy[:, 1] = np.rint(np.asarray(y, np.float64) * dy)",
      "xy[:, 1] = np.rint(np.asarray(y, np.float64) * dx)", T_H5, "level-0 y with the x downsample"),
    M("h5-patch-size-level0", H5, '"patch_size_level0": int(round(tw * ds[0])),', '"patch_size_level0": tw,', T_H5,
      "TRIDENT patch_size_level0 not scaled to level 0"),
    M("h5-overlap", H5, "overlap = max(0, tw - int(stride[0])) if stride is not None else 0",
      "overlap = max(0, int(stride[0]) - tw) if stride is not None else 0", T_H5, "overlap sign reversed"),
    M("h5-level-dim", H5, '"level_dim": np.array([lv.width, lv.height], np.int64),',
      '"level_dim": np.array([lv.height, lv.width], np.int64),', T_H5, "CLAM level_dim as (height, width)"),
    M("h5-magnification", H5, "level0_mag = 10.0 / float(np.sqrt(slide.mpp_x * slide.mpp_y))",
      "level0_mag = 10.0 / float(slide.mpp_x)", T_H5, "magnification from mpp x only (anisotropic scans)"),
    # -- MaskBuilder -----------------------------------------------------------------------
    M("mb-mean-fill-separate", MB, 'np.copyto(out, mean, casting="unsafe")',
      'np.copyto(out, mean, casting="unsafe")\n            return', T_MB,
      "fill_value ignored for integer, bool and float16 masks"),
    M("mb-rint", MB, 'if self.mask.dtype.kind in "biu":', 'if self.mask.dtype.kind in "b":', T_MB,
      "integer means truncated instead of rounded"),
    M("mb-denominator", MB, "denominator = np.maximum(count, 1).astype(values.dtype)",
      "denominator = np.maximum(count, 2).astype(values.dtype)", T_MB, "single-tile cells halved"),
    M("mb-max-fill", MB, "np.copyto(values, self._fill, where=count == 0)",
      "np.copyto(values, self._fill, where=count <= 1)", T_MB, "max fill over cells covered once"),
    M("mb-num-tiles", MB, "num_tiles = -(-np.maximum(0, extents - tile) // step) + 1",
      "num_tiles = -(-np.maximum(0, extents - tile) // step)", T_MB, "one tile fewer per axis"),
    M("mb-upscale", MB, "upscale_factor=_readonly(tile // g),", "upscale_factor=_readonly(step // g),", T_MB,
      "upscale factor from the stride"),
]


def check_snippets(root: Path, mutants: list[Mutant]) -> list[str]:
    """Every original snippet must occur exactly once; the problems, one line each."""
    problems = []
    for m in mutants:
        path = root / m.file
        if not path.exists():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        n = path.read_text().count(m.original)
        if n != 1:
            problems.append(f"{m.id}: original snippet found {n} times in {m.file} (code moved?): {m.original!r}")
        for t in m.tests:
            if not (root / t.split("::")[0]).exists():
                problems.append(f"{m.id}: test file {t} does not exist")
    return problems


def make_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis", "results"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float, str]:
    env = os.environ | {
        "PYTHONPATH": str(copy),
        "PYTHONDONTWRITEBYTECODE": "1",
        # the copy has no ../shared beside it: point the tests at the working tree's real slides,
        # and run strict, so a missing slide fails the baseline instead of skipping tests
        "MASK_FIRST_SHARED_SLIDES": os.environ.get("MASK_FIRST_SHARED_SLIDES") or str(SHARED_SLIDES),
        "CI": "true",
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, "timeout"
    return rc, time.perf_counter() - t0, out


def audit(mutants: list[Mutant], jobs: int, timeout: float) -> list[tuple[Mutant, str, float, str]]:
    with tempfile.TemporaryDirectory(prefix="mf-mutation-") as tmp:
        copies = [make_copy(Path(tmp) / f"w{k}") for k in range(jobs)]
        problems = check_snippets(copies[0], mutants)
        if problems:
            print("MUTATION AUDIT ERROR: snippets not found, nothing run:\n  " + "\n  ".join(problems), file=sys.stderr)
            sys.exit(2)
        # baseline: every selection passes on the unmutated tree
        selections = sorted({t for m in mutants for t in m.tests})
        rc, secs, out = run_tests(copies[0], tuple(selections), timeout * 4)
        if rc != 0:
            print(f"MUTATION AUDIT ERROR: the unmutated tree fails its tests (rc {rc}):\n{out[-4000:]}", file=sys.stderr)
            sys.exit(2)
        skipped = [line for line in out.splitlines() if "skipped" in line]
        print(f"baseline: {len(selections)} test files pass on the unmutated copy ({secs:.0f} s) {' '.join(skipped)}")

        free = list(copies)
        results: dict[str, tuple[str, float, str]] = {}

        def one(m: Mutant) -> None:
            copy = free.pop()
            path = copy / m.file
            original = path.read_text()
            try:
                path.write_text(original.replace(m.original, m.replacement, 1))
                rc, secs, out = run_tests(copy, m.tests, timeout)
            finally:
                path.write_text(original)
                free.append(copy)
            if rc == 5:
                print(f"MUTATION AUDIT ERROR: {m.id}: no tests collected", file=sys.stderr)
                sys.exit(2)
            status = "survived" if rc == 0 else "timeout" if rc == -1 else "killed"
            failed = next((line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
            results[m.id] = (status, secs, failed)
            print(f"{status:9s} {m.id:32s} {secs:6.1f} s  {failed[:110]}", flush=True)

        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, mutants))
    return [(m, *results[m.id]) for m in mutants]


def markdown(rows, total_s: float, command: str) -> str:
    killed = sum(r[1] != "survived" for r in rows)
    lines = [
        "# Mutation audit",
        "",
        "`tools/mutation.py` puts one small plausible bug at a time into the core modules (a temporary",
        "copy of the tree, never the working tree) and runs the tests that target it. Each mutant is",
        "(file, exact original snippet, replacement, test selection); the audit stops with an error when",
        "a snippet is no longer found, so a mutant is never skipped silently. Killed = the selection fails.",
        "",
        f"Last run: `{command}` -- **{killed} of {len(rows)} killed ({100 * killed / len(rows):.0f} %)**,"
        f" {total_s / 60:.1f} min wall on the shared 2-core machine.",
        "",
        "| mutant | file | bug | result | seconds | first failing test |",
        "|---|---|---|---|---|---|",
    ]
    for m, status, secs, failed in rows:
        test = failed.replace("FAILED ", "").replace("ERROR ", "").split(" - ")[0]
        lines.append(f"| `{m.id}` | `{m.file}` | {m.what} | {status} | {secs:.0f} | `{test}` |")
    lines += [
        "",
        "## Where this started (issue 15)",
        "",
        "An earlier audit left 11 of 29 mutants alive: the keep rule (`>=` to `>`, tile height from",
        "`tile_extent_x`, `mpp_y` from `mpp_x`, mask x/y mpp swapped), anisotropy in the overlap (x scale",
        "for y in mask mpp, ROI height, polygon offsets), the OpenSlide reader ignoring the downsample at",
        "level > 0, level choice (`<=` to `<`, `min` for `max`, y with the x downsample) and a non-zero",
        "mean `fill_value` ignored for integer and float16 masks. They are the `keep-*`, `coverage-*-y`,",
        "`coverage-poly-*`, `pixels-openslide-downsample`, `level-*` and `mb-mean-fill-separate` rows",
        "above, killed by tests that compare against computations of their own: exact `Fraction`",
        "interval arithmetic (`tests/unit/tiles/test_coverage_exact.py`, `tests/unit/test_filter_tiles.py`),",
        "tifffile's decode of each level's page (`tests/unit/tiles/test_pixels_levels.py`), hand-worked",
        "boundary, tolerance and anisotropic cases (`tests/unit/test_level_choice.py`,",
        "`tests/unit/interop/test_interop_anisotropic.py`) and per-dtype fills",
        "(`tests/unit/assembly/test_mask_fill.py`). The GeoJSON/HDF5 rows were added when those writers",
        "landed; 6 of their first 10 mutants survived until the anisotropic tests were written.",
        "",
        "Add a mutant for every bug found in review: a row in `MUTANTS`, with the smallest test",
        "selection that should catch it. Run the audit after moving code: a snippet that moved is an",
        "error to fix in the table, not a skip.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (one tree copy each)")
    ap.add_argument("-k", default="", help="only mutants whose id contains this (comma-separated: any of these)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant (a timeout counts as killed)")
    ap.add_argument("--bar", type=float, default=95.0, help="minimum percentage killed")
    ap.add_argument("--markdown", type=Path, help="write the result table to this file")
    args = ap.parse_args()
    mutants = [m for m in MUTANTS if any(k in m.id for k in args.k.split(","))]
    if not mutants:
        sys.exit(f"no mutant id contains {args.k!r}")
    t0 = time.perf_counter()
    rows = audit(mutants, args.jobs, args.timeout)
    total = time.perf_counter() - t0
    killed = sum(r[1] != "survived" for r in rows)
    pct = 100 * killed / len(rows)
    print(f"\n{killed} of {len(rows)} mutants killed ({pct:.1f} %), {len(rows) - killed} survived, {total:.0f} s")
    for m, status, _, _ in rows:
        if status == "survived":
            print(f"  SURVIVED {m.id}: {m.file}: {m.what}")
    if args.markdown:
        command = "python tools/mutation.py" + (f" --jobs {args.jobs}" if args.jobs != 2 else "") + (f" -k {args.k}" if args.k else "")
        args.markdown.write_text(markdown(rows, total, command))
    sys.exit(0 if pct >= args.bar else 1)


if __name__ == "__main__":
    main()
