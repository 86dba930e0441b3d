"""Assemble per-tile model outputs back into a slide-sized mask.

A model is run on tiles cut from a slide on a regular grid (tile extent and
stride in *source pixels*, i.e. pixels of the slide level that was tiled).
Each tile yields either a dense output of ``output_tile_extent`` pixels per
axis (a segmentation map, a heat-map, a feature map) or one vector of scalars
(class probabilities).  :class:`MaskBuilder` places these outputs into one
array covering the whole tiled area and combines overlapping tiles (mean,
max, or a user aggregator).

Conventions
-----------
* Spatial axes are ordered like numpy array axes, ``(y, x)`` in 2-D
  (``(z, y, x)`` in 3-D).  Nothing is specific to two dimensions.
* Tile coordinates are the top-left (lowest-index) corner of a tile in source
  pixels, shaped ``(B, N)``: one row per tile, one column per spatial axis.
* The mask is channels-first, ``(C, *mask_extents)``.
* A *mask cell* is the mask's pixel.  Its size is
  ``gcd(tile, stride * output) / output`` source pixels per axis -- the
  largest size for which both an output pixel (``tile / output`` source px)
  and the stride are whole numbers of cells, so every tile lands exactly on
  the mask.  Usually (stride a multiple of the output pixel) a mask cell *is*
  an output pixel.

Grid (per axis; ``tile``, ``stride``, ``extent`` in source px, ``output`` in
output-tile px)::

    num_tiles      = ceil(max(0, extent - tile) / stride) + 1
    span           = (num_tiles - 1) * stride + tile     # source px covered
    g              = gcd(tile, stride * output)
    mask_extents   = span * output // g                  # mask cells
    mask_stride    = stride * output // g                # mask cells
    upscale_factor = tile // g                           # cells per output px

Example: source (33, 53), tile 8, output 4, stride 4 gives mask (18, 28).
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Aggregator",
    "InMemoryStorage",
    "MaskBuilder",
    "MaskGeometry",
    "MaxAggregator",
    "MeanAggregator",
    "MemmapStorage",
    "Storage",
    "mask_geometry",
]

# Dense tiles with at most this many cells (per channel) are scattered with one
# ``ufunc.at`` call per batch and channel (~2 ns per cell); larger ones are
# combined with slice operations (see ``MaskBuilder._scatter_dense``).
# Measured crossover with numpy 2.4 on a 2-core EPYC: between 24 x 24 and
# 32 x 32 cells.
_SCATTER_MAX_CELLS = 512

# Bounds of the working set of one finalize chunk, as a fraction of the
# accumulator (and absolute limits), see ``MaskBuilder._band_rows``.
_CHUNK_FRACTION = 32
_CHUNK_MIN_BYTES = 256 * 1024
_CHUNK_MAX_BYTES = 32 * 1024 * 1024


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MaskGeometry:
    """Tile grid and mask layout derived from the tiling parameters.

    All fields are read-only ``int64`` arrays of shape ``(N,)``, one entry per
    spatial axis in array order (``(y, x)`` in 2-D).

    Attributes
    ----------
    source_extents : ndarray
        Extent of the tiled slide level, in source pixels.
    source_tile_extent : ndarray
        Tile extent, in source pixels.
    output_tile_extent : ndarray
        Extent of a dense model output, in output-tile pixels.
    stride : ndarray
        Grid stride, in source pixels.
    num_tiles : ndarray
        Number of grid positions per axis.
    span : ndarray
        Source pixels covered by the grid, ``>= source_extents``.
    mask_extents : ndarray
        Mask extent, in mask cells.
    mask_stride : ndarray
        Grid stride, in mask cells.
    upscale_factor : ndarray
        Mask cells per output-tile pixel.
    cell_gcd : ndarray
        ``gcd(tile, stride * output)``; a mask cell is ``cell_gcd / output``
        source pixels.
    """

    source_extents: np.ndarray
    source_tile_extent: np.ndarray
    output_tile_extent: np.ndarray
    stride: np.ndarray
    num_tiles: np.ndarray
    span: np.ndarray
    mask_extents: np.ndarray
    mask_stride: np.ndarray
    upscale_factor: np.ndarray
    cell_gcd: np.ndarray

    @property
    def ndim(self) -> int:
        """Number of spatial axes ``N``."""
        return len(self.source_extents)

    @property
    def cell_size(self) -> tuple[Fraction, ...]:
        """Size of a mask cell in source pixels, exact, per axis."""
        return tuple(
            Fraction(int(g), int(o))
            for g, o in zip(self.cell_gcd, self.output_tile_extent, strict=True)
        )

    @property
    def tile_cells(self) -> np.ndarray:
        """Extent of one (unclipped) tile in mask cells, shape ``(N,)``."""
        return self.output_tile_extent * self.upscale_factor


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _as_axis_ints(value: Any, ndim: int, name: str, *, minimum: int = 1) -> np.ndarray:
    """Broadcast an int or a length-``ndim`` sequence of ints to ``(ndim,)``."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    if arr.ndim == 0:
        arr = np.full(ndim, int(arr), dtype=np.int64)
    elif arr.shape != (ndim,):
        raise ValueError(f"{name} must have {ndim} entries (one per spatial axis), got {value!r}")
    arr = arr.astype(np.int64)
    if np.any(arr < minimum):
        raise ValueError(f"{name} must be >= {minimum} on every axis, got {value!r}")
    return arr


