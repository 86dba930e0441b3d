"""The seed API's import path (``from ratiopath.tiling import ...``), kept for its readers.

The code lives in :mod:`mask_first.tiles`; these are the same objects.
"""

from mask_first.tiles import (
    grid_shape,
    grid_tiles,
    iter_slide_tiles,
    load_tile_pixels,
    overlap_fractions,
    read_slide_tiles,
    tile_overlay_overlap,
    tile_pixel_std,
    write_tile_pixels,
)
from mask_first.tiling import utils

__all__ = [
    "utils",
    "grid_shape",
    "grid_tiles",
    "overlap_fractions",
    "tile_overlay_overlap",
    "iter_slide_tiles",
    "load_tile_pixels",
    "read_slide_tiles",
    "tile_pixel_std",
    "write_tile_pixels",
]
