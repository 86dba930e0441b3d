"""Throughput and memory benchmark for ``mask_first.assembly.mask_builders``.

Scenario: a 100 000 x 100 000 px slide level, tiles of 512 px, stride 256 px
(390 x 390 = 152 100 grid positions, raster order), batches of 64, float32.

* scalar predictions, mean, in memory (output_tile_extent 1: 391 x 391 mask);
* dense 128 x 128 outputs, mean, in memory (25 024 x 25 024 mask, 2.5 GB);
* the same dense case on a memmap, every tile, for resident memory.

Every throughput is compared with a naive baseline measured in the same run,
interleaved with the builder (the machine is shared and noisy: absolute times
drift, ratios hold).  The baseline is what ratiopath 1.5.0 does: a Python loop
over tiles doing ``mask[:, y:y+h, x:x+w] += tile; counter[...] += 1`` with a
uint16 counter, and ``mask /= counter.clip(min=1)`` to finalize.

Run::

    python benchmarks/bench_mask_builders.py            # ~1-2 min, peak ~5 GB
    python benchmarks/bench_mask_builders.py --help
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import sys
from pathlib import Path

import numpy as np

try:
    from mask_first.assembly.mask_builders import MaskBuilder
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mask_first.assembly.mask_builders import MaskBuilder

SOURCE = (100_000, 100_000)
TILE = 512
STRIDE = 256
BATCH = 64
DENSE = 128
GiB = 2**30
MiB = 2**20


# --------------------------------------------------------------------------
# Memory probes
# --------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


class PeakRSS:
    """Peak resident set size inside a ``with`` block.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) when
    allowed, and also samples RSS every 2 ms as a fallback.
    """

    def __enter__(self) -> PeakRSS:
        self.start = rss_bytes()
        self.kernel = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.kernel = True
        except OSError:
            pass
        self.sampled = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.sampled = max(self.sampled, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = self.sampled
        if self.kernel:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)


# --------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------


def grid_coords() -> np.ndarray:
    """Top-left corners (source px, (y, x)) of the full grid in raster order."""
    n = -(-(SOURCE[0] - TILE) // STRIDE) + 1
    ys, xs = np.meshgrid(np.arange(n) * STRIDE, np.arange(n) * STRIDE, indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1)


def batches(coords: np.ndarray, n_batches: int | None) -> Iterator[np.ndarray]:
    total = -(-len(coords) // BATCH)
    for b in range(total if n_batches is None else min(n_batches, total)):
        yield coords[b * BATCH : (b + 1) * BATCH]


class NaiveBuilder:
    """The baseline: per-tile slices into a mask and a uint16 counter."""

    def __init__(self, mask_extents: tuple[int, int], cells: int) -> None:
        self.mask = np.zeros((1, *mask_extents), dtype=np.float32)
        self.counter = np.zeros((1, *mask_extents), dtype=np.uint16)
        self.extent = cells  # tile extent in mask cells; a cell is TILE / cells px

    def update_batch(self, batch: np.ndarray, coords: np.ndarray) -> None:
        cells = (coords * self.extent) // TILE
        e = self.extent
        if batch.ndim == 2:  # scalar: broadcast like the reference's expansion
            batch = np.broadcast_to(batch[:, :, None, None], (*batch.shape, e, e))
        for tile, (y, x) in zip(batch, cells.tolist()):
            self.mask[:, y : y + e, x : x + e] += tile
            self.counter[:, y : y + e, x : x + e] += 1

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        self.mask /= self.counter.clip(min=1)
        return self.mask, self.counter


def run_updates(
    builder, coords: np.ndarray, n_batches: int | None, values: np.ndarray
) -> tuple[int, float, float]:
    """Feed batches; return (tiles, wall seconds, CPU seconds of this process)."""
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for c in batches(coords, n_batches):
        builder.update_batch(values[: len(c)], c)
        n += len(c)
    return n, time.perf_counter() - w0, time.process_time() - c0


def timed(f: Callable[[], object]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    f()
    return time.perf_counter() - w0, time.process_time() - c0


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


def bench_scalar(coords: np.ndarray, repeats: int) -> None:
    print("\n== scalar predictions, mean, in memory, output_tile_extent=1 ==")
    values = np.random.default_rng(0).random((BATCH, 1), dtype=np.float32)
    probe = MaskBuilder(SOURCE, TILE, 1, STRIDE)
    extents = tuple(probe.mask_extents.tolist())
    cells = int(probe.output_tile_extent[0] * probe.upscale_factor[0])
    print(f"mask {extents} cells, tile = {cells} x {cells} cells, every tile ({len(coords)})")
    rows: dict[str, list[dict[str, float]]] = {"naive": [], "builder": []}
    for _ in range(repeats):
        naive = NaiveBuilder(extents, cells)
        n, w, c = run_updates(naive, coords, None, values)
        fw, fc = timed(naive.finalize)
        rows["naive"].append({"n": n, "wall": w, "cpu": c, "fin_wall": fw, "fin_cpu": fc})
        ours = MaskBuilder(SOURCE, TILE, 1, STRIDE)
        n, w, c = run_updates(ours, coords, None, values)
        fw, fc = timed(ours.finalize)
        rows["builder"].append({"n": n, "wall": w, "cpu": c, "fin_wall": fw, "fin_cpu": fc})
        np.testing.assert_allclose(ours.finalize()["mask"], naive.mask, rtol=1e-5)
        del naive, ours
    report_throughput(rows, finalize=True)


def _touch_rows(arrays: list[np.ndarray], n_rows: int) -> None:
    for a in arrays:
        a[:, :n_rows] = 0


def bench_dense_inmemory(coords: np.ndarray, repeats: int, n_batches: int) -> None:
    print("\n== dense 128x128 outputs, mean, in memory ==")
    values = np.random.default_rng(0).random((BATCH, 1, DENSE, DENSE), dtype=np.float32)
    probe = MaskBuilder(SOURCE, TILE, DENSE, STRIDE)
    extents = tuple(probe.mask_extents.tolist())
    mask_bytes = probe.aggregator.mask.nbytes
    del probe
    last_row = int(coords[n_batches * BATCH - 1, 0]) * DENSE // TILE + DENSE
    print(
        f"mask {extents} cells = {mask_bytes / GiB:.2f} GiB float32; throughput on the first "
        f"{n_batches} batches ({n_batches * BATCH} tiles)"
    )
    for pretouch in (False, True):
        print(
            "-- pre-touched arrays (the mask rows these tiles use are written once before "
            "timing: no page faults) --" if pretouch else
            "-- fresh arrays each repeat (includes the kernel's first-touch page faults) --"
        )
        rows: dict[str, list[dict[str, float]]] = {"naive": [], "builder": []}
        for _ in range(repeats):
            naive = NaiveBuilder(extents, DENSE)
            if pretouch:
                _touch_rows([naive.mask, naive.counter], last_row)
            n, w, c = run_updates(naive, coords, n_batches, values)
            rows["naive"].append({"n": n, "wall": w, "cpu": c})
            check = np.array(naive.mask[:, :512, :4096])
            del naive
            gc.collect()
            ours = MaskBuilder(SOURCE, TILE, DENSE, STRIDE)
            if pretouch:
                _touch_rows([ours.aggregator.mask], last_row)
            n, w, c = run_updates(ours, coords, n_batches, values)
            rows["builder"].append({"n": n, "wall": w, "cpu": c})
            np.testing.assert_allclose(ours.aggregator.mask[:, :512, :4096], check, rtol=1e-5)
            del ours
            gc.collect()
        report_throughput(rows, finalize=False)

    print(
        "-- every tile of the slide, then finalize (one run each; the arrays are written once "
        "before timing the updates, so kernel first-touch time is reported separately) --"
    )
    for name in ("builder", "naive"):
        gc.collect()
        base = rss_bytes()
        if name == "builder":
            b = MaskBuilder(SOURCE, TILE, DENSE, STRIDE)
            touched = [b.aggregator.mask]
        else:
            b = NaiveBuilder(extents, DENSE)
            touched = [b.mask, b.counter]
        touch_wall, _ = timed(lambda: [a.fill(0) for a in touched])
        del touched
        n, w, c = run_updates(b, coords, None, values)
        # Trace only finalize: its peak of new allocations comes on top of
        # the accumulator that already exists.
        tracemalloc.start()
        with PeakRSS() as peak:
            fw, fc = timed(b.finalize)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if name == "builder":
            out = b.finalize()
            arrays = (out["mask"], out["overlap_counter"])
            existing = out["mask"].nbytes  # the counter is allocated by finalize
        else:
            arrays = (b.mask, b.counter)
            existing = b.mask.nbytes + b.counter.nbytes
        storage = sum(a.nbytes for a in arrays)
        total = existing + traced_peak
        print(
            f"{name:8s}: first touch of the arrays {touch_wall:.2f} s; update {n / w:>9,.0f} "
            f"tiles/s wall ({n / c:,.0f} tiles/s CPU); finalize {fw:.2f} s wall ({fc:.2f} s CPU)\n"
            f"          storage mask + {arrays[1].dtype} counter = {storage / GiB:.3f} GiB; during "
            f"finalize: arrays before + tracemalloc peak = {total / GiB:.3f} GiB = "
            f"{total / storage:.3f} x storage; peak RSS - RSS before building "
            f"{(peak.peak - base) / GiB:.3f} GiB = {(peak.peak - base) / storage:.3f} x storage"
        )
        del b, arrays
        if name == "builder":
            del out
        gc.collect()


def bench_dense_memmap(coords: np.ndarray, directory: str | None) -> None:
    print("\n== dense 128x128 outputs, mean, memmap (temporary files), every tile ==")
    values = np.random.default_rng(0).random((BATCH, 1, DENSE, DENSE), dtype=np.float32)
    gc.collect()
    base = rss_bytes()
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        with PeakRSS() as peak_update:
            ours = MaskBuilder(SOURCE, TILE, DENSE, STRIDE, storage="memmap", directory=tmp)
            n, w, c = run_updates(ours, coords, None, values)
        with PeakRSS() as peak_fin:
            fw, fc = timed(ours.finalize)
        out = ours.finalize()
        mask_bytes = out["mask"].nbytes
        storage = mask_bytes + out["overlap_counter"].nbytes
        sample = float(out["mask"][0, 5000, 5000])
        ours.cleanup()
        del ours, out
    print(
        f"{n} tiles: update {n / w:,.0f} tiles/s wall ({n / c:,.0f} tiles/s CPU), finalize "
        f"{fw:.2f} s wall ({fc:.2f} s CPU); mask {mask_bytes / GiB:.2f} GiB, files "
        f"{storage / GiB:.2f} GiB"
    )
    print(
        f"peak RSS - RSS before: update {(peak_update.peak - base) / MiB:.0f} MiB, finalize "
        f"{(peak_fin.peak - base) / MiB:.0f} MiB = "
        f"{(max(peak_update.peak, peak_fin.peak) - base) / mask_bytes:.3f} x mask size "
        f"(RSS before {base / MiB:.0f} MiB; mask[0, 5000, 5000] = {sample:.3f})"
    )


def report_throughput(rows: dict[str, list[dict[str, float]]], finalize: bool) -> None:
    modes = [("update, wall", "wall", False), ("update, CPU", "cpu", False)]
    if finalize:
        modes += [("update+finalize, wall", "wall", True), ("update+finalize, CPU", "cpu", True)]
    for label, clock, with_fin in modes:
        def rate(r: dict[str, float]) -> float:
            return r["n"] / (r[clock] + (r["fin_" + clock] if with_fin else 0.0))

        naive = [rate(r) for r in rows["naive"]]
        ours = [rate(r) for r in rows["builder"]]
        ratios = [o / b for o, b in zip(ours, naive)]
        print(
            f"  {label:22s} naive {statistics.median(naive):>11,.0f} tiles/s | builder "
            f"{statistics.median(ours):>11,.0f} tiles/s | ratio median "
            f"{statistics.median(ratios):6.1f}x "
            f"(min {min(ratios):.1f}x, max {max(ratios):.1f}x, n={len(ratios)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument(
        "--dense-batches", type=int, default=100, help="batches per dense throughput repeat"
    )
    parser.add_argument("--skip-memmap", action="store_true")
    parser.add_argument("--tmpdir", default=None, help="directory for memmap files")
    args = parser.parse_args()

    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    coords = grid_coords()
    bench_scalar(coords, args.repeats)
    bench_dense_inmemory(coords, args.repeats, args.dense_batches)
    if not args.skip_memmap:
        bench_dense_memmap(coords, args.tmpdir)


if __name__ == "__main__":
    main()
