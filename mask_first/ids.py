"""Stable identifiers for table rows."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

__all__ = ["stable_id", "row_hash"]


def _canonical(value: Any) -> Any:
    """Map equal values of different Python/numpy types to one JSON form."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Integral):  # int, np.int32, np.int64, ... all hash alike
        return int(value)
    if isinstance(value, Real):
        f = float(value)
        if f.is_integer() and math.isfinite(f):
            return int(f)  # 2.0 and 2 describe the same extent
        return repr(f)  # repr round-trips exactly and is stable across versions
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars not caught above
        return _canonical(value.tolist())
    return str(value)


def stable_id(row: Mapping[str, Any], length: int = 16) -> str:
    """Stable hexadecimal id of a row's values.

    Equal values give equal ids across runs, processes, Python versions and
    int/float types (``np.int32(5)``, ``5`` and ``5.0`` hash alike), because the
    hash is SHA-256 of a canonical JSON text, not Python's salted ``hash``.
    The slide table's ``id`` and the keys of cached masks are this id.

    Parameters
    ----------
    row : mapping of str to value
        Key order does not matter.
    length : int
        Number of hex characters kept (16 = 64 bits; 64 = the whole SHA-256).
    """
    return hashlib.sha256(_canonical_text(row)).hexdigest()[:length]


def _canonical_text(row: Mapping[str, Any]) -> bytes:
    return json.dumps(_canonical(dict(row)), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def row_hash(row: Any, column: str = "id", algorithm: Callable[[bytes], Any] = hashlib.sha256) -> Any:
    """The seed's ``row_hash``: the row with a hash of its values added as ``column``.

    Usable as ``slides.map(row_hash)`` (a dict per row, as Ray passes) and as
    ``slides.apply(row_hash, axis=1)`` on a pandas DataFrame (a Series per
    row). The string form is :func:`stable_id`.

    Parameters
    ----------
    row : dict or pandas.Series
        Modified in place and returned, like the seed's.
    column : str
        Name of the id entry (``"id"``).
    algorithm : callable, optional
        hashlib-style constructor, ``algorithm(data).hexdigest()``; SHA-256 by
        default, giving 64 hex characters like the seed.

    Returns
    -------
    The same row with ``row[column]`` set.

    Notes
    -----
    Differs from the seed in what is hashed: the seed hashes ``str(row)``,
    which depends on key order, numpy scalar reprs and the current value of
    ``column``; this hashes the canonical form of every entry except
    ``column`` (see :func:`stable_id`), so the id survives column reordering,
    int/float types, processes and re-hashing.
    """
    items = row.items() if hasattr(row, "items") else dict(row).items()
    values = {k: v for k, v in items if k != column}
    row[column] = algorithm(_canonical_text(values)).hexdigest()
    return row
