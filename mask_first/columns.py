"""Per-tile arguments given as scalars or as columns of a tile table.

The seed API (ratiopath on Ray) passes every per-tile argument as a column of
a table that spans many slides: ``overlay_path=col("mask_path")``,
``mpp_x=col("mpp_x")``, ``level=col("level")``. The public tile functions of
this package accept the same arguments as a scalar (one value for every tile)
or as a column: a numpy array, a pandas Series or Index, a pyarrow Array or
ChunkedArray, or a list. This module turns those forms into numpy arrays and
splits a table into groups of rows that share a value (one overlay or one
slide file), so each file is opened once and results are written back in
input order.

Grouping is cheap on the common layout, a table sorted by slide: one pass
finds the runs of equal values and each group is a contiguous slice (a view,
no gather). Unsorted tables fall back to hash factorisation (pyarrow's
``dictionary_encode`` for arrow input, pandas' ``factorize`` otherwise).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["xy_pair", "is_column", "to_numpy", "column_length", "broadcast", "group_rows", "take"]

def xy_pair(v, cast=float) -> tuple:
    """An (x, y) argument given as one value for both axes or as a pair, each passed through ``cast``."""
    if np.ndim(v) == 0:
        return cast(v), cast(v)
    a, b = v
    return cast(a), cast(b)


#: more runs than this (and than n / 64) means "not sorted": factorise instead
_MAX_RUNS = 256


def _is_arrow(value: Any) -> bool:
    return type(value).__module__.startswith("pyarrow")


def _is_pandas_arrow(value: Any) -> bool:
    """A pandas Series/Index whose values live in pyarrow (``str`` / ``string[pyarrow]`` dtypes)."""
    if not type(value).__module__.startswith("pandas") or not hasattr(value, "array"):
        return False
    return hasattr(value.array, "__arrow_array__") and not isinstance(getattr(value, "dtype", None), np.dtype)


def is_column(value: Any) -> bool:
    """True for per-tile columns; False for scalars (numbers, strings, paths, 0-d arrays)."""
    if value is None or isinstance(value, (str, bytes, os.PathLike)):
        return False
    if _is_arrow(value):
        import pyarrow as pa

        return isinstance(value, (pa.Array, pa.ChunkedArray))
    return np.ndim(value) > 0


def to_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """A column as a 1-D numpy array (``dtype`` if given); copies only when needed."""
    if _is_arrow(value):
        arr = value.to_numpy(zero_copy_only=False) if hasattr(value, "to_numpy") else np.asarray(value)
    elif hasattr(value, "to_numpy") and type(value).__module__.startswith("pandas"):
        arr = value.to_numpy()
    else:
        arr = np.asarray(value)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr if dtype is None else arr.astype(dtype, copy=False)


def column_length(**arguments: Any) -> int | None:
    """Common length of the column-valued arguments; None when all are scalars.

    Raises
    ------
    ValueError
        Naming the arguments whose lengths differ.
    """
    lengths = {name: len(v) for name, v in arguments.items() if is_column(v)}
    if not lengths:
        return None
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ValueError(f"per-tile columns must have equal lengths: {detail}")
    return next(iter(lengths.values()))


def broadcast(value: Any, n: int, dtype: Any) -> np.ndarray | Any:
    """A column as a numpy array of ``dtype``; a scalar stays a (converted) scalar."""
    if is_column(value):
        return to_numpy(value, dtype)
    return np.dtype(dtype).type(value) if dtype is not None else value


def _runs(arr: np.ndarray) -> np.ndarray:
    """Start index of every run of equal consecutive values (plus ``len(arr)`` at the end)."""
    n = len(arr)
    if n == 0:
        return np.zeros(1, np.int64)
    change = np.flatnonzero(arr[1:] != arr[:-1]) + 1
    return np.concatenate(([0], change, [n])).astype(np.int64)


def _factorize(value: Any) -> tuple[np.ndarray, list[Any]]:
    """(codes, keys): ``keys[codes[i]]`` is row i's value."""
    if _is_arrow(value):
        import pyarrow as pa

        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        enc = value.dictionary_encode()
        return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()
    import pandas as pd

    codes, uniques = pd.factorize(to_numpy(value), sort=False)
    return codes.astype(np.int64), list(uniques)


def group_rows(value: Any, n: int) -> list[tuple[Any, slice | np.ndarray]]:
    """Split rows ``0..n-1`` into groups of equal ``value``.

    Parameters
    ----------
    value : scalar or column of length n
        E.g. the overlay path or slide path of every tile.
    n : int
        Number of rows.

    Returns
    -------
    list of (key, index)
        ``key`` is the shared value (a Python object: str, int, ...); ``index``
        selects the group's rows in input order: a ``slice`` when the group is
        one contiguous run, else an int64 array. Groups come in order of first
        appearance.
    """
    if not is_column(value):
        return [(value, slice(0, n))]
    if _is_pandas_arrow(value):
        # pandas' arrow-backed strings (the default in pandas 3): group in arrow, no Python str objects
        import pyarrow as pa

        value = pa.array(value)
    if _is_arrow(value):
        codes, keys = _factorize(value)
        arr: np.ndarray = codes
    else:
        arr = to_numpy(value)
        keys = None
    starts = _runs(arr)
    n_runs = len(starts) - 1
    if n_runs <= max(_MAX_RUNS, n // 64):
        groups: dict[Any, list[tuple[int, int]]] = {}
        for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
            v = arr[a]
            key = keys[int(v)] if keys is not None else (v.item() if isinstance(v, np.generic) else v)
            groups.setdefault(key, []).append((a, b))
        out: list[tuple[Any, slice | np.ndarray]] = []
        for key, runs in groups.items():
            if len(runs) == 1:
                out.append((key, slice(*runs[0])))
            else:
                out.append((key, np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])))
        return out
    if keys is None:
        codes, keys = _factorize(value)
    else:
        codes = arr
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=len(keys)))))
    firsts = [int(order[bounds[k]]) for k in range(len(keys))]
    return [
        (keys[k] if not isinstance(keys[k], np.generic) else keys[k].item(), order[bounds[k] : bounds[k + 1]])
        for k in sorted(range(len(keys)), key=firsts.__getitem__)
        if bounds[k + 1] > bounds[k]
    ]


def take(value: Any, index: slice | np.ndarray) -> Any:
    """Rows ``index`` of a numpy column; a scalar is returned unchanged."""
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return value[index]
    return value
