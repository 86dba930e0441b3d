"""Writing a large stream with and without drop-behind (mask_first.io.drop_behind).

Usage::

    python benchmarks/bench_drop_behind.py [--mb 730] [--chunk-mb 8] [--every-mb 32] [--rounds 3]

Writes ``--mb`` of random bytes in ``--chunk-mb`` blocks to a new file beside
the repository (same file system as results/), once plainly buffered and once
calling ``release()`` every ``--every-mb``, alternating, with a 3 s pause
before each (the VM hands idle free memory back to its host within seconds;
a write then pays for fresh pages again). Prints wall, user and system CPU
seconds of each, and the ratio of CPU seconds. 730 MB is the raw pixel file of
the resection in benchmarks/bench_vs_ratiopath.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mask_first.io import drop_behind  # noqa: E402


def write(path: Path, total: int, chunk: bytes, every: int | None) -> tuple[float, float, float]:
    path.unlink(missing_ok=True)
    time.sleep(3)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with open(path, "wb", buffering=0) as f, drop_behind(path) as release:
        done = since = 0
        while done < total:
            f.write(chunk)
            done += len(chunk)
            since += len(chunk)
            if every is not None and since >= every:
                release()
                since = 0
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    path.unlink()
    return t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=730)
    parser.add_argument("--chunk-mb", type=int, default=8)
    parser.add_argument("--every-mb", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    chunk = os.urandom(args.chunk_mb << 20)
    path = REPO / f".bench_drop_behind.{os.getpid()}.bin"
    print(f"{'run':<22}{'wall s':>8}{'user s':>8}{'sys s':>8}")
    best = {}
    for r in range(args.rounds):
        for name, every in (("buffered", None), (f"release every {args.every_mb} MB", args.every_mb << 20)):
            wall, user, sys_ = write(path, args.mb << 20, chunk, every)
            best[name] = min(best.get(name, float("inf")), user + sys_)
            print(f"{name:<22}{wall:>8.2f}{user:>8.2f}{sys_:>8.2f}")
    plain, dropped = best.values()
    print(f"best CPU seconds: buffered {plain:.2f}, drop-behind {dropped:.2f}: {plain / dropped:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
