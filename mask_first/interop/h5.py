"""Retained tiles as a CLAM / TRIDENT patch-coordinate HDF5 file.

Layout (what their readers index)
---------------------------------
* Dataset ``coords``: ``(N, 2)`` int64, each row the tile's top-left corner
  ``(x, y)`` in **level-0 pixels** (CLAM's ``Whole_Slide_Bag_FP`` passes a row
  straight to ``openslide.read_region``; TRIDENT's ``read_coords`` documents
  coordinates "at level 0").
* Attributes of ``coords``:

  - CLAM (``Whole_Slide_Bag_FP``, ``create_patches_fp``): ``patch_size``
    (read size in pixels of ``patch_level``), ``patch_level``,
    ``downsample`` (level downsample, (x, y)), ``level_dim`` and
    ``downsampled_level_dim`` ((width, height) of ``patch_level``), ``name``.
  - TRIDENT (``read_coords`` then ``WSIPatcher``): ``patch_size`` (pixels at
    the target magnification), ``level0_magnification``,
    ``target_magnification`` (their ratio is the level-0 pixels per patch
    pixel), ``patch_size_level0``, ``overlap`` (pixels at the target
    magnification), ``level0_width``, ``level0_height``, ``name``,
    ``savetodir``.

  Magnifications follow the usual 10 µm / mpp convention (0.25 µm/px = 40x),
  so ``target_magnification = level0_magnification / downsample`` makes
  TRIDENT read exactly the tile, at the level the tile grid used.
* mask-first extras: ``mpp`` (µm/px of ``patch_level``), ``level0_mpp``,
  ``tile_extent`` ((width, height) in pixels of ``patch_level``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_coords_h5", "level0_coords"]


def level0_coords(x: np.ndarray, y: np.ndarray, downsample: tuple[float, float]) -> np.ndarray:
    """Top-left corners in level-0 pixels, ``round(x * downsample_x), round(y * downsample_y)``.

    The same mapping the slide readers use for a region of a coarser level
    (OpenSlide's ``read_region`` takes level-0 coordinates).

    Returns
    -------
    ndarray of int64, shape (N, 2)
        (x, y) per row.
    """
    dx, dy = downsample
    xy = np.empty((len(x), 2), np.int64)
    xy[:, 0] = np.rint(np.asarray(x, np.float64) * dx)
    xy[:, 1] = np.rint(np.asarray(y, np.float64) * dy)
    return xy


def write_coords_h5(
    path: str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    level: int,
    tile_extent: tuple[int, int],
    stride: tuple[int, int] | None,
    slide,
    name: str,
) -> Path:
    """Write the CLAM/TRIDENT coordinate file of tiles at ``level`` (see the module docstring).

    Parameters
    ----------
    path : path-like
        Output ``.h5``, written atomically.
    x, y : array of int, shape (N,)
        Tile top-left corners in pixels of ``level``.
    level : int
        Pyramid level the tiles are on.
    tile_extent : (int, int)
        Tile (width, height) in pixels of ``level``; CLAM and TRIDENT take
        square patches, ``patch_size`` is the width.
    stride : (int, int) or None
        Grid step in pixels of ``level``; ``overlap = tile width - stride`` (0 if None).
    slide : mask_first.slides.Slide
        The open slide (level sizes, downsamples, mpp).
    name : str
        Slide id (CLAM's and TRIDENT's ``name``).
    """
    import h5py

    from mask_first.io import atomic_path

    lv = slide.levels[level]
    ds = (float(lv.downsample_x), float(lv.downsample_y))
    tw, th = int(tile_extent[0]), int(tile_extent[1])
    coords = level0_coords(x, y, ds)
    w0, h0 = slide.level_dimensions[0]
    level0_mag = 10.0 / float(np.sqrt(slide.mpp_x * slide.mpp_y))
    ds_mean = float(np.sqrt(ds[0] * ds[1]))
    overlap = max(0, tw - int(stride[0])) if stride is not None else 0
    attrs = {
        # CLAM
        "patch_size": tw,
        "patch_level": int(level),
        "downsample": np.array(ds, np.float64),
        "level_dim": np.array([lv.width, lv.height], np.int64),
        "downsampled_level_dim": np.array([lv.width, lv.height], np.int64),
        "name": name,
        # TRIDENT
        "patch_size_level0": int(round(tw * ds[0])),
        "level0_magnification": level0_mag,
        "target_magnification": level0_mag / ds_mean,
        "overlap": overlap,
        "level0_width": int(w0),
        "level0_height": int(h0),
        "savetodir": str(Path(path).parent),
        # mask-first
        "tile_extent": np.array([tw, th], np.int64),
        "mpp": np.array(slide.level_mpp(level), np.float64),
        "level0_mpp": np.array([slide.mpp_x, slide.mpp_y], np.float64),
    }
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            # resizable like CLAM's and TRIDENT's own files (both append to ``coords``)
            dset = f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(max(1, min(len(coords), 4096)), 2))
            for k, v in attrs.items():
                dset.attrs[k] = v
    return Path(path)
