"""Tile grids, tile/mask overlap and retained-tile pixel reads."""

from mask_first.tiling import utils
from mask_first.tiling.grid import grid_shape, grid_tiles
from mask_first.tiling.overlap import overlap_fractions, tile_overlay_overlap
from mask_first.tiling.pixels import (
    iter_slide_tiles,
    load_tile_pixels,
    read_slide_tiles,
    tile_pixel_std,
    write_tile_pixels,
)

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
