"""Tiles for training: a map-style dataset over the pixel Parquet or straight from the slide.

:class:`TileDataset` is a plain sequence (``len``, indexing) returning
``(pixels, metadata)``: ``pixels`` uint8 (tile_extent_y, tile_extent_x, 3) RGB
in (y, x, channel) order, ``metadata`` the tile's row (slide_id, tile_id,
level, x, y in pixels of ``level``, fraction columns, ...). It needs no torch,
and it is safe in ``torch.utils.data.DataLoader`` worker processes: files are
opened lazily, once per process (the handle remembers the pid that opened it),
so no file handle or decoder crosses a ``fork``.

Two sources:

* ``TileDataset.from_pixels(path)``: a pixel Parquet written by the pixels
  step; a tile read decodes only its row group (cached, one at a time).
* ``TileDataset.from_slide(retained, slide_path)``: the retained table and the
  slide, no stored pixels; a tile read is one call of the fast stored-tile
  path (:meth:`mask_first.slides.Slide.read_regions_into`).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TileDataset"]


class TileDataset:
    """Map-style dataset of tiles: ``dataset[i] -> (uint8 (H, W, 3), dict)``.

    Build it with :meth:`from_pixels` or :meth:`from_slide`. ``transform``
    (optional) is applied to the pixel array, e.g. a torchvision transform
    chain; the metadata dict is returned unchanged.
    """

    def __init__(self, source: "_Source", transform: Callable[[np.ndarray], Any] | None = None):
        self._source = source
        self.transform = transform

    # -- construction -----------------------------------------------------
    @classmethod
    def from_pixels(cls, path: str | os.PathLike, *, transform: Callable | None = None) -> "TileDataset":
        """Tiles of a pixel Parquet (``results/pixels/{slide}.parquet``)."""
        return cls(_ParquetSource(Path(path)), transform)

    @classmethod
    def from_slide(
        cls,
        retained: str | os.PathLike,
        slide_path: str | os.PathLike,
        *,
        all_tiles: bool = False,
        mpp_override: float | None = None,
        resample_to: int | tuple[int, int] | None = None,
        transform: Callable | None = None,
    ) -> "TileDataset":
        """Tiles read from the slide by a retained table (``results/retained/{slide}.parquet``).

        ``all_tiles``: every tile of the table, not only ``retained`` ones.
        ``resample_to``: delivered (width, height) in pixels (one int: square),
        each tile's region area-averaged to it, as the pixel step does for
        ``tiling.tile_extent`` at ``tiling.mpp`` (a 512-px region at 0.25 µm/px
        becomes 256 px at 0.5 µm/px); the metadata then gives the delivered
        ``tile_extent_x/y`` and ``mpp_x/y`` and the region read as
        ``read_extent_x/y``. None: the level's native pixels.
        """
        from mask_first.columns import xy_pair

        size = None if resample_to is None else xy_pair(resample_to, int)
        return cls(_SlideSource(Path(retained), Path(slide_path), all_tiles, mpp_override, size), transform)

    # -- sequence protocol ------------------------------------------------
    def __len__(self) -> int:
        return self._source.n

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"tile index {index} out of range for {n} tiles")
        pixels, meta = self._source.get(i)
        if self.transform is not None:
            pixels = self.transform(pixels)
        return pixels, meta

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self):
        # a pickled dataset (spawn-started workers) never carries open handles
        return {"_source": self._source, "transform": self.transform}


class _Source:
    n: int

    def get(self, i: int) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in self._handles:
            state[k] = None
        state["_pid"] = None
        return state

    _handles: Sequence[str] = ()

    def _own_process(self) -> bool:
        """True when this process opened the handles; resets them after a fork."""
        if getattr(self, "_pid", None) != os.getpid():
            for k in self._handles:
                setattr(self, k, None)
            self._pid = os.getpid()
            return False
        return True


class _ParquetSource(_Source):
    _handles = ("_file", "_group", "_group_table")

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        meta = pq.read_metadata(path)  # footer only; closed again
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        self.n = int(self._starts[-1])
        self._file = self._group = self._group_table = None
        self._pid = None

    def get(self, i: int) -> tuple[np.ndarray, dict]:
        import pyarrow.parquet as pq

        if not self._own_process() or self._file is None:
            self._file = pq.ParquetFile(self.path)
        g = bisect.bisect_right(self._starts, i) - 1
        if self._group != g:
            self._group_table = self._file.read_row_group(g)
            self._group = g
        row = self._group_table.slice(i - self._starts[g], 1).to_pylist()[0]
        data = row.pop("pixels")
        h, w = int(row["tile_extent_y"]), int(row["tile_extent_x"])
        if row.get("encoding") == "jpeg":
            import imagecodecs

            pixels = np.asarray(imagecodecs.jpeg8_decode(data))
        else:
            pixels = np.frombuffer(data, np.uint8).reshape(h, w, 3).copy()
        return pixels, row


class _SlideSource(_Source):
    _handles = ("_slide",)

    def __init__(self, retained: Path, slide_path: Path, all_tiles: bool, mpp_override: float | None,
                 resample_to: tuple[int, int] | None = None):
        from mask_first.io import read_table

        table = read_table(retained)
        if not all_tiles and "retained" in table.column_names:
            table = table.filter(table.column("retained"))
        self._rows = table.to_pylist()  # small: one row of numbers per tile
        self.n = len(self._rows)
        self.slide_path = slide_path
        self.mpp_override = mpp_override
        self.resample_to = resample_to
        self._slide = None
        self._pid = None

    def get(self, i: int) -> tuple[np.ndarray, dict]:
        from mask_first.slides import open_slide

        if not self._own_process() or self._slide is None:
            self._slide = open_slide(self.slide_path, self.mpp_override)
        row = dict(self._rows[i])
        w, h, level = int(row["tile_extent_x"]), int(row["tile_extent_y"]), int(row["level"])
        ow, oh = (w, h) if self.resample_to is None else self.resample_to
        out = np.empty((1, oh, ow, 3), np.uint8)
        self._slide.read_resampled_into(level, np.array([row["x"]]), np.array([row["y"]]), w, h, out)
        if self.resample_to is not None:
            lmx, lmy = self._slide.level_mpp(level)
            row.update(read_extent_x=w, read_extent_y=h, tile_extent_x=ow, tile_extent_y=oh,
                       mpp_x=lmx * w / ow, mpp_y=lmy * h / oh)
        return out[0], row

    def __del__(self):
        if getattr(self, "_slide", None) is not None and self._pid == os.getpid():
            self._slide.close()
