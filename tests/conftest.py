"""Shared fixtures: the real slides in ../shared and small slides made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: the real slides; MASK_FIRST_SHARED_SLIDES points elsewhere (the CI-strictness test uses it)
SHARED_SLIDES = Path(os.environ.get("MASK_FIRST_SHARED_SLIDES") or REPO.parent / "shared" / "data" / "slides")

#: under CI (``CI=true``, as .ci/run is started) a missing prerequisite is a failure, not a skip
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` on a developer machine; FAIL with it under CI.

    A skip in CI would let a clone without ../shared, or a SLURM that could not
    be installed, pass green while testing nothing real.
    """
    if IN_CI:
        pytest.fail(f"CI=true, so this is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=["turbojpeg", "imagecodecs"])
def jpeg_decoder(request, monkeypatch):
    """Run the test with each JPEG path of the TIFF reader: TurboJPEG in place, imagecodecs + copy."""
    from mask_first import jpeg

    if request.param == "turbojpeg":
        if not jpeg.available():
            skip_or_fail("libturbojpeg not found (apt install libturbojpeg0): the in-place JPEG path is untested")
    else:
        monkeypatch.setattr(jpeg, "available", lambda: False)
    return request.param


def shared_slides_reason() -> str | None:
    """Why the real slides cannot be used, or None when they are there."""
    if not (SHARED_SLIDES / "CMU-1-Small-Region.svs").exists():
        return f"real slides not found at {SHARED_SLIDES} (clone the project next to ../shared)"
    return None

#: real slides whose metadata lacks mpp, with the override the tests use
MPP_OVERRIDES = {"tcga-cr-7395-01a-01-ts1.svs": 0.25, "kidney-48-5.tif": 0.5}


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    reason = shared_slides_reason()
    if reason:
        skip_or_fail(reason)
    return SHARED_SLIDES


def write_pyramid_tiff(path: Path, image: np.ndarray, *, mpp: float | None = 0.5, tile: int = 128,
                       levels: int = 3, compression: str = "jpeg") -> Path:
    """A generic tiled pyramidal TIFF (separate IFDs, reduced-image bit) made with tifffile."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        img = image
        for k in range(levels):
            kwargs = {}
            if mpp is not None:
                res = 1e4 / (mpp * 2**k)
                kwargs = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            tw.write(
                img, tile=(tile, tile), compression=compression, photometric="rgb",
                subfiletype=1 if k else 0, metadata=None, **kwargs,
            )
            img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
            img = img.reshape(img.shape[0] // 2, 2, img.shape[1] // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
    return path


def area_average(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Exact area average of (h, w, c) ``img`` to (out_h, out_w, c), float64, by brute force.

    Output pixel i along an axis covers input interval [i * s, (i + 1) * s),
    s = in / out; each input pixel weighs by the length of its overlap with
    it. Independent of OpenCV, for checking resampled tiles.
    """
    def weights(n_in: int, n_out: int) -> np.ndarray:
        s = n_in / n_out
        lo = np.arange(n_out)[:, None] * s
        j = np.arange(n_in)[None, :]
        return np.clip(np.minimum(lo + s, j + 1) - np.maximum(lo, j), 0, None) / s

    wy, wx = weights(img.shape[0], out_h), weights(img.shape[1], out_w)
    rows = np.tensordot(wy, img.astype(np.float64), axes=(1, 0))  # (out_h, w, c)
    return np.einsum("yjc,xj->yxc", rows, wx)


@pytest.fixture
def textured_image() -> np.ndarray:
    """(600, 700, 3) uint8 with smooth gradients, so JPEG loss stays small and positions are testable."""
    y, x = np.mgrid[0:600, 0:700]
    img = np.stack([(x * 0.3) % 256, (y * 0.4) % 256, ((x + y) * 0.2) % 256], axis=-1)
    return img.astype(np.uint8)


@pytest.fixture
def small_tiff(tmp_path, textured_image) -> Path:
    return write_pyramid_tiff(tmp_path / "small.tif", textured_image, compression="zlib")


# ---------------------------------------------------------------------------
# running the real workflow
# ---------------------------------------------------------------------------

SNAKEFILE = REPO / "Snakefile"

#: a complete config for fast end-to-end runs: 128-px tiles at 1 µm/px, so one
#: tile is exactly 16 x 16 mask pixels of 8 µm (brute-force checks stay exact)
SMALL_CONFIG = {
    "mask": {"mpp": 8.0, "method": "otsu", "params": {}},
    "tiling": {"mpp": 1.0, "level": None, "tile_extent": 128, "stride": 128, "last": "keep"},
    "filter": {"method": "mask", "tissue_threshold": 0.5, "tissue_value": 255, "pixel_std_threshold": 8.0},
    "pixels": {"enabled": True, "encoding": "raw", "jpeg_quality": 90, "row_group_tiles": 16, "resample": True},
    "heatmap": {"predictions": "results/retained/{slide}.parquet", "columns": ["fraction_255"],
                "aggregation": "mean", "storage": "memmap"},
    "qc": {"size": 512},
}


def run_workflow(workdir: Path, config: dict, *args: str, check: bool = True, timeout: int = 900):
    """Run the real ``snakemake`` on the repository's Snakefile in ``workdir``.

    ``config`` is written to ``workdir/test-config.yaml`` and layered over the
    default config/config.yaml (nested keys replace whole sections).
    """
    import subprocess

    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "test-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = ["snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile", str(cfg), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, config: dict, *args: str) -> dict[str, int]:
    """Jobs a dry run would execute, per rule (empty when there is nothing to do)."""
    import re

    proc = run_workflow(workdir, config, "-n", *args)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def write_sheet(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def mask_of(workdir: Path, slide_id: str) -> Path:
    """The mask overlay a run used for a slide, as the cohort slide table names it."""
    import pyarrow.parquet as pq

    table = pq.read_table(workdir / "results/slides.parquet", columns=["slide_id", "mask_path"]).to_pydict()
    path = Path(table["mask_path"][table["slide_id"].index(slide_id)])
    return path if path.is_absolute() else workdir / path