def mask_geometry(
    source_extents: Sequence[int] | npt.ArrayLike,
    source_tile_extent: int | Sequence[int],
    output_tile_extent: int | Sequence[int],
    stride: int | Sequence[int],
) -> MaskGeometry:
    """Compute the tile grid and mask layout for a tiling.

    Parameters
    ----------
    source_extents : sequence of int, shape (N,)
        Extent of the tiled slide level in source pixels, array axis order
        (``(height, width)`` in 2-D).  ``N`` sets the number of spatial axes.
    source_tile_extent : int or sequence of int
        Tile extent in source pixels (per axis, or one value for all).
    output_tile_extent : int or sequence of int
        Extent of a dense model output per tile, in output-tile pixels.  For
        scalar (per-tile) predictions it sets the mask resolution: use 1 for a
        mask at the coarsest resolution the grid allows.
    stride : int or sequence of int
        Grid stride in source pixels.

    Returns
    -------
    MaskGeometry
        See :class:`MaskGeometry` and the module docstring for the formulas.

    Examples
    --------
    >>> g = mask_geometry((33, 53), 8, 4, 4)
    >>> g.mask_extents.tolist(), g.mask_stride.tolist(), g.upscale_factor.tolist()
    ([18, 28], [2, 2], [1, 1])
    """
    extents = np.asarray(source_extents)
    if extents.ndim != 1 or extents.size == 0:
        raise ValueError(f"source_extents must be a non-empty sequence, got {source_extents!r}")
    ndim = extents.size
    extents = _as_axis_ints(extents, ndim, "source_extents")
    tile = _as_axis_ints(source_tile_extent, ndim, "source_tile_extent")
    out = _as_axis_ints(output_tile_extent, ndim, "output_tile_extent")
    step = _as_axis_ints(stride, ndim, "stride")

    # Integer ceil division: exact for any extent, unlike float ceil.
    num_tiles = -(-np.maximum(0, extents - tile) // step) + 1
    span = (num_tiles - 1) * step + tile
    g = np.gcd(tile, step * out)
    return MaskGeometry(
        source_extents=_readonly(extents),
        source_tile_extent=_readonly(tile),
        output_tile_extent=_readonly(out),
        stride=_readonly(step),
        num_tiles=_readonly(num_tiles),
        span=_readonly(span),
        mask_extents=_readonly(span * out // g),
        mask_stride=_readonly(step * out // g),
        upscale_factor=_readonly(tile // g),
        cell_gcd=_readonly(g),
    )


# --------------------------------------------------------------------------
# Storage strategies
# --------------------------------------------------------------------------


class Storage:
    """Allocation strategy for the arrays of a :class:`MaskBuilder`.

    Subclass it to plug in another backend (e.g. zarr-backed numpy views).
    Arrays must be C-contiguous numpy arrays (or subclasses such as
    ``np.memmap``) and support in-place ufuncs on views.

    Methods other than :meth:`allocate` are hooks with no-op defaults.
    """

    def prepare(self, names: Sequence[str]) -> None:
        """Check that the persistent arrays ``names`` can all be created.

        Called once before any allocation so that a failure (e.g. an existing
        file) leaves nothing behind.
        """

    def allocate(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        *,
        fill_value: Any = 0,
        temporary: bool = False,
    ) -> np.ndarray:
        """Return a new C-contiguous array filled with ``fill_value``.

        Parameters
        ----------
        name : str
            Role of the array (``"mask"``, ``"overlap_counter"``, ...); a
            persistent backend derives file names from it.
        shape : tuple of int
            Array shape.
        dtype : dtype-like
            Array dtype.
        fill_value : scalar, optional
            Initial value of every element.
        temporary : bool, optional
            Scratch array that is not part of the result (never persisted).
        """
        raise NotImplementedError

    def note_written(self, nbytes: int) -> None:
        """Hint that about ``nbytes`` bytes were written since the last call."""

    def flush(self) -> None:
        """Make written data durable (persistent backends)."""

    def abort(self) -> None:
        """Undo everything (called when set-up fails); defaults to :meth:`cleanup`."""
        self.cleanup()

    def cleanup(self) -> None:
        """Release scratch resources; arrays already returned stay valid."""


class InMemoryStorage(Storage):
    """Arrays in RAM (``np.zeros``/``np.full``).

    ``np.zeros`` memory is mapped lazily by the OS, so untouched parts of a
    large mask cost no resident memory.
    """

    def allocate(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        *,
        fill_value: Any = 0,
        temporary: bool = False,
    ) -> np.ndarray:
        if fill_value == 0:
            return np.zeros(shape, dtype=dtype)
        return np.full(shape, fill_value, dtype=dtype)


class MemmapStorage(Storage):
    """Arrays in memory-mapped ``.npy`` files (NPY format version 3.0).

    Parameters
    ----------
    filename : str or path, optional
        Persist the result: the ``"mask"`` array is written to ``filename`` and
        every other persistent array next to it as ``<stem>.<name><suffix>``
        (e.g. ``pred.npy`` and ``pred.overlap_counter.npy``).  The files are
        valid ``.npy`` files (``np.load(..., mmap_mode="r")`` works).  If any
        of them exists, :class:`FileExistsError` is raised before any file is
        created.  Without ``filename`` every array is a temporary file.
    directory : str or path, optional
        Directory for temporary files; defaults to the directory of
        ``filename``, else the system temporary directory.
    max_resident_bytes : int, optional
        After roughly this many bytes have been written, mapped pages are
        dropped from the process (``madvise(MADV_DONTNEED)``), so resident
        memory stays around this bound instead of growing to the file size.
        The data stay in the file / page cache; pages are re-read on access.

    Notes
    -----
    On POSIX systems temporary files are unlinked as soon as they are mapped:
    the space is reclaimed when the last array using it is garbage-collected,
    even if the process dies.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str] | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        max_resident_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.filename = None if filename is None else Path(filename)
        if directory is None and self.filename is not None:
            directory = self.filename.parent
        self.directory = None if directory is None else Path(directory)
        self.max_resident_bytes = int(max_resident_bytes)
        self._arrays: list[np.memmap] = []
        self._persistent: list[np.memmap] = []
        self._created: list[Path] = []  # persistent files created by us
        self._pending_unlink: list[Path] = []  # temporary files (non-POSIX)
        self._written = 0

    def path_for(self, name: str) -> Path:
        """Persistent file used for the array ``name`` (requires ``filename``)."""
        if self.filename is None:
            raise ValueError("no filename given: arrays are temporary")
        if name == "mask":
            return self.filename
        return self.filename.with_name(f"{self.filename.stem}.{name}{self.filename.suffix}")

    def prepare(self, names: Sequence[str]) -> None:
        if self.filename is None:
            return
        paths = [self.path_for(n) for n in names]
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise FileExistsError(
                f"refusing to overwrite existing file(s): {', '.join(existing)}"
            )
        missing = {str(p.parent) for p in paths if not p.parent.is_dir()}
        if missing:
            raise FileNotFoundError(f"directory does not exist: {', '.join(sorted(missing))}")

    def allocate(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        *,
        fill_value: Any = 0,
        temporary: bool = False,
    ) -> np.ndarray:
        if temporary or self.filename is None:
            fd, tmp = tempfile.mkstemp(
                prefix=f"mask_first_{name}_", suffix=".npy", dir=self.directory
            )
            os.close(fd)
            path = Path(tmp)
        else:
            path = self.path_for(name)
            # O_EXCL makes the existence check atomic with the creation.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            os.close(fd)
            self._created.append(path)
        try:
            arr = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape), version=(3, 0)
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if temporary or self.filename is None:
            if os.name == "posix":
                path.unlink()
            else:
                self._pending_unlink.append(path)
        else:
            self._persistent.append(arr)
        self._arrays.append(arr)
        if fill_value != 0:  # the file starts zeroed (sparse)
            flat = arr.reshape(-1)
            step = max(1, (64 * 1024 * 1024) // max(1, arr.itemsize))
            for start in range(0, flat.size, step):
                flat[start : start + step] = fill_value
                self.note_written(min(step, flat.size - start) * arr.itemsize)
        return arr

    def note_written(self, nbytes: int) -> None:
        self._written += int(nbytes)
        if self._written >= self.max_resident_bytes:
            self.release()

    def release(self) -> None:
        """Drop mapped pages from the process (data are kept)."""
        self._written = 0
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None:
            return
        for arr in self._arrays:
            mm = getattr(arr, "_mmap", None)
            if mm is not None and not mm.closed:
                mm.madvise(advice)

    def flush(self) -> None:
        # Temporary files are never read back from disk: syncing them would
        # only cost I/O.
        for arr in self._persistent:
            arr.flush()

    def abort(self) -> None:
        self._arrays.clear()
        self._persistent.clear()
        for path in self._created:
            path.unlink(missing_ok=True)
        self._created.clear()
        self.cleanup()

    def cleanup(self) -> None:
        self.flush()
        self._arrays.clear()
        self._persistent.clear()
        for path in self._pending_unlink:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # still mapped on Windows; nothing more we can do
                pass
        self._pending_unlink.clear()


# --------------------------------------------------------------------------
# Aggregators
# --------------------------------------------------------------------------


def _check_supported_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise TypeError(f"unsupported mask dtype {dtype}; use a bool, integer or float dtype")


def _smallest_unsigned(value: int) -> np.dtype:
    """Smallest unsigned integer dtype that can hold ``value``."""
    for t in (np.uint8, np.uint16, np.uint32, np.uint64):
        if value <= np.iinfo(t).max:
            return np.dtype(t)
    raise OverflowError(f"{value} does not fit in 64 bits")


def _lowest(dtype: np.dtype) -> Any:
    """Smallest value of ``dtype``: the identity of ``np.maximum``."""
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind == "b":
        return False
    return np.iinfo(dtype).min


class Aggregator:
    """How overlapping tile contributions are combined.

    The builder writes every contribution into the accumulator returned by
    :meth:`setup` with ``ufunc(target, values, out=target)`` (and
    ``ufunc.at``), so ``ufunc`` must be commutative and associative.  At the
    end it walks the mask in chunks of rows along the first spatial axis and
    calls :meth:`finalize_chunk` with the number of tiles that covered each
    cell.

    Subclasses set :attr:`ufunc` and implement :meth:`setup`,
    :meth:`finalize_chunk` and :meth:`result`.
    """

    ufunc: ClassVar[np.ufunc]
    #: Names of the result arrays a persistent storage must be able to create.
    persistent_names: ClassVar[tuple[str, ...]] = ()

    def identity(self, dtype: np.dtype) -> Any:
        """Initial value of the accumulator (neutral element of :attr:`ufunc`)."""
        raise NotImplementedError

    def setup(self, storage: Storage, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Allocate state and return the accumulator of shape ``(C, *mask_extents)``.

        ``dtype`` is the requested result dtype; the accumulator may use a
        wider one.  It must be initialised to :meth:`identity`.
        """
        raise NotImplementedError

    def begin_finalize(self, max_count: int) -> None:
        """Called once before the first chunk with the largest overlap count."""

    def finalize_chunk(
        self, index: tuple[slice, ...], values: np.ndarray, count: np.ndarray
    ) -> None:
        """Turn one chunk of accumulated values into final values.

        Parameters
        ----------
        index : tuple of slice
            Position of the chunk in the ``(C, *mask_extents)`` mask.
        values : ndarray, shape (C, *chunk_extents)
            Writable view of the accumulator for this chunk.
        count : ndarray
            Number of tiles that covered each cell (unsigned integer),
            broadcastable to ``(1, *chunk_extents)``: size-1 axes repeat (the
            builder passes one row for a block of identical rows).  Use
            broadcasting operations; do not assume the full shape.
        """
        raise NotImplementedError

    def result(self) -> Any:
        """Return the finished result (called after the last chunk)."""
        raise NotImplementedError


class MeanAggregator(Aggregator):
    """Average of the overlapping contributions.

    :meth:`MaskBuilder.finalize` returns ``{"mask": (C, *mask_extents),
    "overlap_counter": (1, *mask_extents)}``.

    Parameters
    ----------
    fill_value : scalar, optional
        Value of cells no tile covered (their counter is 0).  Default 0.
    counter_dtype : dtype-like, optional
        Dtype of the overlap counter.  By default the smallest unsigned
        integer type (at least ``uint8``) that holds the largest overlap that
        actually occurred, so the counter can never wrap.  An explicit dtype
        that is too small raises :class:`OverflowError` before anything is
        modified.
    accumulator_dtype : dtype-like, optional
        Dtype in which sums are accumulated.  Default: the mask dtype for
        ``float32``/``float64`` (finalized in place), ``float32`` for
        ``float16``, ``float64`` for integer and bool masks.

    Notes
    -----
    Integer and bool masks get the mean rounded half to even (``np.rint``)
    and then cast; the mean of in-range values is always in range.  When the
    accumulator dtype differs from the mask dtype, the mask is a second array
    (memory: accumulator + mask + counter); otherwise the division happens in
    place, chunk by chunk.
    """

    ufunc = np.add
    persistent_names = ("mask", "overlap_counter")

    def __init__(
        self,
        fill_value: Any = 0,
        counter_dtype: npt.DTypeLike | None = None,
        accumulator_dtype: npt.DTypeLike | None = None,
    ) -> None:
        self.fill_value = fill_value
        self.counter_dtype = None if counter_dtype is None else np.dtype(counter_dtype)
        if self.counter_dtype is not None and self.counter_dtype.kind != "u":
            raise TypeError(f"counter_dtype must be an unsigned integer dtype, got {counter_dtype}")
        self.accumulator_dtype = None if accumulator_dtype is None else np.dtype(accumulator_dtype)
        self.mask: np.ndarray | None = None
        self.overlap_counter: np.ndarray | None = None
        self._storage: Storage | None = None
        self._acc: np.ndarray | None = None

    def identity(self, dtype: np.dtype) -> Any:
        return 0

    def setup(self, storage: Storage, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        _check_supported_dtype(dtype)
        acc_dtype = self.accumulator_dtype
        if acc_dtype is None:
            if dtype in (np.float32, np.float64) or (dtype.kind == "f" and dtype.itemsize > 8):
                acc_dtype = dtype
            elif dtype.kind == "f":
                acc_dtype = np.dtype(np.float32)
            else:
                acc_dtype = np.dtype(np.float64)
        if acc_dtype.kind != "f":
            raise TypeError(f"accumulator_dtype must be a float dtype, got {acc_dtype}")
        _check_fill(self.fill_value, dtype, "MeanAggregator fill_value")
        self._storage = storage
        if acc_dtype == dtype:
            self.mask = self._acc = storage.allocate("mask", shape, dtype)
        else:
            self.mask = storage.allocate("mask", shape, dtype)
            self._acc = storage.allocate("accumulator", shape, acc_dtype, temporary=True)
        self._shape = shape
        return self._acc

    def begin_finalize(self, max_count: int) -> None:
        assert self._storage is not None
        if self.counter_dtype is None:
            dtype = _smallest_unsigned(max_count)
        else:
            dtype = self.counter_dtype
            if max_count > np.iinfo(dtype).max:
                raise OverflowError(
                    f"a mask cell is covered by {max_count} tiles, more than "
                    f"counter_dtype={dtype} can hold; use a wider counter_dtype"
                )
        self.overlap_counter = self._storage.allocate(
            "overlap_counter", (1, *self._shape[1:]), dtype
        )

    def finalize_chunk(
        self, index: tuple[slice, ...], values: np.ndarray, count: np.ndarray
    ) -> None:
        assert self.mask is not None and self.overlap_counter is not None
        self.overlap_counter[index] = count
        # Uncovered sums are 0 (the identity), so dividing by max(count, 1)
        # needs no ``where=``; a same-dtype denominator keeps the division a
        # plain SIMD loop instead of a buffered mixed-type one.
        denominator = np.maximum(count, 1).astype(values.dtype)
        if self.mask is self._acc:
            np.divide(values, denominator, out=values)
            out = values
        else:
            mean = np.divide(values, denominator)
            if self.mask.dtype.kind in "biu":
                np.rint(mean, out=mean)
            out = self.mask[index]
            np.copyto(out, mean, casting="unsafe")
        if self.fill_value != 0:
            np.copyto(out, self.fill_value, where=count == 0)

    def result(self) -> dict[str, np.ndarray]:
        return {"mask": self.mask, "overlap_counter": self.overlap_counter}


class MaxAggregator(Aggregator):
    """Maximum of the overlapping contributions.

    :meth:`MaskBuilder.finalize` returns the mask array ``(C, *mask_extents)``.
    The accumulator starts at the dtype's lowest value (``-inf`` for floats),
    so negative predictions survive; cells no tile covered are set to
    ``fill_value`` afterwards (decided from the overlap count, not from the
    value, so a genuine ``-inf``/dtype-minimum prediction is kept).

    Parameters
    ----------
    fill_value : scalar, optional
        Value of uncovered cells.  Default 0 (``False`` for bool masks), as
        in the seed and as :class:`MeanAggregator`; ``np.nan`` marks them
        instead (float masks).
    """

    ufunc = np.maximum
    persistent_names = ("mask",)

    def __init__(self, fill_value: Any = 0) -> None:
        self.fill_value = fill_value
        self.mask: np.ndarray | None = None

    def identity(self, dtype: np.dtype) -> Any:
        return _lowest(dtype)

    def setup(self, storage: Storage, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        _check_supported_dtype(dtype)
        self._fill = 0 if self.fill_value is None else self.fill_value
        _check_fill(self._fill, dtype, "MaxAggregator fill_value")
        self.mask = storage.allocate("mask", shape, dtype, fill_value=_lowest(dtype))
        return self.mask

    def finalize_chunk(
        self, index: tuple[slice, ...], values: np.ndarray, count: np.ndarray
    ) -> None:
        np.copyto(values, self._fill, where=count == 0)

    def result(self) -> np.ndarray:
        assert self.mask is not None
        return self.mask


def _check_fill(fill: Any, dtype: np.dtype, what: str) -> None:
    value = np.asarray(fill)
    if dtype.kind in "biu" and not (
        value.dtype.kind in "biu"
        or (value.dtype.kind == "f" and np.isfinite(value) and value == np.rint(value))
    ):
        raise ValueError(f"{what}={fill!r} cannot be stored in a {dtype} mask")
    if dtype.kind in "iu" and not (np.iinfo(dtype).min <= value <= np.iinfo(dtype).max):
        raise ValueError(f"{what}={fill!r} is out of range for {dtype}")


# --------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------

StorageArg = Literal["inmemory", "memmap"] | Storage | type[Storage]
AggregationArg = Literal["mean", "max"] | Aggregator | type[Aggregator]

_STORAGES: dict[str, type[Storage]] = {
    "inmemory": InMemoryStorage,
    "in-memory": InMemoryStorage,
    "memmap": MemmapStorage,
}
_AGGREGATORS: dict[str, type[Aggregator]] = {"mean": MeanAggregator, "max": MaxAggregator}


def _resolve_storage(storage: StorageArg, kwargs: dict[str, Any]) -> Storage:
    if isinstance(storage, str):
        try:
            storage = _STORAGES[storage.lower()]
        except KeyError:
            raise ValueError(
                f"unknown storage {storage!r}; use one of {sorted(_STORAGES)}"
            ) from None
    if isinstance(storage, type):
        return storage(**kwargs)
    if kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)} for a storage instance")
    return storage


def _resolve_aggregator(aggregation: AggregationArg) -> Aggregator:
    if isinstance(aggregation, str):
        try:
            aggregation = _AGGREGATORS[aggregation.lower()]
        except KeyError:
            raise ValueError(
                f"unknown aggregation {aggregation!r}; use one of {sorted(_AGGREGATORS)}"
            ) from None
    if isinstance(aggregation, type):
        return aggregation()
    return aggregation


class MaskBuilder:
    """Assemble tile predictions into a mask covering the tiled slide.

    Parameters
    ----------
    source_extents : sequence of int, shape (N,)
        Extent of the tiled slide level in source pixels, array axis order
        (``(height, width)`` for 2-D slides).
    source_tile_extent : int or sequence of int
        Tile extent in source pixels.
    output_tile_extent : int or sequence of int
        Extent of the model's dense output per tile, in output-tile pixels;
        for scalar predictions it sets the mask resolution (see
        :func:`mask_geometry`).
    stride : int or sequence of int
        Grid stride in source pixels.
    n_channels : int, optional
        Number of channels ``C`` of the mask; every batch must have exactly
        this many.
    storage : {"inmemory", "memmap"}, Storage subclass or instance, optional
        Where the arrays live.  ``"memmap"`` uses :class:`MemmapStorage`
        (temporary files, or ``filename=...`` to persist).
    aggregation : Aggregator subclass or instance, or {"mean", "max"}, optional
        How overlapping tiles are combined.  Pass an instance to set options,
        e.g. ``MaxAggregator(fill_value=-1)``.
    dtype : dtype-like, optional
        Dtype of the finished mask.
    fill_value : scalar, optional
        Value of mask cells no tile covered.  Default: the aggregator's own,
        which is 0 for both :class:`MeanAggregator` and :class:`MaxAggregator`
        (as in the seed, so ``mask.sum()``, a persisted memmap's sum and
        :meth:`resize_to_source` stay finite).  Pass ``np.nan`` to mark
        uncovered cells in a float mask, or any value the dtype holds; it
        overrides the aggregator's ``fill_value``.
    **kwargs
        Passed to the storage class (e.g. ``filename``, ``directory``).

    Attributes
    ----------
    source_extents, source_tile_extent, output_tile_extent, stride : ndarray
        Parameters as ``int64`` arrays of shape ``(N,)`` (source px, output px).
    span : ndarray
        Source pixels covered by the grid per axis (``>= source_extents``).
    mask_extents : ndarray
        Mask extent in mask cells; the mask array is ``(C, *mask_extents)``.
    mask_stride : ndarray
        Grid stride in mask cells.
    upscale_factor : ndarray
        Mask cells per output-tile pixel.
    geometry : MaskGeometry
        All of the above plus the exact cell size.
    storage : Storage
    aggregator : Aggregator

    Notes
    -----
    *Placement.*  A tile with top-left source coordinate ``c`` starts at mask
    cell ``c * output // gcd(tile, stride * output)``.  Coordinates need not be
    on the stride grid (e.g. a last tile moved to the slide edge), but they
    must fall on a cell boundary and the tile must lie inside ``[0, span)``;
    otherwise :class:`ValueError` names the offending tile.

    *Uncovered cells.*  Cells no tile covered (overlap count 0) are 0 with
    every built-in aggregator and dtype, as in the seed; ``fill_value=np.nan``
    (float masks) or any other value changes that, decided from the overlap
    count, never from the value, so a genuine 0 or NaN prediction is kept.

    *Cost.*  Dense tiles are written immediately (one slice operation per
    large tile, one vectorised scatter per batch of small tiles).  Scalar
    predictions and the overlap counts are only recorded (a few bytes per
    tile) and expanded chunk-wise by :meth:`finalize`, on a grid compressed
    to the distinct tile edges, so they never cost per-cell work during
    :meth:`update_batch` and never need a full-size temporary.

    Examples
    --------
    >>> mb = MaskBuilder((8, 8), 4, 1, 2)
    >>> mb.update_batch(np.array([[1.0], [3.0]]), np.array([[0, 0], [2, 2]]))
    >>> out = mb.finalize()
    >>> out["mask"][0, :3].tolist()
    [[1.0, 1.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [0.0, 3.0, 3.0, 0.0]]
    """

    def __init__(
        self,
        source_extents: Sequence[int] | npt.ArrayLike,
        source_tile_extent: int | Sequence[int],
        output_tile_extent: int | Sequence[int],
        stride: int | Sequence[int],
        n_channels: int = 1,
        storage: StorageArg = "inmemory",
        aggregation: AggregationArg = MeanAggregator,
        dtype: npt.DTypeLike = np.float32,
        *,
        fill_value: Any = None,
        **kwargs: Any,
    ) -> None:
        geometry = mask_geometry(source_extents, source_tile_extent, output_tile_extent, stride)
        if not isinstance(n_channels, (int, np.integer)) or n_channels < 1:
            raise ValueError(f"n_channels must be a positive int, got {n_channels!r}")
        self.geometry = geometry
        self.source_extents = geometry.source_extents
        self.source_tile_extent = geometry.source_tile_extent
        self.output_tile_extent = geometry.output_tile_extent
        self.stride = geometry.stride
        self.span = geometry.span
        self.mask_extents = geometry.mask_extents
        self.mask_stride = geometry.mask_stride
        self.upscale_factor = geometry.upscale_factor
        self.n_channels = int(n_channels)
        self.dtype = np.dtype(dtype)
        _check_supported_dtype(self.dtype)

        self.storage = _resolve_storage(storage, kwargs)
        self.aggregator = _resolve_aggregator(aggregation)
        if fill_value is not None:
            if not hasattr(self.aggregator, "fill_value"):
                raise TypeError(f"{type(self.aggregator).__name__} has no fill_value to set")
            self.aggregator.fill_value = fill_value
        shape = (self.n_channels, *map(int, self.mask_extents))
        self.storage.prepare(self.aggregator.persistent_names)
        try:
            acc = self.aggregator.setup(self.storage, shape, self.dtype)
            if acc.shape != shape or not acc.flags.c_contiguous:
                raise ValueError(
                    f"aggregator returned an accumulator of shape {acc.shape} "
                    f"(C-contiguous: {acc.flags.c_contiguous}); expected C-contiguous {shape}"
                )
        except BaseException:
            self.storage.abort()
            raise
        # A base-class view: slicing an np.memmap runs Python-level
        # __array_finalize__, which would dominate the per-tile cost.
        self._acc: np.ndarray | None = np.asarray(acc)
        self._identity = self.aggregator.identity(self._acc.dtype)
        self._records: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._scratch: np.ndarray | None = None  # reused: no page faults per batch
        self._result: Any = None
        self._finalized = False
        self._closed = False

    # -- properties ---------------------------------------------------------

    @property
    def ndim(self) -> int:
        """Number of spatial axes ``N``."""
        return self.geometry.ndim

    # -- input validation ---------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the builder was cleaned up")
        if self._finalized:
            raise RuntimeError("the builder was already finalized")

    def _parse_clipping(self, edge_clipping: Any) -> tuple[np.ndarray, np.ndarray]:
        ndim = self.ndim
        if isinstance(edge_clipping, int) and edge_clipping == 0:
            zeros = np.zeros(ndim, dtype=np.int64)
            return zeros, zeros
        clip = np.asarray(edge_clipping)
        if clip.dtype.kind not in "iu":
            raise TypeError(f"edge_clipping must contain ints, got {edge_clipping!r}")
        if clip.ndim == 0:
            start = end = np.full(ndim, int(clip), dtype=np.int64)
        elif clip.shape == (ndim,):
            start = end = clip.astype(np.int64)
        elif clip.shape == (ndim, 2):
            start, end = clip[:, 0].astype(np.int64), clip[:, 1].astype(np.int64)
        else:
            raise ValueError(
                f"edge_clipping must be an int, {ndim} ints (per axis) or {ndim} "
                f"(start, end) pairs, got {edge_clipping!r}"
            )
        if np.any(start < 0) or np.any(end < 0):
            raise ValueError(f"edge_clipping must be non-negative, got {edge_clipping!r}")
        if np.any(start + end >= self.output_tile_extent):
            raise ValueError(
                f"edge_clipping {edge_clipping!r} removes the whole tile "
                f"(output_tile_extent={tuple(self.output_tile_extent.tolist())} output px)"
            )
        return start, end

    def _tile_positions(self, coords: Any, n_tiles: int) -> np.ndarray:
        """Validate ``(B, N)`` source-pixel coordinates; return mask-cell starts."""
        ndim = self.ndim
        c = np.asarray(coords)
        if c.ndim == 1 and n_tiles == 1 and c.shape == (ndim,):
            c = c[None]
        if c.shape != (n_tiles, ndim):
            hint = " (transpose it: coordinates are (B, N))" if c.shape == (ndim, n_tiles) else ""
            raise ValueError(
                f"coords must have shape (B, N) = ({n_tiles}, {ndim}), got {c.shape}{hint}"
            )
        if c.dtype.kind == "f":
            if not np.all(np.isfinite(c)) or np.any(c != np.rint(c)):
                bad = int(np.flatnonzero(~(np.isfinite(c) & (c == np.rint(c))).all(1))[0])
                raise ValueError(f"tile {bad}: coordinate {c[bad].tolist()} is not integral")
            c = c.astype(np.int64)
        elif c.dtype.kind in "iu":
            c = c.astype(np.int64, copy=False)
        else:
            raise TypeError(f"coords must be integers, got dtype {c.dtype}")

        g = self.geometry
        outside = (c < 0) | (c > g.span - g.source_tile_extent)
        if outside.any():
            bad = int(np.flatnonzero(outside.any(1))[0])
            raise ValueError(
                f"tile {bad} at source coordinate {tuple(c[bad].tolist())} lies outside the "
                f"mask: valid top-left coordinates are 0 <= c <= span - tile = "
                f"{tuple((g.span - g.source_tile_extent).tolist())} source px"
            )
        scaled = c * g.output_tile_extent
        off_lattice = scaled % g.cell_gcd != 0
        if off_lattice.any():
            bad = int(np.flatnonzero(off_lattice.any(1))[0])
            raise ValueError(
                f"tile {bad} at source coordinate {tuple(c[bad].tolist())} does not start on "
                f"a mask cell boundary: coordinates must be multiples of the cell size "
                f"{tuple(str(s) for s in g.cell_size)} source px (gcd(tile, stride * output) "
                f"/ output); choose output_tile_extent / stride so that the cell size "
                f"divides the coordinate"
            )
        return scaled // g.cell_gcd

    # -- accumulation -------------------------------------------------------

    def update_batch(
        self,
        batch: npt.ArrayLike,
        coords: npt.ArrayLike,
        edge_clipping: int | Sequence[int] | Sequence[Sequence[int]] = 0,
    ) -> None:
        """Add a batch of tile outputs.

        Parameters
        ----------
        batch : array_like, shape (B, C, *output_tile_extent) or (B, C)
            Dense outputs (output-tile pixels, channels first) or one value
            per channel and tile, which is broadcast over the whole tile.
        coords : array_like of int, shape (B, N)
            Top-left corner of each tile in source pixels, ``(y, x)`` order.
        edge_clipping : int, N ints, or N (start, end) pairs, optional
            Output-tile pixels to discard at the tile borders before
            accumulation: one value for every edge, one per axis (both ends),
            or ``(start, end)`` per axis.  Applies to scalar outputs too (after
            broadcasting); clipped cells do not count as covered.

        Raises
        ------
        ValueError
            Wrong shapes, a channel count different from ``n_channels``, or a
            tile that is off the mask lattice or outside the mask.
        """
        self._check_open()
        assert self._acc is not None
        values = np.asarray(batch)
        ndim = self.ndim
        if values.ndim == 2:
            scalar = True
        elif values.ndim == 2 + ndim:
            scalar = False
            if values.shape[2:] != tuple(self.output_tile_extent.tolist()):
                raise ValueError(
                    f"dense batch must have shape (B, C, *output_tile_extent) = "
                    f"(B, {self.n_channels}, {', '.join(map(str, self.output_tile_extent))}), "
                    f"got {values.shape}"
                )
        else:
            raise ValueError(
                f"batch must have shape (B, C) or (B, C, *output_tile_extent) with "
                f"{ndim} spatial axes, got {values.shape}"
            )
        if values.shape[1] != self.n_channels:
            raise ValueError(
                f"batch has {values.shape[1]} channel(s) but the mask has "
                f"{self.n_channels}; channels are never broadcast"
            )
        n_tiles = values.shape[0]
        clip_start, clip_end = self._parse_clipping(edge_clipping)
        pos = self._tile_positions(coords, n_tiles)
        if n_tiles == 0:
            return

        u = self.upscale_factor
        starts = pos + clip_start * u
        ends = pos + (self.output_tile_extent - clip_end) * u
        acc_dtype = self._acc.dtype
        if scalar:
            # Copy: the caller may reuse its buffer before finalize().
            self._records.append(
                (starts, ends, values.astype(acc_dtype, casting="same_kind", copy=True))
            )
            return

        values = values.astype(acc_dtype, casting="same_kind", copy=False)
        stops = self.output_tile_extent - clip_end
        crop = tuple(slice(a, b) for a, b in zip(clip_start.tolist(), stops.tolist()))
        values = values[(slice(None), slice(None), *crop)]
        for axis, factor in enumerate(u.tolist()):
            if factor > 1:
                values = np.repeat(values, factor, axis=2 + axis)
        self._scatter_dense(values, starts)
        self._records.append((starts, ends, None))
        self.storage.note_written(values.nbytes)

    def _scatter_dense(self, values: np.ndarray, starts: np.ndarray) -> None:
        """Combine ``values`` (B, C, *E) into the accumulator at cell ``starts`` (B, N)."""
        acc = self._acc
        assert acc is not None
        ufunc = self.aggregator.ufunc
        extent = values.shape[2:]
        if math.prod(extent) <= _SCATTER_MAX_CELLS:
            # Flat indices of every (tile, cell); ufunc.at is unbuffered, so
            # overlapping tiles within the batch combine correctly.
            cell_strides = np.array(acc.strides[1:], dtype=np.int64) // acc.itemsize
            offsets = np.zeros((), dtype=np.int64)
            for e, s in zip(extent, cell_strides):
                offsets = np.add.outer(offsets, np.arange(e, dtype=np.int64) * s)
            flat = ((starts @ cell_strides)[:, None] + offsets.reshape(1, -1)).reshape(-1)
            planes = acc.reshape(acc.shape[0], -1)
            for channel in range(acc.shape[0]):
                ufunc.at(planes[channel], flat, values[:, channel].reshape(-1))
            return

        # Large tiles.  numpy spends ~35 ns per row in a strided in-place
        # ufunc, about 3x its cost per row of a copy.  So tiles that follow
        # each other along the last axis with a step dividing the tile width
        # (a run) are split into "phases" of exactly adjacent tiles; each
        # phase is copied side by side into a scratch strip and combined into
        # the mask with one ufunc call over long contiguous rows.  Measured
        # ~1.8x faster than one slice operation per tile for 128 x 128 tiles.
        order = np.lexsort(starts[:, ::-1].T)
        if np.any(order != np.arange(len(order))):
            starts, values = starts[order], values[order]
        width = extent[-1]
        step = starts[1:, -1] - starts[:-1, -1]
        link = (
            np.all(starts[1:, :-1] == starts[:-1, :-1], axis=1)
            & (step > 0)
            & (step <= width)
            & (width % np.maximum(step, 1) == 0)
        )
        # Keep one step per run: drop a link whose step differs from the
        # previous link's.
        link[1:] &= ~(link[:-1] & (step[1:] != step[:-1]))
        bounds = [0, *(np.flatnonzero(~link) + 1).tolist(), len(starts)]
        lead_extent = extent[:-1]
        cells = math.prod(extent) * values.shape[1]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            n_phases = width // int(step[lo]) if hi - lo > 1 else 1
            if hi - lo < 2 * n_phases:
                self._combine_tiles(values[lo:hi], starts[lo:hi])
                continue
            lead = tuple(slice(a, a + e) for a, e in zip(starts[lo, :-1].tolist(), lead_extent))
            for phase in range(n_phases):
                tiles = values[lo + phase : hi : n_phases]
                n = len(tiles)
                if self._scratch is None or self._scratch.size < n * cells:
                    self._scratch = np.empty(max(n * cells, len(values) * cells), acc.dtype)
                strip = self._scratch[: n * cells].reshape(values.shape[1], *lead_extent, n, width)
                np.copyto(strip, np.moveaxis(tiles, 0, -2))
                x = int(starts[lo + phase, -1])
                region = acc[(slice(None), *lead, slice(x, x + n * width))]
                ufunc(region, strip.reshape(region.shape), out=region)

    def _combine_tiles(self, values: np.ndarray, starts: np.ndarray) -> None:
        """One slice operation per tile."""
        acc = self._acc
        assert acc is not None
        ufunc = self.aggregator.ufunc
        extent = values.shape[2:]
        for tile, start in zip(values, starts.tolist()):
            view = acc[(slice(None), *(slice(s, s + e) for s, e in zip(start, extent)))]
            ufunc(view, tile, out=view)

    # -- finalization -------------------------------------------------------

    def _band_rows(self) -> int:
        """Rows (along the first spatial axis) per finalize band."""
        assert self._acc is not None
        row_cells = math.prod(int(m) for m in self.mask_extents[1:])
        budget = min(
            _CHUNK_MAX_BYTES, max(_CHUNK_MIN_BYTES, self._acc.nbytes // _CHUNK_FRACTION)
        )
        # Counts and scalar contributions are expanded one row at a time and
        # broadcast, so the per-cell temporaries are the float64 mean of an
        # aggregator that does not finalize in place and a bool mask.
        per_row = row_cells * (1 + 8 * self.n_channels)
        return max(1, budget // per_row)

    def finalize(self) -> Any:
        """Combine everything and return the aggregator's result.

        Works chunk by chunk along the first spatial axis; besides the result
        arrays themselves (and the overlap counter of :class:`MeanAggregator`)
        it needs only about ``1/32`` of the accumulator size (at most 32 MiB)
        of temporary memory.  Calling it again returns the same result.

        Returns
        -------
        Any
            :class:`MeanAggregator`: ``{"mask": (C, *mask_extents),
            "overlap_counter": (1, *mask_extents)}``;
            :class:`MaxAggregator`: the ``(C, *mask_extents)`` mask.
        """
        if self._finalized:
            return self._result
        self._check_open()
        acc = self._acc
        assert acc is not None
        records = _Records.concatenate(self._records, self.ndim, self.n_channels, acc.dtype)
        extents = tuple(int(m) for m in self.mask_extents)
        rows = self._band_rows()
        bands = [(r0, min(extents[0], r0 + rows)) for r0 in range(0, extents[0], rows)]

        # The largest overlap must be known before the aggregator allocates
        # its counter, hence two passes.  Band layouts grow with the number of
        # tiles, not of cells; they are kept for the second pass while they
        # stay small next to the accumulator, and recomputed otherwise.
        keep_elements = acc.nbytes // (8 * _CHUNK_FRACTION)
        layouts: list[_BandLayout | None] = []
        max_count = 0
        for r0, r1 in bands:
            layout = records.band_layout(r0, r1, extents)
            max_count = max(max_count, layout.max_count)
            keep_elements -= layout.count.size + 2 * layout.flat.size
            layouts.append(layout if keep_elements >= 0 else None)
        self.aggregator.begin_finalize(max_count)
        count_dtype = _smallest_unsigned(max_count)

        ufunc = self.aggregator.ufunc
        for (r0, r1), layout in zip(bands, layouts, strict=True):
            if layout is None:
                layout = records.band_layout(r0, r1, extents)
            scalars = layout.scalar_grid(records, ufunc, self._identity, acc.dtype)
            counts = layout.count.astype(count_dtype)
            rows = layout.breaks[0] + r0
            # Within a compressed row every mask row is identical, so one
            # expanded row is broadcast over the whole slab of rows.
            for k in range(len(rows) - 1):
                index = (slice(None), slice(int(rows[k]), int(rows[k + 1])))
                values = acc[index]
                if scalars is not None:
                    ufunc(values, layout.expand_row(scalars[:, k], 1)[:, None], out=values)
                count = layout.expand_row(counts[k], 0)[None, None]
                self.aggregator.finalize_chunk(index, values, count)
                self.storage.note_written(values.nbytes + values[0].size * count.itemsize)
        self.storage.flush()
        self._result = self.aggregator.result()
        self._records = []
        self._scratch = None
        self._finalized = True
        return self._result

    # -- resampling ---------------------------------------------------------

    def resize_to_source(
        self, image: npt.ArrayLike, *, kernel: Literal["nearest", "linear"] = "nearest"
    ) -> np.ndarray:
        """Resample a mask to source resolution, cropped to ``source_extents``.

        Parameters
        ----------
        image : array_like, shape (C, *mask_extents) or (*mask_extents)
            A mask produced by this builder (or anything on the same cell
            grid).
        kernel : {"nearest", "linear"}, optional
            ``"nearest"`` (default) copies the cell containing each source
            pixel's centre; exact, dtype preserved.  ``"linear"`` interpolates
            between cell centres (separably along each axis, clamped at the
            border) and returns floats.  Neither can leave the input's value
            range (lanczos/cubic kernels overshoot and are not offered).
            NaN cells propagate to the pixels that use them.

        Returns
        -------
        ndarray, shape (C, *source_extents) or (*source_extents)
            Source pixels ``[0, source_extents)`` of the covered span; the part
            of the span beyond the slide edge is cropped.  The whole output is
            allocated: for large slides resize a region or a lower level.
        """
        img = np.asarray(image)
        ndim = self.ndim
        extents = tuple(int(m) for m in self.mask_extents)
        if img.ndim not in (ndim, ndim + 1) or img.shape[img.ndim - ndim :] != extents:
            raise ValueError(
                f"image must have shape (C, *mask_extents) or mask_extents = {extents}, "
                f"got {img.shape}"
            )
        lead = img.ndim - ndim
        g = self.geometry
        if kernel == "nearest":
            out = img
            for axis in range(ndim):
                pixels = np.arange(int(g.source_extents[axis]), dtype=np.int64)
                # Cell containing the pixel centre (i + 1/2), in exact integers.
                cell = ((2 * pixels + 1) * int(g.output_tile_extent[axis])) // (
                    2 * int(g.cell_gcd[axis])
                )
                out = np.take(out, cell, axis=lead + axis)
            return out
        if kernel in ("linear", "bilinear"):
            dtype = img.dtype if img.dtype.kind == "f" else np.dtype(np.float64)
            out = img.astype(dtype, copy=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN input
                lo, hi = np.nanmin(img), np.nanmax(img)
            for axis in range(ndim):
                n_cells = extents[axis]
                pixels = np.arange(int(g.source_extents[axis]), dtype=np.float64)
                # Pixel centre in cell units, minus 1/2 to measure from cell centres.
                t = (pixels + 0.5) * int(g.output_tile_extent[axis]) / int(g.cell_gcd[axis]) - 0.5
                t = np.clip(t, 0, n_cells - 1)
                i0 = np.floor(t).astype(np.int64)
                i1 = np.minimum(i0 + 1, n_cells - 1)
                shape = [1] * out.ndim
                shape[lead + axis] = -1
                w = (t - i0).astype(dtype).reshape(shape)
                a = np.take(out, i0, axis=lead + axis)
                b = np.take(out, i1, axis=lead + axis)
                # a + w * (b - a) is exactly a where a == b; the final clip
                # removes the last-ulp excursions of the general case.
                b -= a
                b *= w
                a += b
                out = a
                del b
            if not (np.isnan(lo) or np.isnan(hi)):
                np.clip(out, lo, hi, out=out)
            return out
        raise ValueError(
            f"unsupported kernel {kernel!r}: use 'nearest' or 'linear' (kernels such as "
            f"lanczos or cubic overshoot the value range)"
        )

    # -- lifetime -----------------------------------------------------------

    def cleanup(self) -> None:
        """Release storage resources (temporary files) and internal buffers.

        Arrays returned by :meth:`finalize` stay valid; persistent memmap
        files are flushed and kept.  The builder cannot be used afterwards.
        """
        if self._closed:
            return
        self._closed = True
        self._records = []
        self._acc = None
        self._scratch = None
        self.storage.cleanup()

    def __enter__(self) -> MaskBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --------------------------------------------------------------------------
# Recorded tile footprints and their chunk-wise expansion
# --------------------------------------------------------------------------


@dataclass
class _Records:
    """All tile footprints (mask cells, half-open) sorted by first-axis start."""

    starts: np.ndarray  # (T, N) int64
    ends: np.ndarray  # (T, N) int64
    scalar_index: np.ndarray  # (T,) row in ``scalar_values`` or -1 for dense tiles
    scalar_values: np.ndarray  # (S, C)
    max_extent0: int

    @classmethod
    def concatenate(
        cls,
        batches: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
        ndim: int,
        n_channels: int,
        dtype: np.dtype,
    ) -> _Records:
        if not batches:
            empty = np.zeros((0, ndim), dtype=np.int64)
            return cls(empty, empty, np.zeros(0, np.int64), np.zeros((0, n_channels), dtype), 0)
        starts = np.concatenate([b[0] for b in batches])
        ends = np.concatenate([b[1] for b in batches])
        scalar_values = [b[2] for b in batches if b[2] is not None]
        index_parts = []
        n_scalar = 0
        for s, _, v in batches:
            if v is None:
                index_parts.append(np.full(len(s), -1, dtype=np.int64))
            else:
                index_parts.append(np.arange(n_scalar, n_scalar + len(s), dtype=np.int64))
                n_scalar += len(s)
        scalar_index = np.concatenate(index_parts)
        order = np.argsort(starts[:, 0], kind="stable")
        values = (
            np.concatenate(scalar_values) if scalar_values else np.zeros((0, n_channels), dtype)
        )
        return cls(
            starts[order],
            ends[order],
            scalar_index[order],
            values,
            int((ends[:, 0] - starts[:, 0]).max()),
        )

    def band_layout(self, r0: int, r1: int, extents: tuple[int, ...]) -> _BandLayout:
        """Coverage of the band ``[r0, r1)`` of the first axis on a compressed grid.

        The band is cut at every tile edge inside it; within one compressed
        cell every tile either covers all mask cells or none, so counts and
        scalar contributions are computed per compressed cell and expanded
        with ``np.take`` (no per-cell work proportional to tile area).
        """
        first = self.starts[:, 0]
        lo = int(np.searchsorted(first, r0 - self.max_extent0 + 1, side="left"))
        hi = int(np.searchsorted(first, r1, side="left"))
        keep = np.flatnonzero(self.ends[lo:hi, 0] > r0) + lo
        starts = self.starts[keep].copy()
        ends = self.ends[keep].copy()
        starts[:, 0] = np.clip(starts[:, 0], r0, r1) - r0
        ends[:, 0] = np.clip(ends[:, 0], r0, r1) - r0
        band_extents = (r1 - r0, *extents[1:])

        ndim = len(extents)
        breaks = []
        cstart = np.empty_like(starts)
        cend = np.empty_like(ends)
        for axis in range(ndim):
            b = np.unique(
                np.concatenate(([0, band_extents[axis]], starts[:, axis], ends[:, axis]))
            )
            breaks.append(b)
            cstart[:, axis] = np.searchsorted(b, starts[:, axis])
            cend[:, axis] = np.searchsorted(b, ends[:, axis])
        shape = tuple(len(b) - 1 for b in breaks)

        # Enumerate the compressed cells covered by each tile.
        widths = cend - cstart
        n_cells = np.prod(widths, axis=1)
        tile_of = np.repeat(np.arange(len(keep)), n_cells)
        local = np.arange(tile_of.size, dtype=np.int64) - np.repeat(
            np.cumsum(n_cells) - n_cells, n_cells
        )
        flat = np.zeros(tile_of.size, dtype=np.int64)
        radix = 1
        for axis in reversed(range(ndim)):
            w = widths[tile_of, axis]
            flat += (cstart[tile_of, axis] + local % w) * radix
            local //= w
            radix *= shape[axis]
        count = np.bincount(flat, minlength=math.prod(shape)).reshape(shape)
        return _BandLayout(
            breaks=breaks,
            shape=shape,
            count=count,
            flat=flat,
            scalar_rows=self.scalar_index[keep][tile_of],
        )


@dataclass
class _BandLayout:
    breaks: list[np.ndarray]  # per axis, compressed cell edges (band-relative)
    shape: tuple[int, ...]  # compressed grid shape
    count: np.ndarray  # tiles per compressed cell
    flat: np.ndarray  # compressed cell of each (tile, cell) pair
    scalar_rows: np.ndarray  # scalar value row of each pair, -1 for dense tiles

    @property
    def max_count(self) -> int:
        return int(self.count.max()) if self.count.size else 0

    def expand_row(self, grid: np.ndarray, lead: int) -> np.ndarray:
        """Expand axes ``lead..`` of a compressed row to mask cells (all but the first axis)."""
        for axis, b in enumerate(self.breaks[1:]):
            cell_of = np.repeat(np.arange(len(b) - 1), np.diff(b))
            grid = np.take(grid, cell_of, axis=lead + axis)
        return grid

    def scalar_grid(
        self, records: _Records, ufunc: np.ufunc, identity: Any, dtype: np.dtype
    ) -> np.ndarray | None:
        """Combined scalar contributions per compressed cell, ``(C, *shape)``, or None."""
        is_scalar = self.scalar_rows >= 0
        if not is_scalar.any():
            return None
        n_channels = records.scalar_values.shape[1]
        grid = np.full((math.prod(self.shape), n_channels), identity, dtype=dtype)
        ufunc.at(
            grid,
            self.flat[is_scalar],
            records.scalar_values[self.scalar_rows[is_scalar]],
        )
        return np.moveaxis(grid.reshape(*self.shape, n_channels), -1, 0)
