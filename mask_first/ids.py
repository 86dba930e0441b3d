"""Stable identifiers for table rows."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

__all__ = ["row_hash"]


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


def row_hash(row: Mapping[str, Any], length: int = 16) -> str:
    """Stable hexadecimal id of a row's values.

    Equal values give equal ids across runs, processes, Python versions and
    int/float types (``np.int32(5)``, ``5`` and ``5.0`` hash alike), because the
    hash is SHA-256 of a canonical JSON text, not Python's salted ``hash``.

    Parameters
    ----------
    row : mapping of str to value
        Key order does not matter.
    length : int
        Number of hex characters kept (16 = 64 bits).
    """
    text = json.dumps(_canonical(dict(row)), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
