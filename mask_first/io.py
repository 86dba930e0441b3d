"""Files: the one atomic write, Parquet tables without pandas, PNG pictures.

Every file the package writes goes through :func:`atomic_path`, so a killed
job never leaves a file under its final name. Tables are read and written
with pyarrow directly: a per-slide job that only needs columns of numbers
does not pay for importing pandas (about 0.6 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_path", "drop_behind", "as_table", "write_table", "read_table", "read_columns", "write_png"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; rename it to ``path`` only on success.

    The temporary name (``.<name>.tmp<pid><suffix>``) keeps the suffix, so
    writers that pick a format from it still work, and it never carries the
    final name: an interrupted write leaves nothing that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def drop_behind(path: str | os.PathLike) -> Iterator[Any]:
    """Yield ``release()``, which evicts the already written part of ``path`` from the page cache.

    For streams far larger than anything read back soon (a slide's retained
    tile pixels: 0.2-0.7 GB raw). Called after each chunk it keeps the file's
    page cache to about one chunk, so the writes reuse the pages just freed
    instead of taking new ones. On this project's machines (VMs whose idle free
    memory goes back to the host) taking new pages is what writing costs:
    730 MB written in 8 MB blocks took 2.1-2.3 CPU-s of system time buffered,
    0.35-0.39 with ``release()`` every 32 MB (``benchmarks/bench_drop_behind.py``).
    ``POSIX_FADV_DONTNEED`` starts writeback of dirty
    pages and drops the clean ones, so nothing waits for the disk; where
    ``posix_fadvise`` is missing (macOS) ``release()`` does nothing.
    """
    fadvise = getattr(os, "posix_fadvise", None)
    fd = os.open(path, os.O_RDONLY) if fadvise is not None else None

    def release() -> None:
        if fd is not None:
            fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    try:
        yield release
    finally:
        if fd is not None:
            os.close(fd)


def as_table(columns):
    """A pyarrow Table from a Table, a pandas DataFrame or a mapping of column arrays."""
    import pyarrow as pa

    if isinstance(columns, pa.Table):
        return columns
    if hasattr(columns, "to_parquet"):  # a pandas DataFrame, converted without importing pandas here
        return pa.Table.from_pandas(columns, preserve_index=False)
    arrays = {}
    for name, values in columns.items():
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            arrays[name] = values
        elif isinstance(values, np.ndarray) and values.dtype.kind not in "OUS":
            arrays[name] = pa.array(values)
        else:  # lists and string/object arrays: let Arrow infer (str -> string, None -> null)
            arrays[name] = pa.array(list(values))
    return pa.table(arrays)


def write_table(path: str | os.PathLike, columns, *, metadata: Mapping[str, str] | None = None) -> None:
    """Write a table to Parquet (zstd) atomically.

    Parameters
    ----------
    path : path-like
    columns : mapping of str to array-like, pyarrow.Table or pandas.DataFrame
        Column order is kept. Numeric numpy arrays keep their dtype; lists and
        string/object arrays are typed by Arrow's inference.
    metadata : mapping of str to str, optional
        Stored in the Parquet schema metadata (e.g. provenance).
    """
    import pyarrow.parquet as pq

    table = as_table(columns)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None):
    """Read a Parquet file as a pyarrow Table (all columns, or ``columns``), schema metadata included."""
    import pyarrow.parquet as pq

    # ParquetFile, not pq.read_table: the latter loads pyarrow.dataset and
    # pyarrow.compute (~65 ms), a quarter of a lean job's budget
    with pq.ParquetFile(path) as pf:
        return pf.read(columns=None if columns is None else list(columns))


def read_columns(path: str | os.PathLike, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read a Parquet file as a dict of numpy arrays (strings as object arrays)."""
    table = read_table(path, columns)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (h, w, 3) or (h, w) uint8 image as PNG, atomically."""
    import imagecodecs

    # zlib level 1: a few per cent larger than the default level, several times faster
    data = imagecodecs.png_encode(np.ascontiguousarray(image), level=1)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_tsv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, float_format: str = "%.6g") -> None:
    """Write rows as a tab-separated table with a header, atomically (the cohort summary).

    Columns are the rows' keys in order of first appearance; a missing key or
    None is an empty cell, floats are written with ``float_format`` (NaN:
    empty), other values with ``str``. Cells holding a tab, quote or newline
    are quoted (csv's minimal quoting), so pandas' ``read_csv(sep="\\t")``
    reads the table back.
    """
    import csv
    import math

    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return float_format % v
        return str(v)

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        w.writerows([cell(r.get(c)) for c in columns] for r in rows)


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a table written by :func:`write_tsv`, every cell a string ('' when empty)."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))
