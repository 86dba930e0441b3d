"""Cohort bookkeeping: what happened to every slide, and the QC flags that say what to look at.

A slide of the sample sheet is in one of three states:

``done``
    every per-slide output of the run exists and no step recorded a failure;
``failed``
    a step recorded a failure file (see :func:`failure_path`): the summary
    names the first failed step, in workflow order, and its one-line cause;
``incomplete``
    some outputs are missing and no failure was recorded: the slide was not
    reached (the run stopped early without ``--keep-going``) or its job was
    killed (out of memory, wall time) -- its rule log says which.

Failure files are written by :func:`mask_first.pipeline.run_step` when a
per-slide step fails and removed when the step starts again, so a rerun that
succeeds leaves no stale failure behind.

QC flags are plain words, one ``;``-separated string per slide
(:data:`FLAGS`). The per-slide figures they use come from the filter step's
Parquet metadata (``mask_first.stats``): this module never opens a mask.

Nothing here imports pandas; the per-slide filter step uses
:func:`mask_stats` and :func:`ink_label_values`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FLAGS",
    "failure_path",
    "read_failure",
    "slide_status",
    "ink_label_values",
    "mask_stats",
    "area_outliers",
    "qc_flags",
]

#: every flag the summary can raise, in the order they are listed
FLAGS = (
    "failed",
    "incomplete",
    "no tissue found",
    "nothing retained",
    "tissue touches the slide border",
    "tissue area outlier",
    "ink area above threshold",
    "corrupt tiles skipped",
    "mpp from override",
)

#: a cohort needs this many slides with tissue before an area can be called an outlier
MIN_SLIDES_FOR_OUTLIERS = 5

#: label names that count as ink in an overlay's label table
_INK_WORDS = ("ink", "pen", "marker")


def failure_path(log_path: str | Path) -> Path:
    """Failure file of a step, mirrored from its rule log.

    ``results/logs/<step>/<slide>.log`` -> ``results/status/<step>/<slide>.failed.json``
    (``results/logs/tissue_mask/<slide>/<key>.log`` keeps its ``<key>``). A
    log outside a ``logs`` folder gets the file beside it.
    """
    p = Path(log_path)
    parts = list(p.parts)
    if "logs" in parts:
        i = len(parts) - 1 - parts[::-1].index("logs")
        parts[i] = "status"
        p = Path(*parts)
    return p.with_name(p.name.removesuffix(".log") + ".failed.json")


def read_failure(path: str | Path) -> dict[str, Any] | None:
    """The recorded failure (``step``, ``error``, ``log`` ...) or None when there is none."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a hand-edited or truncated file still says "failed"
        return {"step": Path(path).parent.name, "error": f"unreadable failure record {path}: {exc}"}


def slide_status(failures: Sequence[str | Path], outputs: Sequence[str | Path]) -> dict[str, Any]:
    """Status of one slide from its steps' failure files and its expected outputs.

    Parameters
    ----------
    failures : sequence of path
        Failure files of the slide's steps in workflow order (first failure wins).
    outputs : sequence of path
        Every per-slide output the run should leave for this slide.

    Returns
    -------
    dict
        ``status`` (``done`` / ``failed`` / ``incomplete``), ``failed_step``,
        ``error`` (one line; None when done) and ``log`` (the log to read).
    """
    for f in failures:
        rec = read_failure(f)
        if rec is not None:
            error = str(rec.get("error") or "failed").splitlines()[0] if str(rec.get("error") or "") else "failed"
            return {"status": "failed", "failed_step": rec.get("step") or Path(f).parent.name,
                    "error": error, "log": rec.get("log")}
    missing = [str(o) for o in outputs if not Path(o).exists()]
    if missing:
        return {"status": "incomplete", "failed_step": None,
                "error": f"not run or interrupted (no failure recorded): {missing[0]} missing",
                "log": None}
    return {"status": "done", "failed_step": None, "error": None, "log": None}


def ink_label_values(provenance: Mapping[str, Any]) -> list[int]:
    """Mask label values that mean ink, from an overlay's label table.

    The label table is looked for under ``labels`` or ``label_table`` in the
    overlay provenance (:func:`mask_first.tissue.overlay.read_mask_overlay`),
    as ``{value: name}``, ``{name: value}`` or a list of ``{"value", "name"}``
    records; a name containing "ink", "pen" or "marker" counts. An overlay
    without a table (0/255 masks, user masks) has no ink label: ``[]``.
    """
    table = provenance.get("labels", provenance.get("label_table"))
    pairs: list[tuple[Any, Any]] = []
    if isinstance(table, Mapping):
        pairs = list(table.items())
    elif isinstance(table, Sequence) and not isinstance(table, str):
        pairs = [(r.get("value"), r.get("name", r.get("label"))) for r in table if isinstance(r, Mapping)]
    values = set()
    for a, b in pairs:
        for value, name in ((a, b), (b, a)):
            try:
                v = int(value)
            except (TypeError, ValueError):
                continue
            if isinstance(name, str) and any(w in name.lower() for w in _INK_WORDS) and 0 <= v <= 255:
                values.add(v)
    return sorted(values)


def mask_stats(labels: np.ndarray, mpp: tuple[float, float], value: int, ink: Sequence[int] = ()) -> dict[str, Any]:
    """Per-slide mask figures for the summary, computed once in the filter step.

    Parameters
    ----------
    labels : ndarray of uint8, shape (height, width)
        The label mask (mask pixels, axis order y, x).
    mpp : (float, float)
        Mask pixel size x, y in µm/px.
    value : int
        The tissue label.
    ink : sequence of int
        Ink label values (:func:`ink_label_values`).

    Returns
    -------
    dict
        ``tissue_area_mm2``; ``label_area_mm2`` (every label present, keyed by
        its value as a string); ``border_tissue_fraction``: the fraction of the
        mask's outermost ring of pixels (first/last row and column) that is
        tissue -- 0 when no tissue touches the slide edge; ``ink_area_mm2``:
        the area of the ink labels, None when the mask has no ink label.
    """
    labels = np.asarray(labels)
    px_mm2 = float(mpp[0]) * float(mpp[1]) / 1e6
    counts = np.bincount(labels.ravel(), minlength=256) if labels.size else np.zeros(256, np.int64)
    h, w = labels.shape
    if h and w:
        ring = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]]) if h > 1 and w > 1 \
            else labels.ravel()
        border = float(np.count_nonzero(ring == value)) / ring.size
    else:
        border = 0.0
    return {
        "tissue_area_mm2": float(counts[value]) * px_mm2,
        "label_area_mm2": {str(v): float(c) * px_mm2 for v, c in enumerate(counts.tolist()) if c},
        "border_tissue_fraction": border,
        "ink_area_mm2": float(sum(int(counts[v]) for v in ink)) * px_mm2 if len(ink) else None,
    }


def area_outliers(areas: Sequence[float | None], threshold: float) -> list[bool]:
    """Slides whose tissue area is an outlier for the cohort.

    The modified z-score of Iglewicz & Hoaglin on log10 of the area:
    ``0.6745 * |log a - median| / MAD`` above ``threshold`` (3.5 is their
    recommendation). Log because tissue areas spread by factors, not by mm².
    Only slides with tissue take part (no tissue has its own flag), and only
    when at least :data:`MIN_SLIDES_FOR_OUTLIERS` have some; when more than
    half the areas are equal (MAD 0) the mean absolute deviation stands in
    (``|log a - median| / (1.253314 * meanAD)``).
    """
    vals = np.array([a if a is not None and a > 0 and math.isfinite(a) else np.nan for a in areas], float)
    ok = ~np.isnan(vals)
    out = np.zeros(len(vals), bool)
    if ok.sum() < MIN_SLIDES_FOR_OUTLIERS:
        return out.tolist()
    logs = np.log10(vals[ok])
    med = np.median(logs)
    dev = np.abs(logs - med)
    mad = np.median(dev)
    if mad > 0:
        z = 0.6745 * dev / mad
    else:
        mean_ad = dev.mean()
        z = dev / (1.253314 * mean_ad) if mean_ad > 0 else np.zeros_like(dev)
    out[ok] = z > threshold
    return out.tolist()


def qc_flags(
    row: Mapping[str, Any],
    *,
    outlier: bool,
    border_fraction: float,
    ink_area_mm2: float,
) -> list[str]:
    """The QC flags of one summary row, in the order of :data:`FLAGS`.

    ``row`` holds ``status``, ``tiles_retained``, ``tissue_area_mm2`` (None or
    NaN when the filter did not use a mask), ``border_tissue_fraction``,
    ``ink_area_mm2`` (None: no ink label), ``tiles_skipped`` and
    ``mpp_override`` (None or NaN: the slide's own mpp). A slide flags its
    border when more than ``border_fraction`` of the mask's edge pixels are
    tissue, and its ink when the ink area exceeds ``ink_area_mm2`` mm².
    """

    def num(key):
        v = row.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    flags = []
    status = row.get("status", "done")
    if status in ("failed", "incomplete"):
        flags.append(status)
    area = num("tissue_area_mm2")
    if area is not None and area <= 0:
        flags.append("no tissue found")
    if status == "done" and num("tiles_retained") == 0:
        flags.append("nothing retained")
    border = num("border_tissue_fraction")
    if border is not None and border > border_fraction:
        flags.append("tissue touches the slide border")
    if outlier:
        flags.append("tissue area outlier")
    ink = num("ink_area_mm2")
    if ink is not None and ink > ink_area_mm2:
        flags.append("ink area above threshold")
    if (num("tiles_skipped") or 0) > 0:
        flags.append("corrupt tiles skipped")
    if num("mpp_override") is not None:
        flags.append("mpp from override")
    return flags

